"""How much the lessons ask a learner to read (lora_lab.classroom.reading): optional sections and the core's limit."""

from pathlib import Path

import pytest

from lora_lab.classroom import reading
from lora_lab.tooling import course

MARK = f"{reading.OPTIONAL_MARK}: a deep dive.*"


def test_an_optional_section_runs_to_the_next_heading_of_its_level_or_higher():
    cells = [
        "# 00 · Title\n\nintro words here",  # 4 + 3 core
        "## Core one\n\nfour words of text",  # 3 + 4 core
        f"## Deep\n\n{MARK}\n\nskipped text\n\n### Inside deep\n\nmore skipped",  # all optional
        "## Core two\n\nback to core",  # 3 + 3 core
        f"### Sub\n\n{MARK}\n\nnot core",  # optional
        "### Sub two\n\ncore again",  # 3 + 2 core
        "text that *Optional: is not under a heading start*",  # core: not the first line after a heading
    ]
    r = reading.reading(cells, "nb")
    assert r.optional_sections == ["Deep", "Sub"]
    assert r.core_words == 7 + 7 + 6 + 5 + 9
    optional = sum(reading.words(line) for line in (cells[2] + "\n" + cells[4]).splitlines())
    assert r.optional_words == optional
    assert r.core_words + r.optional_words == sum(reading.words(c) for c in cells)


def test_a_heading_with_text_before_the_mark_stays_core():
    r = reading.reading([f"## Core\n\nfirst line\n{MARK}\n\n## Next\n\n{MARK}"])
    assert r.optional_sections == ["Next"]


def test_the_core_of_the_class_days_seven_lessons_stays_under_the_limit():
    rows = [reading.lesson_reading(p) for p in course.course_notebooks() if p.name[:2] in reading.CLASS_DAY]
    assert len(rows) == 7
    core = sum(r.core_words for r in rows)
    assert core < reading.CORE_WORD_LIMIT, (
        f"the lessons' core is {core:,} words, over {reading.CORE_WORD_LIMIT:,}: shorten it, or mark a deep dive "
        f"optional with a line starting {reading.OPTIONAL_MARK!r} under its heading")
    assert all(r.optional_sections for r in rows)  # every lesson keeps its deep dives apart
    later = [reading.lesson_reading(p) for p in course.course_notebooks() if p.name[:2] not in reading.CLASS_DAY]
    assert all(r.core_minutes < 15 for r in later)  # an after-class lesson reads in one sitting


def test_the_guides_reading_table_is_the_lessons():
    guide = course.GUIDE.read_text()
    assert guide == course.guide_with_reading_table()
    assert f"| all | {sum(reading.lesson_reading(p).core_words for p in course.course_notebooks()):,} |" in guide
    with pytest.raises(ValueError, match="markers"):
        reading.with_table("# a guide without the markers\n", "| table |")


def test_check_learners_reports_a_stale_reading_table(tmp_path, monkeypatch):
    stale = tmp_path / "guide.md"
    text = course.GUIDE.read_text()
    stale.write_text(text.replace("| all | ", "| all | 1", 1))
    monkeypatch.setattr(course, "GUIDE", stale)
    assert any("reading table is out of date" in p for p in course.check_learners())
    assert Path(course.write_guide_reading_table(guide=stale)).read_text() == text
