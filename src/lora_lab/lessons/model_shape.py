"""The shape of a decoder-only transformer, as far as memory is concerned.

`lora_lab.estimation.vram.load_arch` reads a model's config.json into an `Arch` (the dimensions,
and one `Linear` per linear layer of a block with where its input comes from); every memory
category in `lora_lab.lessons.step_memory` and `lora_lab.lessons.activation_memory` reads it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Linear:
    """One linear layer inside a decoder block."""

    name: str  # module name as peft matches it ("q_proj", "qkv_proj", ...)
    d_in: int  # in_features
    d_out: int  # out_features
    bias: bool  # has a bias vector
    source: str  # which activation feeds it: "attn_in", "attn_out", "mlp_in" or "mlp_act"


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer, as far as memory is concerned."""

    name: str  # preset name, config path or "generic-<N>"
    model_type: str  # transformers model_type ("llama", "qwen2", "gemma2", "phi3", ...)
    vocab_size: int  # rows of the embedding matrix (V)
    hidden_size: int  # residual stream width (h)
    intermediate_size: int  # MLP width (I)
    num_layers: int  # decoder blocks (L)
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (grouped-query attention when < num_heads)
    head_dim: int  # width of one head (d)
    tied: bool  # output head shares the embedding matrix
    linears: tuple[Linear, ...]  # the block's linear layers, in forward order
    norms_per_layer: int  # 2 for Llama-style blocks, 4 for Gemma-2 (pre and post norms)
    norm_params: int  # parameters of one norm: h for RMSNorm, 2h for LayerNorm with bias
    qk_norm_params: int  # per-layer parameters of per-head q/k norms (Qwen3), else 0
    fused_qkv: bool  # q, k, v come out of one matmul (Phi-3): v is a view of that output
    norm_saves_fp32_scaled: bool  # norm weight multiplies in fp32 (Gemma), not in the compute dtype
    attn_softcap: bool  # scores go through tanh softcapping (Gemma-2)
    logit_softcap: bool  # logits go through tanh softcapping (Gemma-2)
    sdpa_supported: bool  # transformers offers SDPA for this model (not Gemma-2)
    max_positions: int | None  # context length from the config
    generic: bool = False  # built from a bare parameter count, not a real config

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @functools.cached_property
    def layer_linear_params(self) -> int:
        """Weights and biases of one block's linear layers."""
        return sum(li.d_in * li.d_out + (li.d_out if li.bias else 0) for li in self.linears)

    @functools.cached_property
    def layer_params(self) -> int:
        return self.layer_linear_params + self.norms_per_layer * self.norm_params + self.qk_norm_params

    @functools.cached_property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @functools.cached_property
    def head_params(self) -> int:
        """Parameters of the output head (0 when tied to the embedding)."""
        return 0 if self.tied else self.vocab_size * self.hidden_size

    @functools.cached_property
    def total_params(self) -> int:
        """Exact parameter count: embeddings, blocks, final norm, untied head."""
        return self.embedding_params + self.num_layers * self.layer_params + self.norm_params + self.head_params


def full_param_sizes(arch: Arch) -> list[int]:
    """Every parameter tensor's size for full fine-tuning (the optimizer's view of the model)."""
    per_layer = []
    for li in arch.linears:
        per_layer.append(li.d_in * li.d_out)
        if li.bias:
            per_layer.append(li.d_out)
    per_layer += [arch.norm_params] * arch.norms_per_layer
    if arch.qk_norm_params:
        per_layer += [arch.head_dim, arch.head_dim]
    sizes = [arch.embedding_params, *per_layer * arch.num_layers, arch.norm_params]
    if not arch.tied:
        sizes.append(arch.head_params)
    return sizes
