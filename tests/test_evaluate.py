"""Padding for generation (left) and for logit comparisons (right), with the tokenizer left as it was."""

from transformers import AutoTokenizer

from lora_lab import evaluate


def test_tokenize_padded_pads_the_requested_side_and_restores(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    texts = ["where does mipoka live ?", "red"]
    left = evaluate.tokenize_padded(tok, texts, "left")
    right = evaluate.tokenize_padded(tok, texts, "right")
    assert left["input_ids"][1, 0] == tok.pad_token_id and left["input_ids"][1, -1] != tok.pad_token_id
    assert right["input_ids"][1, -1] == tok.pad_token_id and right["input_ids"][1, 0] != tok.pad_token_id
    assert left["attention_mask"].sum() == right["attention_mask"].sum()
    assert tok.padding_side == "right"
