"""lora_lab.experiments.quant against bitsandbytes itself: code books, codes, absmax, dequantized values, storage.

bitsandbytes 0.50 runs quantize_4bit / dequantize_4bit on CPU tensors, so every comparison here is
with the library a QLoRA run really uses. Nothing touches the network; the model test uses the
locally built tiny model.
"""

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from lora_lab.experiments import quant
from lora_lab.lessons import code_books, nf4

MILLION = 1024 * 1024  # 2**20 values: "at least a million", and a whole number of 64- and 4096-blocks


@pytest.fixture(autouse=True, scope="module")
def _eager_bitsandbytes():
    """Run bitsandbytes' torch.compile'd fallbacks eagerly: same numbers, no compile per shape."""
    with torch._dynamo.config.patch(disable=True):
        yield


def _weights(shape, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _bnb(x, fmt, blocksize=64, double_quant=False):
    return bnb_functional.quantize_4bit(x, blocksize=blocksize, quant_type=fmt, compress_statistics=double_quant)


# ---------------------------------------------------------------------------------------------
# Code books


def test_nf4_code_equals_bitsandbytes_exactly():
    code = code_books.nf4_code()
    assert torch.equal(code, bnb_functional.get_4bit_type("nf4", device="cpu"))
    # and also bitsandbytes' own construction from normal quantiles (not only its hard-coded table)
    assert torch.equal(code, bnb_functional.create_normal_map()[[*range(7), 7, *range(248, 256)]])


def test_nf4_code_shape_asymmetric_with_exact_zero():
    code = code_books.nf4_code()
    assert code.numel() == 16 and code.dtype == torch.float32
    assert torch.equal(code, code.sort().values)  # sorted: code i is the i-th smallest level
    assert (code < 0).sum() == 7 and (code == 0).sum() == 1 and (code > 0).sum() == 8
    assert code[0] == -1 and code[-1] == 1


def test_fp4_and_dynamic_map_equal_bitsandbytes():
    assert torch.equal(code_books.fp4_code(), bnb_functional.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(code_books.dynamic_map(), bnb_functional.create_dynamic_map())


def test_int4_is_symmetric_and_evenly_spaced():
    levels = code_books.int4_code().unique()
    assert torch.allclose(levels, torch.arange(-7, 8) / 7)
    assert torch.equal(code_books.code_book("int4").abs().max(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="nf4"):
        code_books.code_book("nf3")


def test_every_level_quantizes_to_its_own_code():
    for fmt in code_books.FORMATS:
        code = code_books.code_book(fmt)
        assert torch.equal(code[code_books.nearest_code(code, code)], code)


def test_pack_unpack_high_nibble_first():
    codes = torch.tensor([1, 2, 15, 0, 7])
    packed = nf4.pack_nibbles(codes)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert torch.equal(nf4.unpack_nibbles(packed, 5), codes)


# ---------------------------------------------------------------------------------------------
# Codes, absmax and dequantized values against quantize_4bit / dequantize_4bit


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 32, 4096])
def test_codes_absmax_and_dequantized_equal_bitsandbytes_on_a_million_values(fmt, blocksize):
    x = _weights((1024, 1024), seed=blocksize)
    assert x.numel() >= 1_000_000
    mine = nf4.quantize(x, fmt, blocksize)
    packed, state = _bnb(x, fmt, blocksize)
    assert torch.equal(mine.packed, packed.view(-1))  # codes, two per byte, first in the high nibble
    assert torch.equal(mine.absmax, state.absmax)  # fp32 absmax per block
    ours = nf4.dequantize(mine)
    assert ours.shape == x.shape and ours.dtype == x.dtype
    assert torch.equal(ours, bnb_functional.dequantize_4bit(packed, state))


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_partial_blocks_odd_lengths_and_bf16_match_bitsandbytes(fmt):
    x = _weights((999, 1001), seed=1)  # 999,999 values: a partial last block and an odd nibble
    mine = nf4.quantize(x, fmt)
    packed, state = _bnb(x, fmt)
    assert torch.equal(mine.packed, packed.view(-1))
    assert torch.equal(mine.absmax, state.absmax)
    assert torch.equal(nf4.dequantize(mine).view(-1), bnb_functional.dequantize_4bit(packed, state).view(-1))

    xb = _weights((256, 512), seed=2).to(torch.bfloat16)
    mine, (packed, state) = nf4.quantize(xb, fmt), _bnb(xb, fmt)
    assert torch.equal(mine.packed, packed.view(-1)) and torch.equal(mine.absmax, state.absmax)
    assert torch.equal(nf4.dequantize(mine), bnb_functional.dequantize_4bit(packed, state))


def test_all_zero_block_stays_zero():
    x = torch.zeros(128)
    x[64:] = torch.linspace(-1, 1, 64)
    assert torch.equal(nf4.round_trip(x)[:64], torch.zeros(64))


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_double_quantization_matches_bitsandbytes(fmt):
    """Offset, fp32 scales and 4-bit codes equal bitsandbytes'; the 8-bit codes are the true nearest.

    bitsandbytes' CPU 8-bit kernel finds the level with an approximate table search: for a few
    absmax values lying close to a midpoint it returns a neighbour of the nearest level. We take
    the nearest one, so the 8-bit codes agree on all but those values and ours are never farther;
    given bitsandbytes' 8-bit codes, our dequantization reproduces its output bit for bit.
    """
    x = _weights((1024, 1024), seed=3)
    mine = nf4.quantize(x, fmt, double_quant=True)
    packed, state = _bnb(x, fmt, double_quant=True)
    dq = mine.double_quant
    assert torch.equal(mine.packed, packed.view(-1))
    assert torch.equal(dq.offset, state.offset)
    assert torch.equal(dq.scales, state.state2.absmax)
    assert dq.blocksize == state.state2.blocksize == 256

    theirs = state.absmax
    agree = (dq.codes == theirs).float().mean().item()
    assert agree > 0.99, agree
    levels = code_books.dynamic_map()
    centred = x.reshape(-1, 64).abs().amax(dim=1) - dq.offset
    normed = (centred.view(-1, 256) / dq.scales.view(-1, 1)).view(-1)
    ours_err = (normed - levels[dq.codes.long()]).abs()
    their_err = (normed - levels[theirs.long()]).abs()
    assert bool((ours_err <= their_err).all())

    with_their_codes = nf4.Quantized4bit(
        packed=mine.packed, absmax=None, fmt=fmt, code=code_books.code_book(fmt), blocksize=64, shape=x.shape, dtype=x.dtype,
        double_quant=nf4.DoubleQuant(codes=theirs, scales=dq.scales, offset=dq.offset, levels=levels))
    assert torch.equal(nf4.dequantize(with_their_codes), bnb_functional.dequantize_4bit(packed, state))


# ---------------------------------------------------------------------------------------------
# Error: what the formats cost


def test_nf4_has_the_lowest_error_on_normal_and_heavy_tailed_data():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(2**16, generator=g)
    heavy = torch.distributions.StudentT(3.0).sample((2**16,))
    for x in (normal, heavy):
        err = {fmt: quant.relative_rmse(x, nf4.round_trip(x, fmt)) for fmt in code_books.FORMATS}
        assert err["nf4"] < err["fp4"] and err["nf4"] < err["int4"], err
    # bigger blocks share one absmax among more values: the error grows with block size
    errs = [quant.relative_rmse(heavy, nf4.round_trip(heavy, "nf4", bs)) for bs in (32, 256, 4096)]
    assert errs == sorted(errs)
    # double quantization changes the error by far less than it saves
    plain = quant.relative_rmse(normal, nf4.round_trip(normal, "nf4"))
    dq = quant.relative_rmse(normal, nf4.round_trip(normal, "nf4", double_quant=True))
    assert abs(dq - plain) < 0.01 * plain


def test_custom_code_book_level_usage_and_small_updates():
    x = _weights((256, 256), seed=8)
    assert torch.equal(nf4.round_trip(x, code_books.nf4_code()), nf4.round_trip(x, "nf4"))
    with pytest.raises(ValueError, match="16 levels"):
        nf4.quantize(x, torch.linspace(-1, 1, 8))
    # normal quantiles: on normal weights every NF4 level is used, none by more than a few times its share
    usage = quant.level_usage(x, "nf4")
    assert usage.numel() == 16 and abs(usage.sum().item() - 1) < 1e-9
    assert usage.min() > 0.01 and usage.max() < 0.2
    assert quant.level_usage(x, "int4").numel() == 15  # +0 and -0 merged
    # an update far below the level spacing is rounded away; one as large as the weights is kept
    tiny_step = quant.rounding_of_update(x, 1e-4 * _weights((256, 256), seed=9))
    big_step = quant.rounding_of_update(x, _weights((256, 256), seed=9))
    assert tiny_step["changed"] < 0.01 and tiny_step["error"] > 0.9
    assert big_step["changed"] > 0.5 and big_step["error"] < 0.3


# ---------------------------------------------------------------------------------------------
# Storage


def test_bits_per_parameter_are_4_5_and_4_127():
    assert nf4.bits_per_parameter(64) == 4.5
    assert nf4.bits_per_parameter(64, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(nf4.bits_per_parameter(64, double_quant=True), 3) == 4.127


def test_storage_is_exact_per_parameter_plus_constants():
    n = 64 * 256 * 10  # whole blocks and whole double-quantization groups
    plain = nf4.storage_bits(n)
    assert plain.total == 4.5 * n + 16 * 32  # + the 16-level fp32 code book
    assert plain.per_parameter == 4.5
    dq = nf4.storage_bits(n, double_quant=True)
    assert dq.total == (4 + 8 / 64 + 32 / (64 * 256)) * n + 16 * 32 + 32 + 256 * 32  # + offset and 8-bit map
    assert round(dq.per_parameter, 3) == 4.127


@pytest.mark.parametrize("double_quant", [False, True])
def test_storage_equals_what_bitsandbytes_keeps(double_quant):
    x = _weights((300, 301), seed=4)  # not a whole number of blocks
    _, state = _bnb(x, "nf4", double_quant=double_quant)
    packed, _ = _bnb(x, "nf4", double_quant=double_quant)
    tensors = [packed, state.absmax, state.code]
    if double_quant:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    bnb_bits = sum(8 * t.numel() * t.element_size() for t in tensors)
    assert nf4.quantize(x, "nf4", double_quant=double_quant).storage().total == bnb_bits


# ---------------------------------------------------------------------------------------------
# Models


def test_tiny_model_4bit_load_equals_our_round_trip(tiny_model_path):
    """Every Linear4bit of a real bitsandbytes load dequantizes to exactly our round trip."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    q4 = AutoModelForCausalLM.from_pretrained(tiny_model_path, quantization_config=config, dtype=torch.float32)
    q4_modules = dict(q4.named_modules())
    linears = quant.quantizable_linears(base)
    assert len(linears) == 7 * base.config.num_hidden_layers  # q k v o gate up down; no lm_head
    for name, linear in linears.items():
        w4 = q4_modules[name].weight
        assert torch.equal(bnb_functional.dequantize_4bit(w4.data, w4.quant_state),
                           nf4.round_trip(linear.weight.data, "nf4")), name

    before = {n: m.weight.clone() for n, m in linears.items()}
    with quant.quantized(base, "int4") as errors:
        assert set(errors) == set(linears) and all(0 < e < 0.3 for e in errors.values())
        assert not torch.equal(next(iter(linears.values())).weight, next(iter(before.values())))
    assert all(torch.equal(m.weight, before[n]) for n, m in linears.items())  # restored exactly


def test_low_rank_compensation_reduces_error_and_pissa_matches_peft():
    from peft import LoraConfig, get_peft_model

    w = _weights((256, 128), seed=5) + torch.outer(_weights((256,), seed=6, scale=1.0), _weights((128,), seed=7))
    plain = quant.relative_rmse(w, nf4.round_trip(w))
    errors = {}
    for init, iters in [("pissa", 1), ("loftq", 1), ("loftq", 5)]:
        q, lr = quant.lowrank_compensated(w, 8, init=init, iters=iters)
        errors[init, iters] = quant.relative_rmse(w, q + lr)
        assert errors[init, iters] < plain
    assert errors["loftq", 5] <= errors["loftq", 1]

    # peft's PiSSA puts the top singular directions into the adapter and leaves W - L as the base
    layer = torch.nn.Sequential(torch.nn.Linear(128, 256, bias=False))
    layer[0].weight.data.copy_(w)
    model = get_peft_model(layer, LoraConfig(r=8, lora_alpha=8, target_modules=["0"], init_lora_weights="pissa"))
    residual = model.base_model.model[0].base_layer.weight
    torch.testing.assert_close(residual, w - quant.low_rank(w, 8), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Scoring a model on text (notebook 04's t4 profile) and the memory check before it


def test_heldout_text_is_shipped_as_package_data_and_read_through_the_package():
    """The prose is read with importlib.resources, and pyproject ships it in a non-editable install too."""
    import fnmatch
    import re
    from importlib import resources
    from pathlib import Path

    paragraphs = quant.heldout_text()
    assert len(paragraphs) >= 5
    assert all(len(p.split()) >= 50 and "\n" not in p for p in paragraphs)
    words = " ".join(paragraphs).split()
    assert sum(w.strip(".,:;!?-").isalpha() for w in words) / len(words) > 0.9  # ordinary English words
    assert resources.files("lora_lab").joinpath(quant.HELDOUT_TEXT).is_file()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    patterns = re.search(r'^lora_lab = \[(.*)\]$', pyproject.split("[tool.setuptools.package-data]")[1],
                         re.MULTILINE).group(1)
    assert any(fnmatch.fnmatch(quant.HELDOUT_TEXT, p.strip().strip('"')) for p in patterns.split(","))


def _tiny_model_and_tokenizer(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _fact_sentences(n):
    from lora_lab.training import data

    world = data.make_world()
    return [data.fact_text(e, a) for e in world.entities[:n] for a in data.ATTRIBUTES]


def test_text_loss_matches_transformers_and_does_not_depend_on_padding(tiny_model_path):
    model, tokenizer = _tiny_model_and_tokenizer(tiny_model_path)
    texts = _fact_sentences(3) + ["the color of mipoka is orange . mipoka lives in tokyo ."]
    one = quant.text_loss(model, tokenizer, texts[-1:])
    ids = torch.tensor([tokenizer(texts[-1])["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()  # transformers' own shifted loss
    assert one["loss"] == pytest.approx(expected, rel=1e-5)
    assert one["tokens"] == ids.shape[1] - 1
    assert one["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)
    # texts of different lengths: padded batches give the same mean as one text at a time
    batched = quant.text_loss(model, tokenizer, texts, batch_size=len(texts))
    single = quant.text_loss(model, tokenizer, texts, batch_size=1)
    assert batched["tokens"] == single["tokens"]
    assert batched["loss"] == pytest.approx(single["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="two or more tokens"):
        quant.text_loss(model, tokenizer, ["orange"])


def test_text_loss_is_lower_for_the_trained_model_than_for_randomly_perturbed_weights(tiny_model_path):
    """The score sees knowledge: noise of the weights' own size raises the loss; NF4 rounding far less."""
    model, tokenizer = _tiny_model_and_tokenizer(tiny_model_path)
    texts = _fact_sentences(20)  # text the tiny model read in pretraining
    trained = quant.text_loss(model, tokenizer, texts, batch_size=len(texts))["loss"]
    with quant.quantized(model, "nf4"):
        nf4 = quant.text_loss(model, tokenizer, texts, batch_size=len(texts))["loss"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for linear in quant.quantizable_linears(model).values():
            w = linear.weight
            w.add_(torch.randn(w.shape, generator=g) * w.std())
    perturbed = quant.text_loss(model, tokenizer, texts, batch_size=len(texts))["loss"]
    assert trained < perturbed - 0.2  # measured: about 0.64 against 1.0 nats per token
    assert nf4 < perturbed


def test_comparison_preflight_stops_when_the_models_will_not_fit(monkeypatch):
    from types import SimpleNamespace

    from lora_lab.estimation import gpu_runs
    from lora_lab.estimation.preflight import WontFitError

    model = "Qwen/Qwen2.5-1.5B"
    need = quant.comparison_bytes(model, quant.TEXT_BATCH, quant.TEXT_MAX_LENGTH)
    sixteen_bit_weights = 2 * 1.5e9  # at least the 16-bit weights of 1.5B parameters
    assert need > sixteen_bit_weights
    assert quant.comparison_bytes(model, 2 * quant.TEXT_BATCH, quant.TEXT_MAX_LENGTH) > need  # a bigger batch needs more
    gpu = SimpleNamespace(device_type="cuda")
    monkeypatch.setattr(gpu_runs, "free_bytes_now", lambda hw=None: need + 1)
    assert quant.comparison_preflight(model, quant.TEXT_BATCH, quant.TEXT_MAX_LENGTH, gpu) == need
    monkeypatch.setattr(gpu_runs, "free_bytes_now", lambda hw=None: need - 1)
    with pytest.raises(WontFitError, match="Restart the runtime"):
        quant.comparison_preflight(model, quant.TEXT_BATCH, quant.TEXT_MAX_LENGTH, gpu)
