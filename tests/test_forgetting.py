"""What fine-tuning changed outside its task (notebook 03's "What did it forget?"): the base with its adapter off,
the tuned model with it on, on the course's prose and general facts."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.experiments import quant
from lora_lab.training import evaluate


def test_the_general_facts_are_fifty_sentence_completions():
    prompts, answers = quant.general_facts()
    assert len(prompts) == len(answers) == 50
    assert all(p and not p.endswith(" ") for p in prompts)
    assert all(a.startswith(" ") and a.strip() and "\t" not in a for a in answers)
    assert ("The capital of France is", " Paris") in zip(prompts, answers, strict=True)


@pytest.fixture(scope="module")
def adapted(tiny_model_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    plain = quant.text_loss(base, tokenizer, quant.heldout_text())["loss"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return model, tokenizer, plain


def test_a_fresh_adapter_forgets_nothing_and_a_changed_one_moves_the_prose_loss(adapted):
    model, tokenizer, plain = adapted
    fresh = evaluate.forgetting(model, tokenizer)  # B = 0: the tuned model is the base
    assert fresh["prose_before"]["loss"] == pytest.approx(plain, abs=1e-6)  # adapter off = the plain base
    assert fresh["prose_after"]["loss"] == pytest.approx(fresh["prose_before"]["loss"], abs=1e-6)
    assert fresh["kept"] == fresh["known_before"] and fresh["gained"] == 0 and fresh["facts"] == 50
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = evaluate.forgetting(model, tokenizer)
    assert moved["prose_before"]["loss"] == pytest.approx(plain, abs=1e-6)  # the base is untouched
    assert abs(moved["prose_after"]["loss"] - moved["prose_before"]["loss"]) > 0.01


def test_kept_and_gained_count_facts_by_their_margins(adapted, monkeypatch):
    model, tokenizer, _ = adapted
    margins = iter([torch.tensor([1.0, 2.0, -1.0, 0.5, -3.0]), torch.tensor([0.5, -0.1, 2.0, 0.2, -1.0])])
    monkeypatch.setattr(quant, "general_facts", lambda: (["a"] * 5, [" b"] * 5))
    monkeypatch.setattr(quant, "completion_loss", lambda *a, **k: {"loss": 1.0, "margins": next(margins)})
    out = evaluate.forgetting(model, tokenizer)
    # known before: facts 0, 1, 3; still right after: 0, 2, 3 -> kept 0 and 3, gained 2
    assert (out["facts"], out["known_before"], out["kept"], out["gained"]) == (5, 3, 2, 1)
