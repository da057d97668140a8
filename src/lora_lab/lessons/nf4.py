"""4-bit quantization from scratch, block-wise, with double quantization, and what it stores.

QLoRA keeps the frozen base model in 4 bits. A common description calls that "smart rounding"; this module
spells the rounding out so a learner can read every step and check it against bitsandbytes, the
library that does it for real:

1. **A code book** of 16 values in [-1, 1] (`lora_lab.lessons.code_books`). A 4-bit code is an
   index into it.
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

import math
from dataclasses import dataclass

import torch

from lora_lab.lessons.code_books import cached_dynamic_map, code_book, nearest_code, nearest_code_by_distance

# What the format stores is counted without torch in `counting` (the estimator and the browser calculator use
# it there); the lessons reach it as nf4.storage_bits and nf4.bits_per_parameter.
from lora_lab.lessons.counting import DEFAULT_BLOCKSIZE, DQ_BLOCKSIZE, Storage, storage_bits
from lora_lab.lessons.counting import bits_per_parameter as bits_per_parameter

#: Guard against dividing by the absmax of an all-zero block (the same guard bitsandbytes uses).
TINY = 1e-38


# --------------------------------------------------------------------------------------------
# Block-wise quantization
# --------------------------------------------------------------------------------------------


def blocks_of(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, int]:
    """`flat` zero-padded to whole blocks, shape (blocks, blocksize), and the number of pad values."""
    pad = -flat.numel() % blocksize
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize), pad


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
        levels = self.levels if self.levels is not None else cached_dynamic_map()
        n = self.codes.numel()
        values, _ = blocks_of(levels.to(self.codes.device)[self.codes.long()], self.blocksize)
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
    blocks, pad = blocks_of(centred, blocksize)
    scales = blocks.abs().amax(dim=1)
    levels = cached_dynamic_map().to(absmax.device)
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
    blocks, pad = blocks_of(flat, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks * (1.0 / absmax.clamp(min=TINY)).view(-1, 1)
    if pad:  # bitsandbytes divides (rather than multiplies by the reciprocal) in a partial last block
        scaled[-1] = blocks[-1] / absmax[-1].clamp(min=TINY)
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
    values, _ = blocks_of(q.code.to(q.packed.device)[q.codes()], q.blocksize)
    out = (values * q.block_absmax().view(-1, 1)).reshape(-1)[:n]
    return out.reshape(q.shape).to(q.dtype)


def round_trip(x: torch.Tensor, fmt: str | torch.Tensor = "nf4", blocksize: int = DEFAULT_BLOCKSIZE,
               double_quant: bool = False) -> torch.Tensor:
    """`x` quantized and dequantized again: what a 4-bit layer computes with instead of `x`."""
    return dequantize(quantize(x, fmt, blocksize, double_quant))
