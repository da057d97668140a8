"""How much each lesson asks a learner to read: its core prose, and the sections marked optional.

A section is optional when the first line of text under its heading starts with `OPTIONAL_MARK`
("*Optional"), which the learner sees in italics: a deep dive that no later section needs read (its
code still runs, top to bottom). It lasts until the next heading of the same or a higher level, so an
optional `##` section takes its `###` subsections with it, and an optional `###` subsection ends at
the next `###` or `##`. Everything else in the markdown cells is core: the prose, the exercises'
statements, the headings. Words are whitespace-separated tokens of the markdown, as a word counter
counts them.

`make sync` writes the table of `reading_table` into docs/instructor-guide.md between `TABLE_START` and
`TABLE_END`, and `make check-sync` fails when it is stale; a test keeps the core of the class day's lessons (`CLASS_DAY`,
00-06) under `CORE_WORD_LIMIT`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: The first words of the line that marks a section optional (in italics under its heading).
OPTIONAL_MARK = "*Optional"
#: The class day's lessons (00-06, the agendas of docs/instructor-guide.md); later lessons are read after class.
CLASS_DAY = ("00", "01", "02", "03", "04", "05", "06")
#: The class day's core prose, its seven lessons together, stays under this many words (a third shorter than
#: the 14,000 words the lessons had when a learner's read took 9-11 hours against a 3-hour agenda).
CORE_WORD_LIMIT = 9000
#: Silent reading rate for non-fiction, words per minute: Brysbaert (2019), "How many words do we read per
#: minute? A review and meta-analysis of reading rate", Journal of Memory and Language 109, 104047. Text
#: with formulas and code reads slower, so minutes from it are a lower bound.
WORDS_PER_MINUTE = 238
TABLE_START = "<!-- reading table: written by make sync (lora_lab.classroom.reading) -->"
TABLE_END = "<!-- end of reading table -->"
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


@dataclass
class Reading:
    """One lesson's markdown, in words: core and optional, and the optional sections by heading."""

    notebook: str
    core_words: int = 0
    optional_words: int = 0
    optional_sections: list[str] = field(default_factory=list)

    @property
    def core_minutes(self) -> float:
        return self.core_words / WORDS_PER_MINUTE


def words(text: str) -> int:
    return len(text.split())


def reading(markdown_cells: list[str], notebook: str = "") -> Reading:
    """Core and optional words of a lesson's markdown cells, in order."""
    result = Reading(notebook)
    optional_level = None  # the level of the optional heading we are under, if any
    pending = None  # (level, title) of a heading whose first line of text is not read yet
    for cell in markdown_cells:
        for line in cell.splitlines():
            heading = HEADING.match(line)
            if heading:
                level = len(heading.group(1))
                if optional_level is not None and level <= optional_level:
                    optional_level = None
                pending = (level, heading.group(2).strip())
            elif line.strip() and pending is not None:
                if optional_level is None and line.strip().startswith(OPTIONAL_MARK):
                    optional_level = pending[0]
                    result.optional_sections.append(pending[1])
                    result.optional_words += words(pending[1]) + 1  # the heading counted as optional too
                    result.core_words -= words(pending[1]) + 1
                pending = None
            if optional_level is None:
                result.core_words += words(line)
            else:
                result.optional_words += words(line)
    return result


def lesson_reading(path: Path) -> Reading:
    """`reading` of one notebook (.ipynb)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return reading([c.source for c in nb.cells if c.cell_type == "markdown"], path.stem)


def reading_table(paths: list[Path]) -> str:
    """Markdown table: per lesson, core and optional words and the core's reading minutes; then the total."""
    rows = [lesson_reading(p) for p in paths]
    lines = ["| notebook | core words | reading the core | optional words | optional sections |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.notebook}` | {r.core_words:,} | {r.core_minutes:.0f} min | {r.optional_words:,} | "
                     + ("; ".join(f"*{s}*" for s in r.optional_sections) or "-") + " |")
    core = sum(r.core_words for r in rows)
    lines.append(f"| all | {core:,} | {core / WORDS_PER_MINUTE:.0f} min | {sum(r.optional_words for r in rows):,} | |")
    return "\n".join(lines)


def with_table(guide: str, table: str) -> str:
    """The guide with its reading table replaced by `table` (between the markers, which must be there)."""
    if TABLE_START not in guide or TABLE_END not in guide:
        raise ValueError(f"the instructor guide lacks the reading-table markers {TABLE_START!r} and {TABLE_END!r}")
    head, rest = guide.split(TABLE_START, 1)
    return head + TABLE_START + "\n" + table + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]
