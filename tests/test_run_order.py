"""Cells run out of order: every later cell, run alone after the setup cells, names the cell to run first;
re-running notebook 03's training cell keeps the finished run."""

import json

import nbformat
from nbclient import NotebookClient

from lora_lab.classroom import run_order
from lora_lab.tooling import course

CELLS = [
    nbformat.v4.new_code_cell("import torch\nhw = 1", metadata={"tags": ["setup"]}),
    nbformat.v4.new_markdown_cell("## 1. Load\nSome text."),
    nbformat.v4.new_code_cell("%env A=1\nmodel, tok = load()  # the model\nfor step in range(3):\n    last = step"),
    nbformat.v4.new_markdown_cell("### 1.1 Train\n"),
    nbformat.v4.new_code_cell("if hw:\n    result = train(model)\ntry:\n    x = 1\nexcept ValueError as err:\n"
                              "    pass\ndef helper(a):\n    return a + model\nsquares = [i * i for i in range(3)]"),
]


def test_defined_and_used_names_follow_python_scopes():
    source = CELLS[4].source
    assert run_order.defined_names(source) == {"result", "x", "err", "helper", "squares"}
    assert run_order.used_names(source) == {"hw", "train", "model"}
    assert run_order.defined_names(CELLS[2].source) == {"model", "tok", "step", "last"}
    assert run_order.defined_names("import os.path as p, numpy\nfrom a import b as c") == {"p", "numpy", "c"}
    assert run_order.defined_names("if (n := 3):\n    pass") == {"n"}


def test_the_map_names_the_section_and_first_line_of_the_cell_that_makes_each_name():
    found = run_order.notebook_map(CELLS)
    assert "hw" not in found and "torch" not in found  # setup cells always run first
    assert found["model"] == {"section": "1. Load", "cell": "model, tok = load()"}
    assert found["result"] == {"section": "1.1 Train", "cell": "if hw:"}
    line = run_order.message("result", found["result"])
    assert line.count("\n") == 0 and '"1.1 Train"' in line and "`if hw:`" in line


def test_the_committed_map_is_current_and_a_stale_one_is_reported(tmp_path):
    sources = course.notebook_sources()
    assert not run_order.stale_map(sources), "run `make sync`"
    stale = tmp_path / "run_order.json"
    stale.write_text(json.dumps({"03_qlora_sft_t4": {}}))
    assert run_order.stale_map(sources, stale)
    assert run_order.stale_map(sources, tmp_path / "missing.json")
    assert all(sum(run_order.SETUP_TAG in c.metadata.get("tags", ()) for c in course.read_notebook(p).cells) >= 1
               for p in course.course_notebooks()), "every notebook marks its setup cells"


def test_the_handler_answers_a_known_name_in_one_line_and_keeps_pythons_message_for_a_typo(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell()
    assert run_order.explain_out_of_order("03_qlora_sft_t4", shell)
    assert shell.run_cell("print(tuned)").error_in_exec is not None  # the cell still stops a Run All
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [run_order.message("tuned", json.loads(run_order.MAP_FILE.read_text())
                                                          ["03_qlora_sft_t4"]["tuned"])]
    assert '"6. Training"' in err
    shell.run_cell("print(tunedd)")
    captured = capsys.readouterr()
    assert "NameError" in captured.out + captured.err and "comes from an earlier cell" not in captured.err
    assert "Handler failed" not in captured.err and shell.custom_exceptions == (NameError,)  # still answering
    assert not run_order.explain_out_of_order("03_qlora_sft_t4", shell=None)  # outside IPython: nothing to do


def test_every_later_cell_run_alone_after_setup_names_the_cell_to_run_first(monkeypatch):
    monkeypatch.setenv("LORA_LAB_PROFILE", "cpu")
    notebooks = course.course_notebooks()
    cells = course.run_out_of_order(notebooks)
    assert {c.notebook for c in cells} == {p.name for p in notebooks}, "every notebook has cells that need an earlier one"
    for cell in cells:
        where = f"{cell.notebook} cell {cell.index} `{cell.first_line}` alone"
        assert not cell.errors, f"{where}: Python's {cell.errors}\n{cell.output}"
        assert "comes from an earlier cell" in cell.output, f"{where} ran without naming {cell.needs}"


def test_rerunning_03s_training_cell_keeps_the_finished_run(monkeypatch):
    monkeypatch.setenv("LORA_LAB_PROFILE", "t4")
    monkeypatch.setenv("LORA_LAB_REHEARSAL", "1")
    nb = course.read_notebook(course.NOTEBOOKS / "03_qlora_sft_t4.ipynb")
    training = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "result = train.sft(" in c.source)
    nb.cells = nb.cells[: training + 1]
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(course.NOTEBOOKS)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)
        again = nbformat.v4.new_code_cell("trained_first = result\n" + nb.cells[training].source
                                          + "\nprint('same run:', result is trained_first)")
        client.execute_cell(again, training)
    printed = "".join(out.get("text", "") for out in again.outputs)
    assert "the finished run is kept" in printed and "same run: True" in printed, printed
