"""`lora_lab.experiments.peft_benchmark`: PEFT's MetaMathQA results read, compared and tabled.

The fixture folder holds four hand-made files in PEFT's result format (run_info / train_info /
meta_info, validation and test entries in ``metrics``) with round numbers, so every derived value
below can be checked by hand: LoRA 50 % / 20 GiB / 1000 s, DoRA 52 % / 22 GiB / 1250 s,
VeRA 35 % / 19 GiB / 1100 s, full fine-tuning 47 % / 36 GiB / 2000 s.
"""

import ast
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from lora_lab.experiments import peft_benchmark as pb

FIXTURES = Path(__file__).parent / "fixtures" / "peft_metamathqa"
LORA_FILE = FIXTURES / "lora--llama-3.2-3B-rank32.json"
GIB = 2**30


def test_reads_each_field_of_a_lora_result():
    row = pb.read_result(LORA_FILE)
    assert row["experiment"] == "lora/llama-3.2-3B-rank32"
    assert row["variant"] == "LoRA" and row["peft_type"] == "LORA" and row["rank"] == 32
    assert row["test_accuracy"] == 0.50  # the test entry, not the validation accuracy (0.48) before it
    assert row["peak_memory_bytes"] == 20 * GIB and row["peak_memory_gib"] == 20.0
    assert row["train_time_s"] == 1000.0 and row["total_time_s"] == 1200.0
    assert row["trainable_params"] == 9175040
    assert row["forgetting"] == 0.05 and row["lr"] == 1e-4
    assert row["status"] == "success" and row["accelerator"] == "NVIDIA L40S"
    assert row["source"] == "lora--llama-3.2-3B-rank32.json"


def test_full_finetuning_has_no_peft_config():
    row = pb.read_result(FIXTURES / "full-finetuning--llama-3.2-3B-lr_0.00001.json")
    assert (row["variant"], row["peft_type"], row["rank"]) == ("full", "full-finetuning", None)
    assert row["trainable_params"] == 3212749824 and row["peak_memory_gib"] == 36.0


def test_folder_loads_in_the_course_order():
    rows = pb.load_results(FIXTURES)
    assert [r["variant"] for r in rows] == ["LoRA", "DoRA", "VeRA", "full"]


@pytest.mark.parametrize(("peft_config", "optimizer", "label"), [
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": True}, "AdamW", "LoRA"),
    ({"peft_type": "LORA", "r": 64, "init_lora_weights": True, "use_rslora": True}, "AdamW", "rsLoRA"),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": True, "use_dora": True}, "AdamW", "DoRA"),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": "pissa_niter_4"}, "AdamW", "PiSSA"),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": "olora"}, "AdamW", "OLoRA"),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": True}, "lora+", "LoRA+"),
    ({"peft_type": "VERA", "r": 256}, "AdamW", "VeRA"),
    (None, "AdamW", "full"),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": True}, "lora-fa", None),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": "mica"}, "AdamW", None),
    ({"peft_type": "LORA", "r": 32, "init_lora_weights": True, "use_dora": True, "use_rslora": True}, "AdamW", None),
    ({"peft_type": "IA3"}, "AdamW", None),
])
def test_course_variant_labels(peft_config, optimizer, label):
    assert pb.course_variant(peft_config, {"optimizer_type": optimizer}) == label


def test_relative_numbers_against_the_reference():
    rel = {r["variant"]: r for r in pb.relative_to(pb.load_results(FIXTURES))}
    assert rel["LoRA"]["accuracy_diff_points"] == 0.0
    assert (rel["LoRA"]["memory_ratio"], rel["LoRA"]["time_ratio"]) == (1.0, 1.0)
    assert rel["DoRA"]["accuracy_diff_points"] == pytest.approx(2.0)
    assert rel["DoRA"]["memory_ratio"] == pytest.approx(1.1) and rel["DoRA"]["time_ratio"] == pytest.approx(1.25)
    assert rel["VeRA"]["accuracy_diff_points"] == pytest.approx(-15.0)
    assert rel["VeRA"]["memory_ratio"] == pytest.approx(0.95) and rel["VeRA"]["time_ratio"] == pytest.approx(1.1)
    assert rel["full"]["memory_ratio"] == pytest.approx(1.8) and rel["full"]["time_ratio"] == pytest.approx(2.0)
    assert all(r["reference"] == pb.REFERENCE for r in rel.values())


def test_relative_to_another_reference_and_a_missing_one():
    rows = pb.load_results(FIXTURES)
    rel = {r["variant"]: r for r in pb.relative_to(rows, reference="vera/llama-3.2-3B-default")}
    assert rel["LoRA"]["accuracy_diff_points"] == pytest.approx(15.0)
    assert rel["LoRA"]["memory_ratio"] == pytest.approx(20 / 19)
    with pytest.raises(ValueError, match="lora/llama-3.2-3B-rank8"):
        pb.relative_to(rows, reference="lora/llama-3.2-3B-rank8")


def _broken(tmp_path, change):
    data = json.loads(LORA_FILE.read_text())
    change(data)
    path = tmp_path / "broken--run.json"
    path.write_text(json.dumps(data))
    return path


def _cancel(d):
    d["train_info"]["status"] = "canceled"
    d["run_info"]["error_msg"] = "CUDA out of memory.\nTried to allocate 2.00 GiB"


@pytest.mark.parametrize(("change", "message"), [
    (_cancel, r"status is 'canceled', not 'success' \(CUDA out of memory\. Tried to allocate"),
    (lambda d: d["train_info"]["metrics"].pop(), "no entry with 'test accuracy'"),
    (lambda d: d["train_info"]["metrics"][-1].update({"test accuracy": 50.0}), "outside 0..1"),
    (lambda d: d["train_info"].update({"accelerator_memory_max": "20GB"}), "accelerator_memory_max' is '20GB'"),
    (lambda d: d["train_info"].update({"num_trainable_params": True}), "num_trainable_params' is True"),
    (lambda d: d["train_info"].update({"train_time": 0.0}), "train_time' is 0.0, not positive"),
    (lambda d: d.pop("train_info"), "no 'train_info'"),
    (lambda d: d["run_info"].pop("experiment_name"), "no 'run_info.experiment_name'"),
])
def test_a_bad_result_is_refused_in_one_line_naming_the_file(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as info:
        pb.read_result(_broken(tmp_path, change))
    assert str(info.value).startswith("broken--run.json: ") and "\n" not in str(info.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ValueError, match="no such result file"):
        pb.read_result(tmp_path / "absent.json")
    bad = tmp_path / "cut--short.json"
    bad.write_text(LORA_FILE.read_text()[:500])
    with pytest.raises(ValueError, match=r"^cut--short.json: not valid JSON"):
        pb.read_result(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PEFT result files"):
        pb.load_results(tmp_path / "empty")


def test_ordering_agreement_finds_the_disagreeing_pair():
    peft = pb.peft_scores(pb.load_results(FIXTURES))
    assert peft == {"LoRA": 0.50, "DoRA": 0.52, "VeRA": 0.35, "full": 0.47}
    course = {"LoRA": 0.61, "DoRA": 0.58, "VeRA": 0.40, "PiSSA": 0.60}
    result = pb.ordering_agreement(course, peft, higher_is_better=True)
    assert [(p["a"], p["b"]) for p in result["disagrees"]] == [("LoRA", "DoRA")]
    pair = result["disagrees"][0]
    assert pair["course"] == (0.61, 0.58) and pair["peft"] == (0.50, 0.52)
    assert (pair["course_better"], pair["peft_better"]) == ("LoRA", "DoRA")
    assert [(p["a"], p["b"]) for p in result["agrees"]] == [("LoRA", "VeRA"), ("DoRA", "VeRA")]
    assert result["ties"] == []
    assert result["only_course"] == ["PiSSA"] and result["only_peft"] == ["full"]
    assert len(result["pairs"]) == 3


def test_ordering_agreement_with_a_loss_against_an_accuracy_and_ties():
    loss = {"LoRA": 1.20, "DoRA": 1.10, "VeRA": 1.20}  # lower is better: DoRA best, LoRA and VeRA tied
    acc = {"LoRA": 0.50, "DoRA": 0.52, "VeRA": 0.35}
    result = pb.ordering_agreement(loss, acc, higher_is_better=False, peft_higher_is_better=True)
    verdicts = {(p["a"], p["b"]): p["verdict"] for p in result["pairs"]}
    assert verdicts == {("LoRA", "DoRA"): "agrees", ("DoRA", "VeRA"): "agrees", ("LoRA", "VeRA"): "tie"}
    # read as if both were higher-is-better, the loss would disagree with the accuracy on DoRA
    same_way = pb.ordering_agreement(loss, acc, higher_is_better=True)
    assert ("LoRA", "DoRA") in {(p["a"], p["b"]) for p in same_way["disagrees"]}
    # a tolerance makes a close pair a tie on that side
    tolerant = pb.ordering_agreement(acc, acc, higher_is_better=True, peft_tol=0.03)
    assert [(p["a"], p["b"]) for p in tolerant["ties"]] == [("LoRA", "DoRA")]


def test_ordering_agreement_refuses_non_numbers():
    with pytest.raises(ValueError, match="course score of 'DoRA'"):
        pb.ordering_agreement({"LoRA": 1.0, "DoRA": float("nan")}, {"LoRA": 1.0, "DoRA": 2.0}, True)


def test_peft_scores_pick_and_key():
    rows = pb.load_results(FIXTURES)
    assert pb.peft_scores(rows, key="peak_memory_bytes")["full"] == 36 * GIB
    with pytest.raises(ValueError, match="no LoRA run named 'lora/llama-3.2-3B-rank64'"):
        pb.peft_scores(rows, pick={"LoRA": "lora/llama-3.2-3B-rank64"})


def test_table_has_one_line_per_row_with_its_source():
    rows = pb.load_results(FIXTURES)
    lines = pb.table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and "acc %" in lines[0] and "peak GiB" in lines[0]
    for row, line in zip(rows, lines[2:], strict=True):
        assert line.endswith(row["source"]) and row["experiment"] in line
    assert re.search(r"\b50\.0\s+20\.00\s+1000\s+9,175,040\b", lines[2])
    rel_lines = pb.table(pb.relative_to(rows)).splitlines()
    assert "d acc pts" in rel_lines[0]
    assert re.search(r"\+2\.0\s+1\.10\s+1\.25\s", rel_lines[3])


def test_variant_order_is_notebook_07s():
    """The labels match `experiments.variants.VARIANTS`, read from its source (no torch import)."""
    source = Path(pb.__file__).with_name("variants.py").read_text()
    tree = ast.parse(source)
    names = next(
        tuple(call.args[0].value for call in node.value.elts)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VARIANTS" for t in node.targets)
    )
    assert pb.VARIANT_ORDER == names


# ---- the shipped files -------------------------------------------------------------------------------

SHIPPED = resources.files("lora_lab").joinpath(pb.SHIPPED)


def test_shipped_results_load_with_plausible_values():
    rows = pb.load_results()
    by_name = {r["experiment"]: r for r in rows}
    assert pb.REFERENCE in by_name
    assert {"LoRA", "DoRA", "VeRA"} <= {r["variant"] for r in rows}
    assert rows[0]["experiment"] == pb.REFERENCE  # rank 32 before rank 64 within LoRA
    for r in rows:
        assert 0.0 < r["test_accuracy"] < 1.0 and r["status"] == "success"
        assert 1 * GIB < r["peak_memory_bytes"] < 80 * GIB and 0 < r["train_time_s"] < 24 * 3600
        assert r["trainable_params"] > 0
    ref = by_name[pb.REFERENCE]
    assert ref["test_accuracy"] == pytest.approx(0.47839, abs=1e-5) and ref["trainable_params"] == 9175040
    full = [r for r in rows if r["variant"] == "full"][0]
    assert full["peak_memory_bytes"] > ref["peak_memory_bytes"] and full["trainable_params"] > 100 * ref["trainable_params"]


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_every_shipped_file_is_named_in_source_md_with_its_blob_hash():
    source_md = SHIPPED.joinpath("SOURCE.md").read_text(encoding="utf-8")
    assert re.search(r"Commit read: `[0-9a-f]{40}`", source_md) and "Apache" in source_md
    files = sorted(f.name for f in SHIPPED.iterdir() if f.name.endswith(".json"))
    assert len(files) >= 3
    for name in files:
        line = next((ln for ln in source_md.splitlines() if ln.startswith(f"| `{name}`")), None)
        assert line is not None, f"{name} is not in SOURCE.md's table"
        assert f"method_comparison/MetaMathQA/results/{name}" in line
        assert _git_blob(SHIPPED.joinpath(name).read_bytes()) in line, f"{name} differs from PEFT's blob"
