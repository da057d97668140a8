"""Counting without torch: LoRA's trainable parameters, an adapter's bytes, and what NF4 stores.

The arithmetic the memory lessons (`step_memory`, `activation_memory`) and the estimator share with
the layers they count (`lora_by_hand.LoRALinear`, `nf4.quantize`). It needs only the standard library,
so the estimator runs wherever Python does, in the browser calculator (Pyodide, no torch) included;
tests check each count against the tensors the layers really make.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Values per absmax block in bitsandbytes' 4-bit layers (QLoRA's choice).
DEFAULT_BLOCKSIZE = 64
#: Absmax values per block of the second (8-bit) quantization in double quantization.
DQ_BLOCKSIZE = 256


def lora_layer_params(d_in: int, d_out: int, rank: int) -> int:
    """LoRA's trainable parameters on one d_in -> d_out layer: A is r x d_in, B is d_out x r."""
    return rank * (d_in + d_out)


def adapter_bytes(params: int, bytes_per_value: int) -> int:
    """The bytes an adapter's tensors take in its file: one value per parameter (4 for fp32, 2 for 16-bit)."""
    return params * bytes_per_value


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
