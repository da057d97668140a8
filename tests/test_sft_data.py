"""lora_lab.training.sft_data: the one collator pads on the right, with -100 under padded labels."""

import torch
from transformers import AutoTokenizer

from lora_lab.training import data, sft_data


def test_pad_batch_pads_right_masks_padding_and_keeps_the_tokenizer_setting(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.padding_side = "left"  # as generation leaves it
    batch = sft_data.pad_batch(tok, [[5, 6, 7], [8]], [[-100, 6, 7], [8]])
    pad = tok.pad_token_id
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, pad, pad]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    assert all(t.dtype == torch.long for t in batch.values())
    assert tok.padding_side == "left"


def test_padded_batch_gives_each_example_its_unpadded_loss(tiny_model_path):
    """Padding must not change what an example's tokens see: the loss of a padded row equals its own."""
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    splits = data.course_splits(("recall",), n_eval=4)
    ds, _ = sft_data.prepare_sft_data(tok, splits["eval"], 64, verbose=False)
    long_row = max(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    short_row = min(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    assert len(ds[long_row]["input_ids"]) > len(ds[short_row]["input_ids"])  # there is padding to test
    with torch.no_grad():
        alone = model(**sft_data.pad_batch(tok, [ds[short_row]["input_ids"]], [ds[short_row]["labels"]])).loss
        both = sft_data.pad_batch(tok, [ds[short_row]["input_ids"], ds[long_row]["input_ids"]],
                                  [ds[short_row]["labels"], ds[long_row]["labels"]])
        first = model(**{k: v[:1] for k, v in both.items()}).loss
    torch.testing.assert_close(first, alone, rtol=1e-5, atol=1e-5)
