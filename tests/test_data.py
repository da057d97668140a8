"""The course data: deterministic, split correctly, and validated with clear messages."""

import json

import pytest
from datasets import Dataset, DatasetDict

from lora_lab.runtime import profiles
from lora_lab.training import data


def test_generation_is_deterministic():
    a = data.course_splits(data.TASK_FAMILIES, seed=3)
    b = data.course_splits(data.TASK_FAMILIES, seed=3)
    c = data.course_splits(data.TASK_FAMILIES, seed=4)
    assert a["train"].to_list() == b["train"].to_list()
    assert a["eval"].to_list() == b["eval"].to_list()
    assert a["train"].to_list() != c["train"].to_list()


def test_split_sizes_and_held_out_entities():
    world = data.make_world(300)
    assert len(world.train_entities) == 200 and len(world.eval_entities) == 100
    splits = data.course_splits(("recall",), world=world, train_per_entity=4, n_eval=100)
    assert len(splits["train"]) == 800 and len(splits["eval"]) == 100
    train_names = {e.name for e in world.train_entities}
    assert not train_names & set(splits["eval"]["entity"])  # recall is tested on unseen entities


def test_every_family_has_checkable_answers():
    splits = data.course_splits(data.TASK_FAMILIES, n_eval=30)
    assert set(splits["eval"]["task"]) == set(data.TASK_FAMILIES)
    for row in splits["train"].select(range(50)):
        assert row["messages"][-1] == {"role": "assistant", "content": row["answer"]}
        if row["task"] in ("recall", "extract"):
            assert any(row["answer"] in values for values in data.ATTRIBUTES.values())
        if row["task"] == "extract":
            assert row["answer"] in row["messages"][0]["content"]


def test_fact_sentences_cover_every_fact():
    world = data.make_world(30)
    sentences = data.fact_sentences(world)
    assert len(sentences) == 30 * len(data.ATTRIBUTES)
    e = world.entities[0]
    assert f"the color of {e.name} is {e.color} ." in sentences


def test_prompt_completion_form_puts_the_answer_in_the_completion():
    ds = data.to_prompt_completion(data.course_splits(("recall",), n_eval=5)["eval"])
    row = ds[0]
    assert row["prompt"][-1]["role"] == "user"
    assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "is empty"),
        ([{"text": "hello"}], "no 'messages' column"),
        ([{"messages": []}], "non-empty list"),
        ([{"messages": [{"role": "user"}]}], "'role' and 'content'"),
        ([{"messages": [{"role": "robot", "content": "hi"}]}], "unknown role 'robot'"),
        ([{"messages": [{"role": "user", "content": 42}]}], "content must be a string"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant message"),
    ],
)
def test_validation_errors_say_what_is_wrong(rows, message):
    with pytest.raises(ValueError, match=message):
        data.validate(rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown task family 'poetry'"):
        data.course_splits(("poetry",))
    with pytest.raises(ValueError, match="at least 3"):
        data.make_world(2)


def test_hub_layouts_are_normalised_like_the_real_datasets():
    """GSM8K's column layout (question/answer with '#### N'), read by the same code as on Colab."""
    gsm = DatasetDict(
        train=Dataset.from_list([{"question": f"What is {i} + {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i:,}"} for i in range(40)]),
        test=Dataset.from_list([{"question": "What is 1000 + 234?", "answer": "1000+234=1234\n#### 1,234"}]),
    )
    profile = profiles.PROFILES["t4"].replace(n_eval=5)
    splits = data.load_profile_dataset(profile, loader=lambda *a: gsm)
    assert len(splits["eval"]) == 1 and splits["eval"][0]["answer"] == "1234"
    assert splits["train"][3]["messages"][0] == {"role": "user", "content": "What is 3 + 3?"}
    alpaca = Dataset.from_list([{"instruction": "Say hi", "input": "", "output": "hi"}] * 10)
    out = data.load_hub_dataset("local/alpaca", n_eval=2, loader=lambda *a: alpaca)
    assert len(out["train"]) == 8 and out["eval"][0]["answer"] == "hi"
    with pytest.raises(ValueError, match="columns are"):
        data.normalise(Dataset.from_list([{"foo": 1}]), "x/y")


# ---------------------------------------------------------------------------------------------
# Bad input: refused with a message that says what to change (issue: nothing trained on garbage)

USER = {"role": "user", "content": "what is the color of mipoka ?"}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"messages": [USER, {"role": "assistant", "content": ""}]}], "answer is empty"),
        ([{"messages": [USER, {"role": "assistant", "content": " \n\t"}]}], "answer is empty"),
        ([{"messages": [USER, {"role": "assistant", "content": "red"}], "answer": "  "}], "'answer' reference is empty"),
        ([{"messages": [USER, {"role": "assistant", "content": "red"}, USER]}], "ends on a user turn"),
        ([{"messages": [{"role": "system", "content": "be brief"}, USER]}], "no assistant message"),
        (["hello"], "Example 0 of the dataset is a str"),
        ([42], "Example 0 of the dataset is a int"),
        ([{"messages": [USER, {"role": "assistant", "content": "red"}]}, "oops"], "Example 1 of the dataset is a str"),
        ({"messages": [[USER]]}, "a dict of columns"),
        (DatasetDict(train=Dataset.from_list([{"messages": [USER]}])), "pass one split"),
        ("data.jsonl", "must be a list of examples"),
        (7, "must be a list of examples"),
    ],
)
def test_bad_rows_are_refused_with_what_to_change(rows, message):
    with pytest.raises(ValueError, match=message):
        data.validate(rows)


def test_a_single_data_file_is_read_in_every_format(tmp_path):
    rows = [{"messages": [USER, {"role": "assistant", "content": f"answer {i}"}]} for i in range(12)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps(rows))
    lines_in_json = tmp_path / "lines.json"
    lines_in_json.write_text(jsonl.read_text())
    parquet = tmp_path / "d.parquet"
    Dataset.from_list(rows).to_parquet(parquet)
    for path in (jsonl, as_json, lines_in_json, parquet):
        assert data.read_data_file(path).to_list() == rows, path.name
    splits = data.load_hub_dataset(str(jsonl), n_eval=2)
    assert (len(splits["train"]), len(splits["eval"])) == (10, 2)
    assert splits["eval"][0]["answer"].startswith("answer")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.jsonl", "", r"empty\.jsonl is empty"),
        ("blank.jsonl", "\n  \n", r"blank\.jsonl is empty"),
        ("bad.jsonl", '{"messages": []}\n{"messages": [oops]}\n', r"bad\.jsonl, line 2: not valid JSON"),
        ("bad.json", '[\n {"messages": []},\n {"messages": [}\n]', r"bad\.json, line 3: not valid JSON"),
        ("list.jsonl", '["user", "hi"]\n', r"list\.jsonl, example 1: expected a JSON object"),
        ("notes.txt", "hello", "unsupported data file"),
        ("broken.parquet", "not parquet", r"broken\.parquet: not a readable Parquet file"),
    ],
)
def test_empty_and_malformed_files_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        data.load_hub_dataset(str(path), n_eval=1)


def test_a_dataset_smaller_than_the_eval_split_says_which_size_to_pass(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [USER, {"role": "assistant", "content": "red"}]})
                              for _ in range(30)))
    with pytest.raises(ValueError, match=r"has 30 examples, and the eval split needs 100.*--eval-size 6"):
        data.load_hub_dataset(str(path), n_eval=100)
    with pytest.raises(ValueError, match="has 30 examples, and the eval split needs 30"):
        data.load_hub_dataset(str(path), n_eval=30)
    assert len(data.load_hub_dataset(str(path), n_eval=6)["eval"]) == 6
