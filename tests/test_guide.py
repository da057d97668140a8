"""The instructor guide cannot drift from the notebooks: flags it names exist, agendas add up, links resolve."""

import re
from pathlib import Path

import pytest

from lora_lab.training import train

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "instructor-guide.md").read_text()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
SOURCE = "\n".join(p.read_text() for p in sorted((ROOT / "src" / "lora_lab").rglob("*.py")))


def section(title: str) -> str:
    return GUIDE.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_upper_case_flag_the_troubleshooting_names_is_set_in_notebook_03_or_read_by_the_package():
    text = section("## Troubleshooting")
    notebook_03 = (ROOT / "notebooks" / "03_qlora_sft_t4.py").read_text()
    names = set(re.findall(r"`%?(?:env )?([A-Z][A-Z0-9_]{2,})(?: = [^`]*|=[^`]*)?`", text))
    assert {"USE_DRIVE", "RESUME"} <= names
    for name in names:
        assigned = re.search(rf"^{name} = ", notebook_03, re.M)
        assert assigned or f'"{name}"' in SOURCE or name in SOURCE, f"{name}: not set in notebook 03 nor read by lora_lab"
    for match in re.finditer(r"`([A-Z][A-Z0-9_]+) = (True|False)`", text):  # a flag the guide tells you to set
        assert re.search(rf"^{match.group(1)} = ", notebook_03, re.M), match.group(0)


def test_the_guide_names_only_command_line_flags_that_exist():
    flags = {a for action in train.build_parser()._actions for a in action.option_strings}
    named = set(re.findall(r"lora_lab\.train[^`|]*", GUIDE))
    used = {f for cmd in named for f in re.findall(r"(--[a-z][a-z0-9-]*)", cmd)}
    assert {"--resume", "--drive"} <= used
    assert used <= flags, used - flags


def test_the_guide_no_longer_gives_advice_for_calls_that_do_not_exist():
    for gone in ("resume=True", "drive_checkpoint_dir", "build/learners"):
        assert gone not in GUIDE


@pytest.mark.parametrize("title, minutes", [("### 3 hours", 180), ("### 90 minutes", 90)])
def test_each_agenda_adds_up_and_says_which_exercises_to_assign(title, minutes):
    text = GUIDE.split(f"\n{title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+:\d\d \|", ln)]
    slots = [int(ln.strip("|").split("|")[-1]) for ln in rows]
    assert sum(slots) == minutes
    clock = 0
    for row, slot in zip(rows, slots, strict=True):  # each row starts when the one before it ends
        h, m = row.split("|")[1].strip().split(":")
        assert int(h) * 60 + int(m) == clock, row
        teach, run, exercises = (int(c) for c in row.strip("|").split("|")[3:6])
        assert max(teach, run) + exercises <= slot, row
        clock += slot
    assert "Exercises to assign" in text and "answer-key.md" in text


def test_the_three_hour_agenda_covers_every_lesson():
    text = GUIDE.split("\n### 3 hours\n", 1)[1].split("\n### ", 1)[0]
    for path in NOTEBOOKS:
        assert f"`{path.stem}`" in text, path.stem


def test_the_guide_points_at_learner_copies_the_answer_key_and_independent_notebooks():
    assert "notebooks/learners/" in GUIDE and "(answer-key.md)" in GUIDE
    assert "runs on its own" in GUIDE
    assert "budgets, not measurements" in GUIDE
    for row in ("one GPU session", "GPU quota", "Hub download fails"):
        assert row in section("## Troubleshooting"), row


def test_rules_of_thumb_point_at_sections_that_exist():
    """Every section the guide's rules-of-thumb table names is a heading of the notebook it names."""
    table = GUIDE[GUIDE.index("## Rules of thumb"):GUIDE.index("## Prerequisites")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rule")]
    assert len(rows) >= 6  # rank, alpha, target modules, dropout, learning rate, epochs at least
    headings = {p.name[:2]: {line.lstrip("# ").strip() for line in p.read_text().splitlines()
                             if line.startswith(("# ## ", "# ### "))}
                for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    for row in rows:
        measured_in = row.split("|")[2]
        numbers = re.findall(r"\b(0\d)\b", measured_in)
        names = re.findall(r'"([^"]+)"', measured_in)
        assert numbers and names, row
        for name in names:
            assert any(name in headings[n] for n in numbers), f"no section {name!r} in notebooks {numbers}"


def test_the_lesson_notes_name_sections_that_exist_and_cover_every_lesson():
    notes = GUIDE.split("\n## Lesson notes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.split(r"^### `(\d\d_\w+)`$", notes, flags=re.M)[1:]
    lessons = dict(zip(blocks[::2], blocks[1::2], strict=True))
    sources = {p.stem: p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    assert set(lessons) == set(sources)
    for lesson, text in lessons.items():
        headings = set(re.findall(r"^# #{2,3} (.+)$", sources[lesson].read_text(), flags=re.M))
        named = re.findall(r"\*([^*]+)\*", text)
        assert named, lesson
        for name in named:
            assert name in headings, f"{lesson}: no section {name!r}"
        for field in ("- Teach", "- Say:", "- Misconceptions:", "- Behind:"):
            assert field in text, f"{lesson} has no {field!r}"


@pytest.mark.parametrize("title", ["### 3 hours", "### 90 minutes"])
def test_practice_minutes_hold_the_exercises_assigned_in_class_and_a_buffer_of_a_tenth(title):
    from lora_lab.classroom import exercises

    text = GUIDE.split(f"\n{title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+:\d\d \|", ln)]
    total = sum(int(ln.strip("|").split("|")[-1]) for ln in rows)
    buffer = sum(int(ln.strip("|").split("|")[-1]) for ln in rows if "buffer" in ln.split("|")[2])
    assert buffer >= 0.1 * total
    in_class = re.search(r"in class ([^;]+);", text).group(1)
    for exercise_id in re.findall(r"\d\d\.\d", in_class):
        row = next(ln for ln in rows if f"`{exercise_id[:2]}_" in ln and ln.split("|")[3].strip() != "-")
        practice = int(row.strip("|").split("|")[5])
        assert practice >= exercises.EXERCISES[exercise_id].minutes, (exercise_id, row)
