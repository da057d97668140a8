"""Fast tests of pure logic with tiny fixtures: the bugs `benchmarks/mutants.py` plants are caught here in seconds.

Each block names the plausible bug it guards against. Nothing here trains a model or reads a cache.
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from lora_lab.classroom import exercises, quiz
from lora_lab.estimation import vram
from lora_lab.lessons import activation_memory, code_books, nf4, scoring, sft, step_memory
from lora_lab.standins import sql_task
from lora_lab.training import checkpoints

# ---- checkpoints: which one a resume uses -------------------------------------------------------


def make_checkpoint(folder, *, rng=True, scheduler=True, state='{"global_step": 1}'):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(state)
    save_file({"lora_A": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))
    torch.save({}, folder / "optimizer.pt")
    if scheduler:
        torch.save({}, folder / "scheduler.pt")
    if rng:
        torch.save({}, folder / "rng_state.pth")
    return folder


def test_the_newest_checkpoint_is_chosen_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 2):
        make_checkpoint(tmp_path / f"checkpoint-{step}")
    newest, skipped = checkpoints.newest_complete(tmp_path)
    assert newest.endswith("checkpoint-10") and skipped == []


def test_a_checkpoint_without_its_rng_state_or_scheduler_is_skipped_with_the_reason(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-5")
    make_checkpoint(tmp_path / "checkpoint-7", scheduler=False)
    make_checkpoint(tmp_path / "checkpoint-8", rng=False)
    newest, skipped = checkpoints.newest_complete(tmp_path)
    assert newest.endswith("checkpoint-5")
    assert skipped == [("checkpoint-8", "no rng_state.pth"), ("checkpoint-7", "no scheduler.pt")]


def test_corrupt_checkpoint_metadata_is_skipped_with_the_file_named(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-1")
    make_checkpoint(tmp_path / "checkpoint-2", state="{}")
    bad_info = make_checkpoint(tmp_path / "checkpoint-3")
    (bad_info / checkpoints.RUN_INFO).write_text("[]")
    newest, skipped = checkpoints.newest_complete(tmp_path)
    assert newest.endswith("checkpoint-1")
    assert skipped == [("checkpoint-3", "lora_lab_run.json is corrupt"),
                       ("checkpoint-2", "trainer_state.json has no global_step (corrupt)")]


def test_folders_that_only_start_like_a_checkpoint_are_not_checkpoints(tmp_path):
    assert checkpoints.step_of(tmp_path / "checkpoint-12") == 12
    assert checkpoints.step_of(tmp_path / "checkpoint-12-old") is None
    assert checkpoints.step_of(tmp_path / "checkpoint-") is None


def test_resuming_with_another_rank_or_method_is_refused(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-1")
    (folder / checkpoints.RUN_INFO).write_text(json.dumps({"method": "qlora", "rank": 16}))
    checkpoints.check_compatible(folder, "qlora", 16)
    with pytest.raises(ValueError, match="rank 16.*--rank 16"):
        checkpoints.check_compatible(folder, "qlora", 8)
    with pytest.raises(ValueError, match="method qlora"):
        checkpoints.check_compatible(folder, "lora", 16)


# ---- label masking and padding --------------------------------------------------------------------


def test_answer_labels_mask_exactly_the_shared_prompt():
    assert sft.answer_labels([1, 2, 3], [1, 2, 3, 7, 8, 9]) == [-100, -100, -100, 7, 8, 9]
    assert sft.answer_labels([1, 2, 5], [1, 2, 3, 4]) == [-100, -100, 3, 4]  # parts where the renderings differ


def test_only_the_last_assistant_turn_of_a_conversation_carries_loss(tiny_model_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from lora_lab.training import sft_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    conversation = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "alpha"},
                    {"role": "user", "content": "second question"}, {"role": "assistant", "content": "omega"}]
    data, report = sft_data.prepare_sft_data(tokenizer, Dataset.from_list([{"messages": conversation}]), 512,
                                             verbose=False)
    labelled = [t for t, label in zip(data[0]["input_ids"], data[0]["labels"], strict=True) if label != -100]
    text = tokenizer.decode(labelled)
    assert "omega" in text and "alpha" not in text and text.endswith(tokenizer.eos_token)
    assert report.loss_tokens_min == len(labelled)


def test_padding_is_on_the_right_masked_out_and_never_a_label():
    batch = sft.pad_right([[5, 6, 7], [8]], [[-100, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert sft.answer_tokens(batch) == 2  # position 0 never carries loss: nothing predicts it


def test_batches_visit_every_example_once_per_pass_in_a_seeded_order():
    ids = [[i] for i in range(8)]
    seen = [b["input_ids"][:, 0].tolist() for b in sft.shuffled_batches(ids, ids, batch_size=4, steps=4, pad_id=0,
                                                                          seed=1)]
    assert sorted(seen[0] + seen[1]) == list(range(8)) and sorted(seen[2] + seen[3]) == list(range(8))
    assert seen[0] + seen[1] != list(range(8))  # shuffled
    again = [b["input_ids"][:, 0].tolist() for b in sft.shuffled_batches(ids, ids, batch_size=4, steps=4, pad_id=0,
                                                                           seed=1)]
    assert again == seen


# ---- scoring ---------------------------------------------------------------------------------------


def test_the_last_stated_answer_counts():
    assert scoring.final_answer("The answer is 3? No, wait. The answer is 5.") == "5"
    assert scoring.final_answer(r"First \boxed{2}, corrected: \boxed{7}") == "7"
    assert scoring.final_answer("#### 1,234.50") == "1234.5"


def test_normalised_numbers_and_answers():
    assert scoring.normalise_number("$12.00") == "12"
    assert scoring.normalise_number("-0.250") == "-0.25"
    assert scoring.normalise_answer("  The Answer is 1,000. ") == "the answer is 1000"


def test_sql_is_compared_on_tokens_with_literals_kept_as_written():
    assert scoring.normalise_sql('select  Name FROM t WHERE city = "Paris";') == "select name from t where city = 'Paris'"
    assert scoring.normalise_sql("SELECT a FROM t WHERE b = 'X'") != scoring.normalise_sql("SELECT a FROM t WHERE b = 'x'")
    assert scoring.extract_sql("```sql\nSELECT a FROM t;\n``` The query selects a.") == "SELECT a FROM t"
    assert scoring.extract_sql("Here it is: SELECT a FROM t; -- then prose") == "SELECT a FROM t"


def test_execution_match_respects_order_by():
    context = "CREATE TABLE t (name TEXT, age INTEGER)"
    ordered = "SELECT name FROM t ORDER BY age"
    assert sql_task.execution_match(ordered, ordered, context)["match"]
    assert not sql_task.execution_match("SELECT name FROM t ORDER BY age DESC", ordered, context)["match"]
    assert sql_task.execution_match("SELECT name FROM t", "SELECT name FROM t ORDER BY name", context)["match"] is False
    assert sql_task.execution_match("SELECT name FROM t ORDER BY age DESC", "SELECT name FROM t", context)["match"]


# ---- NF4 ---------------------------------------------------------------------------------------------


def test_nf4_has_seven_negative_levels_zero_and_eight_positive():
    levels = code_books.nf4_code()
    assert (levels < 0).sum() == 7 and (levels == 0).sum() == 1 and (levels > 0).sum() == 8
    assert levels.min() == -1 and levels.max() == 1


def test_a_value_on_a_midpoint_goes_to_the_lower_level():
    code = torch.tensor([-1.0, 0.0, 1.0] + [1.0] * 13)
    assert code_books.nearest_code(torch.tensor([0.5, -0.5, 0.51]), code).tolist() == [1, 0, 2]


def test_two_codes_per_byte_first_in_the_high_nibble():
    packed = nf4.pack_nibbles(torch.tensor([1, 2, 15]))
    assert packed.tolist() == [0x12, 0xF0]
    assert nf4.unpack_nibbles(packed, 3).tolist() == [1, 2, 15]


def test_storage_bits_by_part():
    plain = nf4.storage_bits(64 * 256)
    assert (plain.codes, plain.absmax, plain.scales2) == (8 * 64 * 128, 32 * 256, 0)
    dq = nf4.storage_bits(64 * 256, double_quant=True)
    assert (dq.absmax, dq.scales2, dq.constants) == (8 * 256, 32, 16 * 32 + 32 + 256 * 32)
    assert nf4.bits_per_parameter() == 4.5


def test_double_quantization_centres_the_absmax_values_on_their_mean():
    absmax = torch.linspace(1.0, 2.0, 512)
    dq = nf4.double_quantize(absmax)
    assert dq.offset.item() == pytest.approx(1.5)
    assert (dq.dequantize() - absmax).abs().max() < 0.01


# ---- the estimator's terms, each by itself -------------------------------------------------------------

SMALL = {"model_type": "llama", "vocab_size": 32, "hidden_size": 64, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "max_position_embeddings": 512, "tie_word_embeddings": True}


def shape(**settings):
    return vram.step_shape(vram.arch_from_dict(SMALL, "small"), **settings)


def test_lora_without_checkpointing_saves_nothing_for_the_first_norm():
    st = shape(method="lora", batch_size=1, seq_len=8, gradient_checkpointing=False, precision="fp32")
    tokens, hidden = 8, 64
    one_norm = 4 * tokens * hidden + 4 * tokens  # fp32 input and 1/rms per token
    terms = activation_memory.activation_terms(st)
    assert terms["layers.norms"] == 2 * 2 * one_norm - one_norm  # 2 layers x 2 norms, less the first block's


def test_rope_cos_and_sin_are_counted_once():
    st = shape(method="qlora", batch_size=1, seq_len=100)
    assert activation_memory.activation_terms(st)["rope"] == 2 * 100 * 16 * 4  # fp32 residual in QLoRA


def test_qlora_transient_holds_one_dequantized_weight():
    st = shape(method="qlora", batch_size=1, seq_len=8, gradient_checkpointing=False)
    tokens, hidden, mlp = 8, 64, 256
    recompute_free_backward = 2 * 4 * tokens * mlp  # the MLP's gradients, fp32 in QLoRA
    dequantized = 2 * hidden * mlp  # the largest linear layer in bf16
    assert activation_memory.transient_bytes(st) == recompute_free_backward + dequantized


def test_lora_matrices_are_stored_in_fp32_on_a_16_bit_base():
    st = shape(method="lora", rank=4, precision="bf16")
    lora = step_memory.lora_total_params(st)
    assert step_memory.weight_bytes(st) == 2 * st.arch.total_params + 4 * lora


def test_8_bit_adam_keeps_small_tensors_in_32_bits():
    small, large = 100, 10_000
    expected = 2 * 4 * small + (2 * large + 2 * 4 * math.ceil(large / 256)) + 2 * 256 * 4
    assert step_memory.optimizer_bytes([small, large], "adamw_8bit", 4) == expected


# ---- exercises and quizzes -----------------------------------------------------------------------------


def test_an_exercise_answer_needs_exactly_the_keys_asked_for():
    assert exercises._compare({"a": 1}, {"a": 1}, 0.0, "") == []
    assert exercises._compare({"a": 1, "b": 2}, {"a": 1}, 0.0, "")  # an extra key is not right
    assert exercises._compare({}, {"a": 1}, 0.0, "")


def test_dtype_answers_match_whole_names_not_parts():
    assert exercises._compare("fp16", "float16", 0.0, "") == []
    assert exercises._compare("torch.bfloat16", "bf16", 0.0, "") == []
    assert exercises._compare("bfloat16", "float16", 0.0, "")  # bfloat16 is not float16


def test_an_exact_exercise_number_must_be_exact():
    assert exercises._compare(100, 100, 0.0, "") == []
    assert exercises._compare(103, 100, 0.0, "")
    assert exercises._compare(104, 100, 0.05, "") == []


def test_the_quiz_answer_is_shown_only_after_the_third_wrong_try():
    question = quiz.MultipleChoice("q?", ("a", "b"), 0, "because", ("", "not b"))
    assert not question.check(1, attempt=2).revealed
    assert question.check(1, attempt=3).revealed
    number = quiz.Numeric("n?", 10.0, 0.0, "units", "it is {answer}", "count again")
    assert not number.check(11, attempt=1).correct and not number.check(11, attempt=2).revealed
    assert number.check(11, attempt=3).revealed


# ---- command lines and APIs refuse bad numbers ---------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["fsdp-check", "--methods", "dora", "--out", "x.json"], "choose from lora, qlora"),
    (["fsdp-check", "--steps", "0", "--out", "x.json"], "must be a positive whole number"),
    (["fsdp-check", "--out", "no/such/folder/x.json"], "does not exist"),
    (["accelerate-config", "--num-processes", "-3"], "must be a positive whole number"),
])
def test_the_scale_command_refuses_bad_arguments_before_running(tmp_path, monkeypatch, capsys, argv, message):
    from lora_lab.experiments import scale

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        scale.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="num_processes must be a positive"):
        scale.accelerate_fsdp_config(-3)


def test_a_quiz_option_must_be_a_whole_option_number_and_an_answer_true_is_not_one():
    question = quiz.MultipleChoice("q?", ("a", "b", "c"), 1, "because", ("not a", "", "not c"))
    assert question.check(1.7).counted is False and question.check(True).counted is False
    assert question.check(1.0).correct and question.check("b").correct
    assert exercises._compare(True, 1, 0.0, "") == ["the answer should be a number, not True"]


# ---- data files: checked where they enter ----------------------------------------------------------------


@pytest.mark.parametrize("rows, message", [
    ([{"messages": []}], "Example 0 of"), ([{"messages": None}], "Example 0 of"), ([{"messages": "hi"}], "Example 0 of"),
    ([{"instruction": "do", "output": "ok"}, {"instruction": None, "output": "x"}], "Example 1 of .*'instruction'"),
    ([{"instruction": "do", "input": 3, "output": "ok"}], "Example 0 of .*'input' must be text"),
    ([{"question": "q", "answer": None}], "Example 0 of .*'answer' must be non-empty text"),
])
def test_rows_are_checked_in_file_order_before_they_are_reshaped(tmp_path, rows, message):
    from lora_lab.training import data

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=message):
        data.load_hub_dataset(str(path), n_eval=1)


def test_text_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    from lora_lab.training import data

    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "ok", "answer": "1"}\n{"question": "café", "answer": "2"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 2: not UTF-8 text \(byte 0xe9\)"):
        data.read_data_file(path)


def test_a_mistyped_local_path_is_not_looked_up_on_the_hub(tmp_path):
    import time

    from lora_lab.training import data

    start = time.perf_counter()
    for name in (str(tmp_path / "typo.jsonl"), "./data/train", "data/sql/train.json"):
        with pytest.raises(ValueError, match="No data file or folder"):
            data.load_hub_dataset(name, n_eval=1)
    assert time.perf_counter() - start < 1
    assert not data.looks_like_a_path("b-mc2/sql-create-context")


def test_the_calculators_advice_considers_the_rank_and_stays_within_the_context():
    step = dict(method="lora", target_modules=("q_proj",), batch_size=1, seq_len=512)
    big, small = (vram.estimate("Qwen/Qwen2.5-0.5B", rank=r, **step).total for r in (896, 64))
    room = (big + small) // 2  # a GPU on which rank 896 does not fit and rank 64 does
    advice = vram.suggestions("Qwen/Qwen2.5-0.5B", room, rank=896, **step)
    ranks = [int(a.split()[1]) for a in advice if a.startswith("rank ")]
    assert ranks and 64 <= ranks[0] < 896 and vram.estimate("Qwen/Qwen2.5-0.5B", rank=ranks[0], **step).fits(room)
    context = vram.load_arch("Qwen/Qwen2.5-0.5B").max_positions
    long = vram.suggestions("Qwen/Qwen2.5-0.5B", "Colab T4", method="full", batch_size=64, seq_len=4 * context)
    proposed = [int(a.split()[1]) for a in long if a.startswith("seq ")]
    assert all(s <= context for s in proposed), long


def test_number_feedback_is_calibrated_to_the_answer():
    from lora_lab.classroom import feedback

    assert feedback.tolerance_words(0.002) == "within 0.2%" and feedback.tolerance_words(0) == "exactly"
    assert feedback.number_verdict(3, 2, 0) == "Too high."  # alpha / r = 2: one off is wrong, not close
    assert feedback.number_verdict(4097, 4096, 0).startswith("Close")  # a large count one off is close
    assert "percentage" in feedback.number_verdict(25, 0.25, 0.01)  # percent for a fraction
    assert "fraction" in feedback.number_verdict(0.4, 40, 0.01)
    assert "1,024" in feedback.number_verdict(14.74 * 1024, 14.74, 0.01)  # MiB for GiB
    assert feedback.number_verdict(0.9677, 0.9677083, 0.001) is None
    assert feedback.number_verdict(0.99, 0.9677083, 0.001) == "Too high."  # 2% off with a 0.1% tolerance
