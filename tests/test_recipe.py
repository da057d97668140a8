"""Notebook 03's recipe in plain sight, and the sentences it prints from its own numbers.

- `train.recipe` builds the BitsAndBytesConfig, LoraConfig and SFTConfig a run uses; the model and
  the trainer get exactly those objects.
- `train.recipe_code` writes them as plain transformers/peft/trl code that rebuilds equal objects.
- `train.epoch_summary` / `epoch_verdict` and `lora_vs_qlora_verdict` say what the numbers say.
"""

import pytest
import torch

from lora_lab.runtime import profiles
from lora_lab.training import data, models, train


def small_profile(**changes):
    """The cpu profile with a short schedule: 2 epochs of 4 steps over 64 training examples."""
    base = dict(max_steps=8, logging_steps=2, save_steps=4, batch_size=8, grad_accum=2, n_eval=20)
    return profiles.get_profile("tiny").replace(**{**base, **changes})


def _lora_fields(config) -> dict:
    return {name: getattr(config, name) for name in train.LORA_REASONS}


ON_A_T4 = models.precision_for("cuda", (7, 5), "qlora")  # what a real T4 executes (fp16), not this CPU's fp32


@pytest.mark.parametrize("name, precision", [("t4", ON_A_T4), ("cpu", None)])
def test_recipe_code_rebuilds_equal_configs(name, precision):
    profile = profiles.PROFILES[name]
    rec = train.recipe(profile, precision=precision, output_dir="checkpoints", eval_each_epoch=True, fsdp=False)
    configs, run = train.recipe_code(rec, profile.model_id)
    assert "lora_lab" not in configs + run
    namespace: dict = {}
    exec(configs, namespace)  # what a learner copies, executed
    assert namespace["bnb_config"].to_dict() == rec.quantization.to_dict()
    assert _lora_fields(namespace["lora_config"]) == _lora_fields(rec.lora)
    assert namespace["sft_config"].to_dict() == rec.sft.to_dict()
    compile(run, "recipe_run", "exec")  # the training lines are valid Python


def test_t4_recipe_says_why_for_every_value_and_decides_fp16():
    rec = train.recipe(profiles.PROFILES["t4"], precision=ON_A_T4, fsdp=False)
    rows = rec.table()
    assert {config for config, *_ in rows} == {"BitsAndBytesConfig", "LoraConfig", "SFTConfig"}
    assert all(why for *_, why in rows)
    values = {(config, name): value for config, name, value, _ in rows}
    assert values["BitsAndBytesConfig", "bnb_4bit_compute_dtype"] == torch.float16
    assert values["BitsAndBytesConfig", "bnb_4bit_quant_type"] == "nf4"
    assert values["SFTConfig", "fp16"] is True and values["SFTConfig", "bf16"] is False
    assert values["SFTConfig", "optim"] == "paged_adamw_8bit"
    assert ("BitsAndBytesConfig", "bnb_4bit_quant_storage") not in values  # only under FSDP
    assert train.recipe(profiles.PROFILES["t4"], precision=ON_A_T4, method="lora").quantization is None
    # a T4 rehearsal on this CPU decides as on a T4 and computes in fp32
    rehearsed = train.recipe(profiles.PROFILES["t4"], models.simulated_gpu(), fsdp=False)
    assert rehearsed.quantization.bnb_4bit_compute_dtype == torch.float32 and rehearsed.sft.fp16 is False


def test_the_model_and_trainer_get_exactly_the_recipe(tmp_path):
    profile = small_profile()
    splits = data.course_splits(("recall",), n_eval=20)
    splits["train"] = splits["train"].select(range(64))  # 64 / (8 x 2) = 4 steps per epoch
    hw = models.hardware_for(profile)
    rec = train.recipe(profile, hw, output_dir=tmp_path, eval_each_epoch=True)
    model, tok = train.load_model_and_tokenizer(profile, "qlora", hw=hw)
    assert model.config.quantization_config.to_dict() == rec.quantization.to_dict()
    result = train.sft(model, tok, splits, profile, tmp_path, method="qlora", lora=rec.lora,
                       eval_dataset=splits["eval"], hw=hw, verbose=False)
    assert result.sft_config.to_dict() == rec.sft.to_dict()
    trained = result.model.peft_config["default"]
    assert (trained.r, trained.lora_alpha, trained.lora_dropout) == (profile.lora_r, profile.lora_alpha,
                                                                     profile.lora_dropout)
    # eval_strategy="epoch": one held-out loss per pass over the training set
    assert [epoch for epoch, _ in result.eval_losses] == [1.0, 2.0]
    assert all(loss > 0 for _, loss in result.eval_losses)


def test_epoch_verdict_follows_the_curve():
    overfits = train.epoch_summary([(0, 5.0), (1, 1.0), (2, 0.8), (3, 0.9), (4, 1.2)])
    assert overfits["best"] == (2.0, 0.8) and overfits["turned_up"] and overfits["first_rise"] == 3.0
    assert "rule of thumb holds" in train.epoch_verdict(overfits)
    keeps_falling = train.epoch_summary([(0, 5.0), (1, 1.0), (2, 0.5), (3, 0.4), (4, 0.45), (5, 0.3), (6, 0.25)])
    assert keeps_falling["best"] == (6.0, 0.25) and not keeps_falling["turned_up"]
    verdict = train.epoch_verdict(keeps_falling)
    assert "never turned up" in verdict and "rose once, at epoch 4" in verdict
    assert "too few" in train.epoch_verdict(train.epoch_summary([(0, 5.0), (0.6, 1.0)]))
    with pytest.raises(ValueError, match="eval set"):
        train.epoch_summary([])


def test_lora_vs_qlora_verdict_names_a_winner_only_beyond_the_seed_spread():
    lost = {"unquantized": {"loss": 0.1, "accuracy": 0.98}, "NF4": {"loss": 0.6, "accuracy": 0.80}}
    kept = {"unquantized": {"loss": 0.1, "accuracy": 0.98}, "NF4": {"loss": 0.1, "accuracy": 0.975}}
    gap = {"qlora": {"exact match": [0.60, 0.62, 0.58]}, "lora": {"exact match": [0.90, 0.88, 0.91]}}
    noisy = {"qlora": {"exact match": [0.60, 0.80, 0.70]}, "lora": {"exact match": [0.75, 0.85, 0.62]}}
    assert "knowledge the rounded base lost" in train.lora_vs_qlora_verdict(gap, lost)
    assert "does not explain the gap" in train.lora_vs_qlora_verdict(gap, kept)
    assert "LoRA beats QLoRA in held-out exact match" in train.lora_vs_qlora_verdict(gap, kept)
    assert "No measurable difference between QLoRA and LoRA" in train.lora_vs_qlora_verdict(noisy, lost)
    assert "80.0% of its pretraining facts (unquantized: 98.0%)" in train.lora_vs_qlora_verdict(noisy, lost)
    assert "nothing these seeds can measure, although rounding" in train.lora_vs_qlora_verdict(noisy, lost)
    # One seed per method, however far apart: the scores and no winner (the spread is not measured).
    one = {"qlora": {"exact match": 0.30}, "lora": {"exact match": 0.90}}
    said = train.lora_vs_qlora_verdict(one, lost)
    assert "No measurable difference" in said and "1 seed(s) per side" in said and "gap" not in said
    assert "One seed per method cannot measure" in said
    assert "Only one method" in train.lora_vs_qlora_verdict({"qlora": gap["qlora"]}, kept)
    text = {"unquantized": {"loss": 3.0, "perplexity": 20.1}, "NF4": {"loss": 3.2, "perplexity": 24.5}}
    assert "held-out prose goes from 3.000 to 3.200" in train.lora_vs_qlora_verdict(one, text, rehearsal=True)


def test_the_printed_recipe_gives_a_tokenizer_whose_pad_is_eos_its_own_pad_token():
    from transformers import AutoTokenizer

    from lora_lab.standins import tiny

    rec = train.recipe(profiles.PROFILES["cpu"], fsdp=False)
    _, run = train.recipe_code(rec, "any/model")
    tokenizer_lines = run[run.index("tokenizer = "):run.index("model = ")]
    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
    tokenizer.pad_token = tokenizer.eos_token  # the trap: padding would mask every eos

    class Loader:
        from_pretrained = staticmethod(lambda _: tokenizer)

    namespace = {"AutoTokenizer": Loader}
    exec(tokenizer_lines, namespace)
    assert namespace["new_pad"] and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert "model.resize_token_embeddings(len(tokenizer))" in run
