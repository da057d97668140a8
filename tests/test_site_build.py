"""The site builder's parts, without building the site (tests/test_site.py checks the built one)."""

import json

import nbformat
import pytest

from lora_lab.estimation import vram
from lora_lab.figures import widgets
from lora_lab.tooling import course, site


def test_the_badge_table_is_the_readmes_learner_and_solution_table():
    table = site.badge_table((site.ROOT / "README.md").read_text())
    lines = table.splitlines()
    lessons = len(course.course_notebooks())
    assert lines[0].startswith("| notebook | learner | with solutions |")
    assert all(line.startswith("|") for line in lines) and len(lines) == 2 + lessons
    assert table.count("[Open in Colab](https://colab.research.google.com/github/") == 2 * lessons
    assert "colab-badge.svg" not in table  # the site loads nothing from another host
    with pytest.raises(site.SiteError, match="no table"):
        site.badge_table("# a README without badges\n")


def test_a_lesson_page_gets_the_t4_note_and_a_sentence_for_each_widget(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01"), nbformat.v4.new_code_cell("w")])
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={
        site.WIDGET_MIME: {"model_id": "x"}, "text/plain": "VBox()"}),
        nbformat.v4.new_output("display_data", data={
            site.WIDGET_MIME: {"model_id": "y"}, "text/plain": "Map:   0%|          | 0/480 [00:00<?, ? examples/s]"}),
        nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "01.ipynb"
    nbformat.write(nb, path)
    page = site.lesson_page(path)
    assert page.cells[1].cell_type == "markdown" and site.t4_note() in page.cells[1].source
    outputs = page.cells[2].outputs  # the widget explained, the progress bar gone, the rest kept
    assert len(outputs) == 2 and outputs[0]["data"] == {"text/markdown": site.WIDGET_NOTE}
    assert outputs[1]["text"] == "kept\n" and "widgets" not in page.metadata
    assert "SmolLM2-135M-Instruct" in site.t4_note() and "1.5B" in site.t4_note()
    assert "tiny Llama" in site.t4_note(quick=True)
    nb.cells[1].source = "profile = profiles.quick_profile(profiles.get_profile())"
    nbformat.write(nb, path)
    assert site.t4_note(quick=True) in site.lesson_page(path).cells[1].source


def test_missing_executed_lessons_are_named_with_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(site, "EXECUTED", tmp_path)
    with pytest.raises(site.SiteError, match=r"lacks 00_preflight.ipynb.*make nbtest"):
        site.lesson_notebooks()


def test_the_calculators_answer_is_the_widgets_render_as_json():
    answer = widgets.calculator_answer(widgets.DEFAULT_STATE)
    model, kwargs = widgets.calculator_inputs(widgets.DEFAULT_STATE)
    est = vram.estimate(model, **kwargs)
    assert answer["total"] == est.total == sum(answer["breakdown"].values())
    assert answer["verdict"] == vram.verdict(model, "Colab T4", **kwargs)
    assert json.loads(json.dumps(answer)) == answer
    pasted = {**widgets.DEFAULT_STATE, "model": widgets.PASTED, "config": json.dumps(vram.preset_config(model))}
    assert widgets.calculator_answer(pasted)["total"] == est.total
    for bad in ("", "[1, 2]", "{\"model_type\": \"llama\"}"):
        assert set(widgets.calculator_answer({**pasted, "config": bad})) == {"error"}
    choices = widgets.calculator_choices()
    assert choices["model"][-2:] == [widgets.CUSTOM, widgets.PASTED]
    assert all(choices["defaults"][k] in choices[k] for k in ("model", "method", "targets", "optimizer", "gpu"))
