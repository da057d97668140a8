"""4-bit quantization from scratch: NF4, FP4 and INT4, block-wise, with double quantization.

QLoRA keeps the frozen base model in 4 bits. A common description calls that "smart rounding"; this module
spells the rounding out so a learner can read every step and check it against bitsandbytes, the
library that does it for real:

1. **A code book** of 16 values in [-1, 1]. A 4-bit code is an index into it. NF4 takes the
   levels from quantiles of the standard normal distribution (weights are roughly normal, so
   each level is used about equally often); FP4 is a tiny floating-point format; INT4 is evenly
   spaced.
2. **Block-wise absmax scaling.** The weights are cut into blocks (64 values by default); each
   block is divided by its largest magnitude, which is kept in fp32, so every block fills [-1, 1].
3. **Nearest level.** Each scaled value gets the code of the closest level; two codes share a
   byte, the first in the high nibble.
4. **Double quantization** (optional) stores the fp32 absmax values themselves in 8 bits: subtract
   their mean, quantize them in blocks of 256 with bitsandbytes' 8-bit dynamic map, and keep one
   fp32 scale per 256 blocks. That takes the overhead from 0.5 to about 0.127 bit per weight.

`quantize` and `dequantize` reproduce `bitsandbytes.functional.quantize_4bit` and
`dequantize_4bit` code for code on the CPU (tests/test_quant.py checks it on a million values).
One small-print detail follows bitsandbytes so that the match is exact rather than approximate:
whole blocks are multiplied by ``1 / absmax``, a final partial block is divided by its absmax.
Double quantization differs in one respect: bitsandbytes' CPU 8-bit kernel finds the level with
an approximate table search and, for a fraction of a percent of the absmax values (those close to
a midpoint between two levels), returns a neighbour of the nearest level. We take the nearest
level; everything else (offset, scales, dequantization) matches bit for bit.

Sources: QLoRA (Dettmers et al., arXiv 2305.14314) §3 for NF4 and double quantization (blocks of
64 weights, absmax scales quantized to 8 bits in blocks of 256); bitsandbytes' own code book and
kernels (``bitsandbytes/functional.py``) for the exact constants, which the tests match.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch

#: Outermost quantile of bitsandbytes' NF4: norm.ppf(0.9677083) is about 1.85 standard deviations.
NF4_OFFSET = 0.9677083
#: Values per absmax block in bitsandbytes' 4-bit layers (QLoRA's choice).
DEFAULT_BLOCKSIZE = 64
#: Absmax values per block of the second (8-bit) quantization in double quantization.
DQ_BLOCKSIZE = 256
#: The 4-bit formats this module knows.
FORMATS = ("nf4", "fp4", "int4")
#: Guard against dividing by the absmax of an all-zero block (the same guard bitsandbytes uses).
_TINY = 1e-38


# --------------------------------------------------------------------------------------------
# Code books
# --------------------------------------------------------------------------------------------


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, so that code ``i`` means ``nf4_code()[i]``.

    The levels are quantiles of N(0, 1): 8 evenly spaced probabilities from `offset` down to
    (just above) 0.5 give the positive side, 7 give the negative side, and 0 is added exactly so
    that zero weights (padding, pruned weights) stay zero. Asymmetric (7 negative, 8 positive)
    because 16 codes cannot hold a symmetric set with an exact zero. Finally everything is
    divided by the largest level, so the code book spans [-1, 1] like an absmax-scaled block.

    Why quantiles: if weights are normal, every level then covers the same share of them, so no
    code is wasted on values that hardly occur. `offset` stops short of probability 1, whose
    quantile would be infinite.

    Args:
        offset: probability of the outermost positive quantile.

    Returns:
        fp32 tensor of 16 values from -1 to 1, equal to bitsandbytes' ``get_4bit_type("nf4")``.
    """
    from scipy.stats import norm

    # linspace in fp32 (as bitsandbytes does) matters for a bit-exact match: the probabilities are
    # rounded to fp32 before the inverse normal CDF is taken.
    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy()).tolist()  # 8 values
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())).tolist()  # 7 values
    levels = torch.tensor(sorted(negative + [0.0] + positive), dtype=torch.float32)
    return levels / levels.max()


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 levels in code order: 1 sign bit, 2 exponent bits, 1 mantissa bit.

    A code ``s e1 e0 m`` (s the high bit) means ``(-1)**s * magnitude(e, m) / 12`` where, for an
    exponent field e of 1 to 3, magnitude = (1 + m/2) * 2**(4 - e) (so 8, 12, 4, 6, 2, 3) and for
    e = 0 it is the subnormal m / 16 (0 or 0.0625). bitsandbytes counts the exponent field
    downwards (field 1 is the largest binade); we follow it so the codes match. The largest
    magnitude, 12, is scaled to 1. There are two zeros (+0 and -0) and only 15 distinct levels,
    spread like a float: dense near zero, sparse near +-1.

    Returns:
        fp32 tensor of 16 values, equal to bitsandbytes' ``get_4bit_type("fp4")``.
    """
    values = []
    for code in range(16):
        sign = -1.0 if code & 0b1000 else 1.0
        exponent, mantissa = (code >> 1) & 0b11, code & 0b1
        magnitude = mantissa / 16 if exponent == 0 else (1 + mantissa / 2) * 2.0 ** (4 - exponent)
        values.append(sign * magnitude)
    return torch.tensor(values, dtype=torch.float32) / 12.0


def int4_code() -> torch.Tensor:
    """A symmetric INT4 in sign-magnitude form: code ``s m2 m1 m0`` means ``(-1)**s * m / 7``.

    Evenly spaced levels k/7 for k = -7..7, the plain "round to the nearest integer" baseline of
    QLoRA's Table 2. Codes 0 and 8 both mean zero, so 15 distinct levels are used.

    Returns:
        fp32 tensor of 16 values in code order.
    """
    return torch.tensor([(-1.0 if c & 0b1000 else 1.0) * (c & 0b111) / 7 for c in range(16)], dtype=torch.float32)


def code_book(fmt: str) -> torch.Tensor:
    """The 16 levels of `fmt` ("nf4", "fp4" or "int4") in code order.

    Raises:
        ValueError: for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown 4-bit format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return _cached_code_book(fmt).clone()


@functools.cache
def _cached_code_book(fmt: str) -> torch.Tensor:
    return {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}[fmt]()


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map: the code book of double quantization's 8-bit step.

    Each positive level is ``10**-k * f``: a power of ten (k = 6 down to 0) times a fraction f from
    [0.1, 1]. Smaller powers get fewer fractions (1, 2, 4, ... 64 of them, the midpoints of an even
    split of [0.1, 1]), so the map is dense near zero and near 1 alike in relative terms: 127
    positive levels, their negatives, 0 and 1. This is Dettmers' "dynamic tree" 8-bit type
    (arXiv 1511.04561); double quantization uses it for the mean-centred absmax values, which
    have both signs and a wide range.

    Returns:
        Sorted fp32 tensor of 256 levels, equal to ``bitsandbytes.functional.create_dynamic_map()``.
    """
    levels = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        scaled = (10.0 ** (i - 6) * mids).tolist()
        levels += scaled + [-v for v in scaled]
    return torch.tensor(sorted(levels), dtype=torch.float32)


@functools.cache
def _cached_dynamic_map() -> torch.Tensor:
    return dynamic_map()


# --------------------------------------------------------------------------------------------
# Nearest level
# --------------------------------------------------------------------------------------------


def _sorted_levels(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels in increasing order and, for each, its code (a stable sort keeps +0 before -0)."""
    levels, order = torch.sort(code, stable=True)
    return levels, order


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Code of the nearest level for each value of `scaled` (already in [-1, 1]).

    The boundary between two neighbouring levels is their midpoint; a value exactly on it goes to
    the lower level. Works for any code book, sorted (NF4) or not (FP4, INT4).

    Args:
        scaled: values divided by their block's absmax.
        code: the levels in code order.

    Returns:
        int64 tensor of codes, the shape of `scaled`.
    """
    levels, order = _sorted_levels(code.to(scaled.device))
    midpoints = (levels[:-1] + levels[1:]) / 2
    return order[torch.bucketize(scaled, midpoints)]


def nearest_code_by_distance(normed: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest level of a sorted code book by comparing distances to the two neighbours.

    The same rule as `nearest_code` up to float rounding at the midpoints (a tie goes to the lower
    level). Double quantization uses it for the 256-level dynamic map, after dividing by the
    block's absmax as bitsandbytes' 8-bit kernel does.

    Args:
        normed: values divided by their block's absmax.
        levels: sorted levels (e.g. `dynamic_map()`).

    Returns:
        int64 tensor of indices into `levels`.
    """
    left = (torch.searchsorted(levels, normed, right=True) - 1).clamp(0, len(levels) - 2)
    dist_left = (normed - levels[left]).abs()
    dist_right = (normed - levels[left + 1]).abs()
    return left + (dist_right < dist_left).long()


# --------------------------------------------------------------------------------------------
# Block-wise quantization
# --------------------------------------------------------------------------------------------


def _blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, int]:
    """`flat` zero-padded to whole blocks, shape (blocks, blocksize), and the number of pad values."""
    pad = -flat.numel() % blocksize
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize), pad


def absmax_per_block(x: torch.Tensor, blocksize: int = DEFAULT_BLOCKSIZE) -> torch.Tensor:
    """Largest magnitude of each block of `blocksize` consecutive values (fp32, flattened order)."""
    blocks, _ = _blocks(x.reshape(-1).float(), blocksize)
    return blocks.abs().amax(dim=1)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high nibble (an odd count gets a 0 nibble)."""
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_nibbles`: the first `n` 4-bit codes, as int64."""
    packed = packed.reshape(-1).to(torch.int64)
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n]


@dataclass
class DoubleQuant:
    """The absmax values of a 4-bit tensor, themselves quantized to 8 bits."""

    codes: torch.Tensor  # uint8: one 8-bit code (index into `levels`) per 4-bit block
    scales: torch.Tensor  # fp32: absmax of each group of `blocksize` centred absmax values
    offset: torch.Tensor  # fp32 scalar: the mean absmax, subtracted before quantizing
    blocksize: int = DQ_BLOCKSIZE  # absmax values per 8-bit block
    levels: torch.Tensor | None = None  # the 8-bit code book (dynamic_map())

    def dequantize(self) -> torch.Tensor:
        """The fp32 absmax values as the 4-bit dequantizer will see them."""
        levels = self.levels if self.levels is not None else _cached_dynamic_map()
        n = self.codes.numel()
        values, _ = _blocks(levels.to(self.codes.device)[self.codes.long()], self.blocksize)
        return (values * self.scales.view(-1, 1)).reshape(-1)[:n] + self.offset


def double_quantize(absmax: torch.Tensor, blocksize: int = DQ_BLOCKSIZE) -> DoubleQuant:
    """Quantize fp32 absmax values to 8 bits: centre on their mean, then block-wise absmax.

    Absmax values are all positive and bunched together; subtracting the mean spreads them
    around zero so the symmetric 8-bit map is used on both sides. Each group of `blocksize` of
    them gets one fp32 scale.

    Args:
        absmax: fp32 absmax values of the 4-bit blocks.
        blocksize: absmax values per 8-bit block (256 in bitsandbytes).

    Returns:
        The 8-bit codes, the per-group fp32 scales and the fp32 offset.
    """
    absmax = absmax.float().reshape(-1)
    offset = absmax.mean()
    centred = absmax - offset
    blocks, pad = _blocks(centred, blocksize)
    scales = blocks.abs().amax(dim=1)
    levels = _cached_dynamic_map().to(absmax.device)
    normed = (blocks / scales.view(-1, 1)).reshape(-1)[: absmax.numel()]
    codes = nearest_code_by_distance(normed, levels).to(torch.uint8)
    return DoubleQuant(codes=codes, scales=scales, offset=offset, blocksize=blocksize, levels=levels)


@dataclass
class Quantized4bit:
    """A tensor in 4 bits: packed codes plus everything needed to rebuild it."""

    packed: torch.Tensor  # uint8, (n + 1) // 2 bytes: two codes per byte, first in the high nibble
    absmax: torch.Tensor | None  # fp32, one per block (None when double-quantized)
    double_quant: DoubleQuant | None  # the 8-bit absmax (None without double quantization)
    fmt: str  # "nf4", "fp4", "int4" or "custom"
    code: torch.Tensor  # the 16 levels in code order
    blocksize: int  # values per absmax block
    shape: torch.Size  # shape of the original tensor
    dtype: torch.dtype  # dtype of the original tensor (dequantize returns it)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes, unpacked, in the tensor's flattened order."""
        return unpack_nibbles(self.packed, self.numel)

    def block_absmax(self) -> torch.Tensor:
        """The fp32 absmax per block that dequantization multiplies by."""
        return self.double_quant.dequantize() if self.double_quant is not None else self.absmax

    def storage(self) -> Storage:
        """Bits this tensor takes, by part (see `storage_bits`)."""
        return storage_bits(self.numel, self.blocksize, self.double_quant is not None,
                            self.double_quant.blocksize if self.double_quant else DQ_BLOCKSIZE)


def quantize(x: torch.Tensor, fmt: str | torch.Tensor = "nf4", blocksize: int = DEFAULT_BLOCKSIZE,
             double_quant: bool = False) -> Quantized4bit:
    """Quantize `x` to 4 bits block-wise, the way `bitsandbytes.functional.quantize_4bit` does.

    Steps: flatten; cut into blocks of `blocksize`; absmax per block (fp32); scale each block into
    [-1, 1] (times 1/absmax, clamped); nearest level of the code book; pack two codes per byte.
    With `double_quant` the absmax values are stored in 8 bits (`double_quantize`).

    Args:
        x: a 16- or 32-bit float tensor of any shape.
        fmt: "nf4", "fp4" or "int4", or your own 16 levels in [-1, 1] in code order.
        blocksize: values per absmax block (bitsandbytes allows 32 to 4096; any positive size works here).
        double_quant: also quantize the absmax values (QLoRA's double quantization).

    Returns:
        The packed codes and quantization state.
    """
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive (got {blocksize}).")
    code = code_book(fmt) if isinstance(fmt, str) else fmt.detach().float().cpu()
    if code.numel() != 16:
        raise ValueError(f"A 4-bit code book has 16 levels (got {code.numel()}).")
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks, pad = _blocks(flat, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks * (1.0 / absmax.clamp(min=_TINY)).view(-1, 1)
    if pad:  # bitsandbytes divides (rather than multiplies by the reciprocal) in a partial last block
        scaled[-1] = blocks[-1] / absmax[-1].clamp(min=_TINY)
    scaled = scaled.clamp(-1, 1).reshape(-1)[:n]
    packed = pack_nibbles(nearest_code(scaled, code))
    if n % 2:  # the pad nibble holds the code of 0, as in bitsandbytes
        packed[-1] |= int(nearest_code(torch.zeros(1), code))
    dq = double_quantize(absmax) if double_quant else None
    return Quantized4bit(packed=packed, absmax=None if double_quant else absmax, double_quant=dq,
                         fmt=fmt if isinstance(fmt, str) else "custom", code=code, blocksize=blocksize,
                         shape=x.shape, dtype=x.dtype)


def dequantize(q: Quantized4bit) -> torch.Tensor:
    """Rebuild the tensor: level of each code times its block's absmax, in the original dtype.

    Args:
        q: the result of `quantize`.

    Returns:
        Tensor of `q.shape` and `q.dtype` (computed in fp32, then cast).
    """
    n = q.numel
    values, _ = _blocks(q.code.to(q.packed.device)[q.codes()], q.blocksize)
    out = (values * q.block_absmax().view(-1, 1)).reshape(-1)[:n]
    return out.reshape(q.shape).to(q.dtype)


def round_trip(x: torch.Tensor, fmt: str | torch.Tensor = "nf4", blocksize: int = DEFAULT_BLOCKSIZE,
               double_quant: bool = False) -> torch.Tensor:
    """`x` quantized and dequantized again: what a 4-bit layer computes with instead of `x`."""
    return dequantize(quantize(x, fmt, blocksize, double_quant))


def relative_rmse(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Root-mean-square error relative to the root-mean-square of `x`: ||x - approx|| / ||x||."""
    x, approx = x.double().reshape(-1), approx.double().reshape(-1)
    return float((x - approx).norm() / x.norm())


def block_normalized(x: torch.Tensor, blocksize: int = DEFAULT_BLOCKSIZE) -> torch.Tensor:
    """Every value divided by its block's absmax (flattened): what the code book has to cover."""
    blocks, _ = _blocks(x.reshape(-1).float(), blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp(min=_TINY)).reshape(-1)[: x.numel()]


def level_usage(x: torch.Tensor, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE) -> torch.Tensor:
    """Share of the values of `x` that land on each level, levels in increasing order.

    Codes that mean the same value (FP4's and INT4's +0 and -0) are counted together under the
    first, so the result has one entry per distinct level.
    """
    code = code_book(fmt)
    q = quantize(x, fmt, blocksize)
    values = code[q.codes()]
    levels = code.unique()  # sorted, +0 and -0 merged
    counts = torch.bucketize(values, levels).bincount(minlength=len(levels)).double()
    return counts / counts.sum()


def rounding_of_update(w: torch.Tensor, update: torch.Tensor, fmt: str = "nf4",
                       blocksize: int = DEFAULT_BLOCKSIZE) -> dict:
    """What happens to a small change of a weight if the weight is stored in 4 bits.

    Args:
        w: the weight.
        update: a change to it, e.g. one optimizer step.
        fmt: 4-bit format.
        blocksize: values per absmax block.

    Returns:
        ``changed``: share of 4-bit codes that differ after adding the update; ``error``: relative
        RMSE between the update and the change the 4-bit weights actually show (1.0 means all
        of it was lost).
    """
    before, after = quantize(w, fmt, blocksize), quantize(w + update, fmt, blocksize)
    changed = float((before.codes() != after.codes()).double().mean())
    seen = dequantize(after).float() - dequantize(before).float()
    return {"changed": changed, "error": relative_rmse(update, seen)}


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """Bits taken by one 4-bit tensor of `n` values, by part."""

    n: int  # values in the tensor
    codes: int  # the packed 4-bit codes: 8 bits per byte, (n + 1) // 2 bytes
    absmax: int  # per-block scales: 32 bits each, or 8 bits each with double quantization
    scales2: int  # double quantization's fp32 scale per group of absmax values (0 without it)
    constants: int  # per-tensor: the 16-level fp32 code book, plus (with DQ) the fp32 offset and 256-level map

    @property
    def total(self) -> int:
        return self.codes + self.absmax + self.scales2 + self.constants

    @property
    def per_parameter(self) -> float:
        """Bits per value, without the per-tensor constants (which vanish for large tensors)."""
        return (self.codes + self.absmax + self.scales2) / self.n

    @property
    def bytes(self) -> int:
        return self.total // 8


def storage_bits(n: int, blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
                 dq_blocksize: int = DQ_BLOCKSIZE) -> Storage:
    """Bits bitsandbytes keeps for an `n`-value weight in 4 bits, quantization state included.

    Without double quantization: 4 bits per value plus a 32-bit absmax per block, i.e.
    4 + 32/64 = 4.5 bits per value. With it: the absmax shrinks to 8 bits and each group of
    `dq_blocksize` of them adds one 32-bit scale: 4 + 8/64 + 32/(64 * 256) = 4.127 bits per value.

    Args:
        n: number of values.
        blocksize: values per absmax block.
        double_quant: absmax stored in 8 bits.
        dq_blocksize: absmax values per 8-bit block.

    Returns:
        The breakdown in bits.
    """
    blocks = -(-n // blocksize)
    codes = 8 * ((n + 1) // 2)
    constants = 16 * 32  # the fp32 code book kept with every quantized weight
    if not double_quant:
        return Storage(n, codes, 32 * blocks, 0, constants)
    groups = -(-blocks // dq_blocksize)
    return Storage(n, codes, 8 * blocks, 32 * groups, constants + 32 + 256 * 32)


def bits_per_parameter(blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
                       dq_blocksize: int = DQ_BLOCKSIZE) -> float:
    """Bits per value of a large tensor: 4 + 32/blocksize, or 4 + 8/blocksize + 32/(blocksize*dq_blocksize)."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 4 + 32 / blocksize


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def quantizable_linears(model) -> dict[str, torch.nn.Linear]:
    """The `nn.Linear` layers a 4-bit load quantizes: all but the output head.

    transformers keeps the output head (and anything tied to it) in 16/32 bits, as do norms and
    embeddings, which are not `nn.Linear`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and m.weight is not getattr(head, "weight", None)}


def low_rank(w: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of `w` (truncated SVD, Eckart-Young), in fp32."""
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def lowrank_compensated(w: torch.Tensor, rank: int, fmt: str = "nf4", init: str = "loftq", iters: int = 5,
                        blocksize: int = DEFAULT_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `w` into a 4-bit part and a 16/32-bit low-rank part that corrects its rounding.

    QLoRA starts the adapters at zero, so training begins from the rounded weights Q(W). Two
    initialisations use the adapter to start closer to W instead:

    * ``"pissa"`` (PiSSA, arXiv 2404.02948): the adapter takes W's top `rank` singular
      directions, L = SVD_r(W), and only the residual W - L is quantized. The residual has a
      smaller range than W, so its blocks round more finely.
    * ``"loftq"`` (LoftQ, arXiv 2310.08659): alternate Q = q(W - L) and L = SVD_r(W - Q), starting
      from L = 0, so the adapter fits the quantization error itself.

    Args:
        w: a 2-D weight.
        rank: adapter rank.
        fmt: 4-bit format of the frozen part.
        init: "loftq" or "pissa".
        iters: LoftQ alternations (ignored for PiSSA).
        blocksize: values per absmax block.

    Returns:
        (dequantized frozen part, low-rank part); their sum is what the layer computes with at step 0.
    """
    w = w.float()
    if init == "pissa":
        lr = low_rank(w, rank)
        return round_trip(w - lr, fmt, blocksize), lr
    if init != "loftq":
        raise ValueError(f"init must be 'loftq' or 'pissa' (got {init!r}).")
    lr = torch.zeros_like(w)
    for _ in range(iters):
        q = round_trip(w - lr, fmt, blocksize)
        lr = low_rank(w - q, rank)
    return q, lr


@torch.no_grad()
def quantize_model_(model, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
                    rank: int = 0, init: str = "loftq", iters: int = 5) -> dict[str, float]:
    """Replace every quantizable linear weight of `model` by its 4-bit round trip, in place.

    The model stays an ordinary float model, so any format (INT4 too, which bitsandbytes does not
    offer) can be tried on it, and its weights equal those a real 4-bit load dequantizes to.
    With `rank` > 0 each weight becomes Q + L from `lowrank_compensated`: what a QLoRA layer with
    a LoftQ- or PiSSA-initialised adapter computes before training.

    Args:
        model: a transformers causal LM (modified in place).
        fmt: "nf4", "fp4" or "int4".
        blocksize: values per absmax block.
        double_quant: quantize the absmax values too.
        rank: adapter rank for low-rank compensation (0: none, plain QLoRA).
        init: "loftq" or "pissa" (with `rank` > 0).
        iters: LoftQ alternations.

    Returns:
        Relative RMSE of each replaced weight, by module name.
    """
    errors = {}
    for name, linear in quantizable_linears(model).items():
        w = linear.weight
        if rank:
            q, lr = lowrank_compensated(w.data, rank, fmt, init, iters, blocksize)
            approx = (q + lr).to(w.dtype)
        else:
            approx = round_trip(w.data, fmt, blocksize, double_quant)
        errors[name] = relative_rmse(w.data, approx)
        w.data.copy_(approx)
    return errors


@contextlib.contextmanager
def quantized(model, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
              rank: int = 0, init: str = "loftq", iters: int = 5):
    """Context in which `model`'s linear weights are 4-bit round trips; restored on exit.

    Cheaper than copying the model once per format: only the linear weights are saved (on the CPU).
    Arguments as in `quantize_model_`.

    Yields:
        The relative RMSE of each replaced weight, by module name.
    """
    saved = {name: m.weight.detach().to("cpu", copy=True) for name, m in quantizable_linears(model).items()}
    try:
        yield quantize_model_(model, fmt, blocksize, double_quant, rank, init, iters)
    finally:
        with torch.no_grad():
            for name, m in quantizable_linears(model).items():
                m.weight.copy_(saved[name].to(m.weight.device))


#: Facts per forward pass of `completion_loss` (the notebook's preflight checks this batch).
FACT_BATCH = 400


def fact_prompts(world=None) -> tuple[list[str], list[str]]:
    """Every fact of the course world split into a prompt and its answer word.

    "the color of mipoka is orange ." gives ("the color of mipoka is", " orange"): the answer is
    what the tiny model memorised, so the loss on it measures remembered knowledge, not the
    unpredictable entity names.
    """
    from . import data

    world = world or data.make_world()
    prompts, answers = [], []
    for entity in world.entities:
        for attribute in data.ATTRIBUTES:
            value = getattr(entity, attribute)
            sentence = data.fact_text(entity, attribute)
            prompts.append(sentence[: sentence.rindex(value)].rstrip())
            answers.append(" " + value)
    return prompts, answers


@torch.no_grad()
def completion_loss(model, tokenizer, prompts: list[str], completions: list[str],
                    batch_size: int = FACT_BATCH) -> dict:
    """Cross-entropy of each completion given its prompt, and how sure the model is of it.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: the conditioning texts.
        completions: what should follow each prompt (scored token by token).
        batch_size: examples per forward pass.

    Returns:
        ``loss``: mean cross-entropy per completion token (nats); ``accuracy``: share of
        completions whose every token is the model's top choice; ``margins``: per completion,
        the smallest gap (in logits) between the right token and the best wrong one over its
        tokens (negative when the model gets it wrong).
    """
    device = next(model.parameters()).device
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append((p + c, len(p)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count, correct, margins = 0.0, 0, 0, []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        longest = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (seq, _) in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for r, (seq, start) in enumerate(chunk):
            pred = logits[r, start - 1 : len(seq) - 1]  # positions predicting the completion tokens
            target = torch.tensor(seq[start:])
            total += torch.nn.functional.cross_entropy(pred, target, reduction="sum").item()
            count += len(target)
            right = pred.gather(1, target.view(-1, 1)).squeeze(1)
            wrong = pred.scatter(1, target.view(-1, 1), float("-inf")).amax(dim=1)
            margin = float((right - wrong).min())
            margins.append(margin)
            correct += margin > 0
    return {"loss": total / count, "accuracy": correct / len(rows), "margins": torch.tensor(margins)}


#: The course's own prose that notebook 04 scores a real model on (package data, so a pip install has it).
HELDOUT_TEXT = "texts/heldout.txt"
#: Texts per forward pass of `text_loss` (the notebook's preflight checks this batch).
TEXT_BATCH = 4
#: Tokens kept per text by `text_loss`: the course's paragraphs are shorter, so nothing is cut.
TEXT_MAX_LENGTH = 256


def heldout_text() -> list[str]:
    """Paragraphs of ordinary English the course ships, for scoring a real model's quantized weights.

    A real model (the t4 profile's Qwen2.5-1.5B-Instruct) has never seen the course world's invented
    facts, but it knows English: its loss on prose written for this course, which was not in its
    training data, shows how much of that knowledge each 4-bit format keeps. Read through the
    installed package (`importlib.resources`), so it works from a pip install on Colab too.

    Returns:
        The non-empty paragraphs of ``lora_lab/texts/heldout.txt``, in order.
    """
    from importlib import resources

    text = resources.files("lora_lab").joinpath(HELDOUT_TEXT).read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


@torch.no_grad()
def text_loss(model, tokenizer, texts: list[str], max_length: int = TEXT_MAX_LENGTH,
              batch_size: int = TEXT_BATCH) -> dict:
    """Mean next-token cross-entropy of `model` over `texts` (each cut to `max_length` tokens).

    Every token after a text's first is predicted from those before it; padding is masked out, so
    the result does not depend on `batch_size`. The mean is over all predicted tokens together
    (a long paragraph weighs more than a short one), as a perplexity is usually reported.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        texts: the texts to score.
        max_length: tokens kept per text (also what bounds the memory of one forward pass).
        batch_size: texts per forward pass.

    Returns:
        ``loss``: mean cross-entropy per predicted token (nats); ``perplexity``: exp(loss);
        ``tokens``: how many tokens were predicted.
    """
    device = next(model.parameters()).device
    rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        longest = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = ids[:, 1:].to(device).masked_fill(mask[:, 1:].to(device) == 0, -100)
        total += torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                   ignore_index=-100, reduction="sum").item()
        count += int(mask[:, 1:].sum())
    if count == 0:
        raise ValueError("text_loss needs at least one text of two or more tokens.")
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def comparison_bytes(model, batch_size: int, seq_len: int) -> int:
    """GPU memory notebook 04's format comparison may need, from `lora_lab.vram.estimate`.

    The notebook holds the model in 16 bits, loads a 4-bit copy beside it, and runs forward passes
    of `batch_size` x `seq_len` tokens. The estimator predicts training steps, so we ask it for the
    closest step that holds at least as much: a 16-bit LoRA step of rank 1 on one projection (plain
    SGD, gradient checkpointing on) at that batch, which adds a sliver of adapter gradients and
    one recomputed layer to what a forward pass keeps, plus the weights of the 4-bit copy from a
    QLoRA estimate of the same model. An upper bound, by design.

    Args:
        model: what `vram.estimate` takes (a preset name, a config folder...).
        batch_size: sequences per forward pass.
        seq_len: tokens per sequence.

    Returns:
        Bytes: the 16-bit step's total plus the 4-bit copy's weights.
    """
    from . import vram

    step = dict(rank=1, target_modules=["q_proj"], batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=True,
                optimizer="sgd", precision="fp16", autocast=False)
    sixteen = vram.estimate(model, method="lora", **step)
    four = vram.estimate(model, method="qlora", **step)
    return int(sixteen.total + four.weights)


def comparison_preflight(model, batch_size: int, seq_len: int, hw) -> int:
    """Check `comparison_bytes` against the GPU memory free right now; stop before loading if it won't fit.

    Args:
        model: what `vram.estimate` takes for the model about to be loaded (the real model, not a stand-in).
        batch_size: sequences per scoring forward pass.
        seq_len: tokens per sequence.
        hw: the `lora_lab.hardware` reading; without a CUDA GPU nothing is loaded on one, so only the
            estimate is printed.

    Returns:
        The estimate in bytes.

    Raises:
        WontFitError: the estimate exceeds the GPU memory free at this moment (message says what to do).
    """
    from .gpu_runs import free_bytes_now
    from .preflight import WontFitError
    from .units import GIB

    need = comparison_bytes(model, batch_size, seq_len)
    if hw.device_type != "cuda":
        print(f"preflight: no GPU; on one, the 16-bit model, its 4-bit copy and a scoring batch of {batch_size} x "
              f"{seq_len} tokens would need at most {need / GIB:.2f} GiB (estimator).")
        return need
    free = free_bytes_now(hw)
    if need > free:
        raise WontFitError(
            f"The format comparison needs up to {need / GIB:.2f} GiB (16-bit model + 4-bit copy + a batch of "
            f"{batch_size} x {seq_len} tokens) and {free / GIB:.2f} GiB of GPU memory is free now. Restart the "
            "runtime to free what earlier notebooks hold (Runtime > Restart session), or use a bigger GPU.")
    print(f"preflight: the comparison needs at most {need / GIB:.2f} GiB; {free / GIB:.2f} GiB is free: runs.")
    return need


def kurtosis(x: torch.Tensor) -> float:
    """Excess kurtosis of the values of `x`: 0 for a normal distribution, larger for heavy tails."""
    x = x.double().reshape(-1)
    z = (x - x.mean()) / x.std()
    return float((z**4).mean() - 3)
