"""One training step's activations and transient peaks: what autograd keeps for backward, and what exists
only for a moment on top of it.

Derived operation by operation from the transformers decoder block (norms, q/k/v with grouped-query
attention, SDPA or eager scores, the gated MLP, LoRA inputs and their dropout copies), each tensor
in the dtype it has (`lora_lab.lessons.step_memory.StepShape`), and checked against saved-tensor
hooks by `lora_lab.estimation.memory`:

- `layer_saved`: one decoder block, by component; `activation_terms`: the whole model, by term
  (with gradient checkpointing only each block's input is kept).
- `transient_bytes`: the logits and their fp32 copy at the loss, their gradients at the start of
  backward, one block recomputed under checkpointing, one dequantized 4-bit weight.
"""

from __future__ import annotations

from lora_lab.lessons.counting import lora_layer_params
from lora_lab.lessons.step_memory import StepShape


def source_widths(st: StepShape) -> dict[str, int]:
    """dtype width of each linear layer's input, by where it comes from."""
    return {"attn_in": st.residual_width, "mlp_in": st.residual_width, "attn_out": st.attention_width, "mlp_act": st.linear_out_width}


def norm_bytes(st: StepShape) -> int:
    """One block's norms: the fp32 input and 1/rms per token, plus the normalised tensor when the
    norm weight trains (in fp32 for Gemma, whose norm scales in fp32)."""
    arch, tokens, hidden = st.arch, st.tokens, st.arch.hidden_size
    xhat = 4 if arch.norm_saves_fp32_scaled else st.residual_width
    one = 4 * tokens * hidden + 4 * tokens + (xhat * tokens * hidden if st.method == "full" else 0)
    return arch.norms_per_layer * one + (2 * 4 * tokens * arch.q_dim if arch.qk_norm_params else 0)


def lora_input_bytes(st: StepShape) -> tuple[int, set]:
    """What each adapted layer's LoRA branch saves for backward, and the inputs it shares.

    peft computes `lora_B(lora_A(dropout(x.to(fp32))))`. On a 16-bit input the cast is a new
    fp32 tensor per adapted layer, and lora_A saves it: 4 bytes per input value, a copy per layer
    even when q, k and v read the same input (the *peft fp32 input cast*). Under autocast lora_A
    casts that copy back to 16-bit and saves the 16-bit one instead. Dropout saves its output and
    its mask (one byte per value on CUDA, the input's width on the CPU); lora_A then keeps the
    dropped-out copy (or autocast's 16-bit cast of it). lora_B saves lora_A's
    output (batch x seq x rank). On an fp32 input without dropout, lora_A saves the very tensor
    the base layer received, shared between layers that read it.
    """
    tokens, compute = st.tokens, st.compute_width
    widths = source_widths(st)
    total, shared = 0, set()
    for li in st.targets:
        if st.lora_dropout > 0:
            total += (1 if st.device == "cuda" else 4) * tokens * li.d_in  # the dropout mask (fp32 noise on the CPU)
            total += (compute if st.autocast else 4) * tokens * li.d_in  # lora_A's input: the dropped-out copy (16-bit
            # under autocast, which casts it again)
        elif st.autocast:
            total += compute * tokens * li.d_in  # autocast's 16-bit copy of peft's fp32 cast
        elif widths[li.source] != 4:
            total += 4 * tokens * li.d_in  # peft's fp32 cast of a 16-bit input, saved by lora_A
        else:
            shared.add(li.source)
        total += (compute if st.autocast else 4) * tokens * st.rank  # lora_A's output, saved by lora_B
    return total, shared


def attention_bytes(st: StepShape) -> tuple[int, bool]:
    """The attention core's saved tensors; and whether its saved output is o_proj's input."""
    arch, tokens, width = st.arch, st.tokens, st.attention_width
    q_dim, kv_dim, heads = arch.q_dim, arch.kv_dim, arch.num_heads
    gqa = arch.num_kv_heads != heads
    if st.eager_attention:
        kv_saved = 2 * q_dim if gqa else 2 * kv_dim  # repeat_kv copies, saved by the matmuls
        # fp32 softmax output, its copy in the attention dtype, the softcap's tanh output
        scores = st.batch_size * heads * st.seq_len * st.seq_len * (4 + (width if width != 4 else 0) + (width if arch.attn_softcap else 0))
        return width * tokens * (q_dim + kv_saved) + scores, False  # o_proj's input is a new, contiguous tensor
    kv_saved = 2 * q_dim if (st.padded and gqa) else 2 * kv_dim
    if arch.fused_qkv and not (st.autocast and st.linear_out_width != st.compute_width):
        kv_saved = kv_dim + (q_dim + 2 * kv_dim)  # v is a view into the fused qkv output: its whole storage stays
    return width * tokens * (q_dim + kv_saved) + width * tokens * q_dim + 4 * st.batch_size * heads * st.seq_len, True  # q, k, v, output, logsumexp


def weight_copy_bytes(st: StepShape) -> int:
    """Autocast's 16-bit copies of one block's fp32 matmul weights, saved for backward.

    Trainable fp32 weights (LoRA matrices, mixed-precision full fine-tuning) are cast once per
    forward and cached; frozen fp32 weights are cast at each use; both copies stay for backward.
    """
    if not st.autocast:
        return 0
    compute = st.compute_width
    base = 0 if st.method == "qlora" or st.weight_width == compute else sum(li.d_in * li.d_out for li in st.arch.linears)
    lora = sum(lora_layer_params(li.d_in, li.d_out, st.rank) for li in st.targets)
    return compute * (base + lora)


def layer_saved(st: StepShape) -> dict[str, int]:
    """Bytes one decoder block saves for backward without checkpointing, by component.

    Worked out from what each operation of the transformers block saves, with the dtype each
    tensor has (`StepShape`); checked against saved-tensor hooks by `lora_lab.estimation.memory`.
    """
    arch, tokens = st.arch, st.tokens
    full = st.method == "full"
    widths = source_widths(st)
    sizes = {"attn_in": arch.hidden_size, "attn_out": arch.q_dim, "mlp_in": arch.hidden_size,
             "mlp_act": arch.intermediate_size}
    out = {"norms": norm_bytes(st)}
    lora_in, shared = lora_input_bytes(st)
    casts = 0
    for li in arch.linears if full else ():  # a trainable weight's gradient needs its input
        if st.autocast and widths[li.source] != st.compute_width:
            casts += st.compute_width * tokens * li.d_in  # autocast's 16-bit copy, one per layer
        else:
            shared.add(li.source)
    attention, output_is_o_input = attention_bytes(st)
    if output_is_o_input:
        shared.discard("attn_out")
    out["lora_inputs"] = lora_in
    out["attention"] = attention
    out["mlp"] = 3 * st.linear_out_width * tokens * arch.intermediate_size  # gate pre-activation, activation, up
    out["linear_inputs"] = casts + sum(widths[src] * tokens * sizes[src] for src in shared)
    out["weight_copies"] = weight_copy_bytes(st)
    return out


def first_block_savings(st: StepShape) -> dict[str, int]:
    """What the first block does not save when its input needs no gradient.

    With a frozen embedding (LoRA, QLoRA) and no checkpointing (which would make the embedding
    output require grad), nothing upstream of the first block trains, so operations there that
    save tensors only to pass gradients on to their input save nothing: the first norm (its fp32
    input and 1/rms) and the dropout masks of the adapted layers that read it.
    """
    if st.method == "full" or st.checkpointing:
        return {}
    tokens, hidden = st.tokens, st.arch.hidden_size
    masks = sum((1 if st.device == "cuda" else 4) * tokens * li.d_in for li in st.targets if li.source == "attn_in")
    return {"norms": 4 * tokens * hidden + 4 * tokens, "lora_inputs": masks if st.lora_dropout > 0 else 0}


def head_weight_copy(st: StepShape) -> int:
    """Autocast's 16-bit copy of an fp32 output head (QLoRA, mixed), saved for backward."""
    return st.compute_width * st.arch.vocab_size * st.arch.hidden_size if st.autocast and st.weight_width != st.compute_width else 0


def activation_terms(st: StepShape) -> dict[str, int]:
    """Everything saved for backward at the end of the forward pass, by named term."""
    arch, tokens, hidden, vocab = st.arch, st.tokens, st.arch.hidden_size, st.arch.vocab_size
    full = st.method == "full"
    layer = layer_saved(st)
    terms = {}
    if st.checkpointing:
        terms["layer_inputs"] = arch.num_layers * st.residual_width * tokens * hidden  # each block's input, kept by the checkpoint
    else:
        first = first_block_savings(st)
        for name, value in layer.items():
            terms[f"layers.{name}"] = arch.num_layers * value - first.get(name, 0)
    terms["rope"] = 2 * st.seq_len * arch.head_dim * st.residual_width  # RoPE cos and sin, shared by every layer
    if st.padded:
        terms["mask"] = st.batch_size * st.seq_len * st.seq_len * (st.residual_width if st.eager_attention else 1)  # the 4-D attention mask
    xhat = 4 if arch.norm_saves_fp32_scaled else st.residual_width
    terms["final_norm"] = 4 * tokens * hidden + 4 * tokens + (xhat * tokens * hidden if full else 0)
    if full:  # lm_head saves its input only when its weight trains
        terms["head_input"] = (st.compute_width if st.autocast and st.residual_width != st.compute_width else st.residual_width) * tokens * hidden
    terms["head_weight_copy"] = head_weight_copy(st)
    terms["logprobs"] = 0 if st.fused_loss else 4 * tokens * vocab  # log_softmax output, fp32, kept for the loss's backward
    terms["logit_softcap"] = st.logits_width * tokens * vocab if arch.logit_softcap and not st.fused_loss else 0
    if st.fused_loss:  # the fused loss computes the head input's gradient in forward and keeps it, plus fp32 losses
        terms["fused_loss_grad"] = st.residual_width * tokens * hidden + 4 * tokens
    terms["ids"] = 8 * tokens * (2 if full else 1)  # labels for the loss (and input ids for a trainable embedding)
    return terms


def transient_bytes(st: StepShape) -> int:
    """The largest short-lived peak on top of the saved tensors.

    The logits and their fp32 copy at the loss (with checkpointing, autocast's cached weight
    copies are alive then too: the cache is emptied when the forward pass leaves autocast); the
    gradient of the log-probs and the logits at the start of backward; one block's recomputed
    activations under checkpointing plus its MLP gradients; one dequantized 4-bit weight.
    """
    arch, tokens, vocab = st.arch, st.tokens, st.arch.vocab_size
    layer_bytes = sum(layer_saved(st).values())
    logits_tokens = fused_chunk_tokens(tokens, arch.hidden_size, vocab) if st.fused_loss else tokens
    logits_fwd = st.logits_width * logits_tokens * vocab + (4 * logits_tokens * vocab if st.logits_width != 4 else 0)
    if st.checkpointing:
        logits_fwd += arch.num_layers * weight_copy_bytes(st)
    logits_bwd = 0 if st.fused_loss else 8 * tokens * vocab  # gradient of the log-probs and of the logits, both fp32
    layer_bwd = (layer_bytes if st.checkpointing else 0) + 2 * st.linear_out_width * tokens * max(arch.intermediate_size,
                                                                                         arch.hidden_size)
    dequant = st.compute_width * max(li.d_in * li.d_out for li in arch.linears) if st.method == "qlora" else 0
    peak = max(logits_fwd, logits_bwd, layer_bwd + dequant)
    if st.sharding == "fsdp":
        peak += arch.layer_params * st.weight_width  # one layer's weights gathered in full
    return peak


def fused_chunk_tokens(tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk of a fused linear cross-entropy: Liger Kernel's rule.

    Liger's `fused_linear_cross_entropy_forward` (github.com/linkedin/Liger-Kernel,
    src/liger_kernel/ops/fused_linear_cross_entropy.py; arXiv 2410.10989) picks the chunk so that one
    chunk's logits (chunk x vocabulary) are about as large as the head's input (tokens x hidden):
    next_power_of_2(ceil(tokens / ceil(vocabulary / hidden))), at most `tokens`.
    """
    inc_factor = -(-vocab_size // hidden_size)
    return min(tokens, 1 << max(0, (-(-tokens // inc_factor) - 1).bit_length()))
