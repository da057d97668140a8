"""The code books of 4-bit quantization: NF4, FP4 and INT4, and the nearest level of a value.

A 4-bit code is an index into a code book of 16 values in [-1, 1]. NF4 takes its levels from
quantiles of the standard normal distribution (QLoRA, Dettmers et al., arXiv 2305.14314, §3),
so that weights that are roughly normal spread over the levels instead of crowding the middle ones;
FP4 is a tiny floating-point format; INT4 is evenly spaced. `dynamic_map` is the 8-bit code book
that double quantization uses. Every code book equals bitsandbytes' own (tests/test_quant.py).
`lora_lab.lessons.nf4` quantizes with them.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import torch

#: Outermost quantile of bitsandbytes' NF4: norm.ppf(0.9677083) is about 1.85 standard deviations.
NF4_OFFSET = 0.9677083
#: The 4-bit formats this module knows.
FORMATS = ("nf4", "fp4", "int4")


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
    quantile = NormalDist().inv_cdf  # the standard normal's inverse CDF (what scipy calls norm.ppf)
    # linspace in fp32 (as bitsandbytes does) matters for a bit-exact match: the probabilities are
    # rounded to fp32 before the inverse normal CDF is taken.
    positive = [quantile(p) for p in torch.linspace(offset, 0.5, 9)[:-1].tolist()]  # 8 values
    negative = [-quantile(p) for p in torch.linspace(offset, 0.5, 8)[:-1].tolist()]  # 7 values
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
def cached_dynamic_map() -> torch.Tensor:
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
