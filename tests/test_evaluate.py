"""Padding for generation (left) and for logit comparisons (right), with the tokenizer left as it was."""

from transformers import AutoTokenizer

from lora_lab.training import evaluate


def test_tokenize_padded_pads_the_requested_side_and_restores(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    texts = ["where does mipoka live ?", "red"]
    left = evaluate.tokenize_padded(tok, texts, "left")
    right = evaluate.tokenize_padded(tok, texts, "right")
    assert left["input_ids"][1, 0] == tok.pad_token_id and left["input_ids"][1, -1] != tok.pad_token_id
    assert right["input_ids"][1, -1] == tok.pad_token_id and right["input_ids"][1, 0] != tok.pad_token_id
    assert left["attention_mask"].sum() == right["attention_mask"].sum()
    assert tok.padding_side == "right"


def test_scoring_generation_is_plain_greedy_whatever_the_model_ships(tiny_model_path):
    """A model whose generation_config.json sets a strong repetition penalty and an n-gram ban answers the
    same as one without: scoring must not punish repeating the prompt's names, as SQL must."""
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    penalised = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    penalised.generation_config.repetition_penalty = 3.0
    penalised.generation_config.no_repeat_ngram_size = 2
    prompts = ["the color of mipoka is red . what is the color of mipoka ?", "where does mipoka live ?"]
    expected = evaluate.generate(plain, tok, prompts, max_new_tokens=12)
    assert evaluate.generate(penalised, tok, prompts, max_new_tokens=12) == expected
    # Not vacuous: without the explicit override, generate() fills the fields from the model's config.
    enc = evaluate.tokenize_padded(tok, [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                                 add_generation_prompt=True) for p in prompts], "left")
    raw = penalised.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    decoded = [t.strip() for t in tok.batch_decode(raw[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert decoded != expected
