"""One training step's memory by category: the model's shape and the step's settings in, bytes out.

This is the story notebook 01 tells, one function per category (`lora_lab.estimation.vram.estimate`
validates its arguments, builds a `StepShape` and adds these up):

- **weights** (`weight_bytes`): every parameter at its storage width. QLoRA stores each decoder
  linear weight in NF4 as bitsandbytes does (`lora_lab.lessons.counting.storage_bits`); the rest
  (embeddings, norms, output head, biases) is upcast to fp32; LoRA matrices are fp32 (peft's default).
- **gradients** (`gradient_bytes`): one per trainable value, in the trainable parameter's dtype.
- **optimizer states** (`optimizer_state_bytes`): AdamW's two moments per trainable value, or
  bitsandbytes' 8-bit states (two bytes plus block scales), or none for plain SGD.
- **activations** and **transient** peaks: `lora_lab.lessons.activation_memory`.
- **overhead** (`overhead_terms`): the CUDA context, a freed logits block the allocator cannot
  reuse, and the allocator's slack.

Widths are bytes per value (4 for fp32, 2 for bf16/fp16); `StepShape` says which dtype each kind
of tensor has in the course's recipe, and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_lab.lessons.counting import lora_layer_params, storage_bits
from lora_lab.lessons.model_shape import Arch, Linear, full_param_sizes

#: bitsandbytes 8-bit optimizers: one fp32 absmax per 256 values of each state.
OPT8_BLOCKSIZE = 256
#: bitsandbytes 8-bit optimizers keep 32-bit states for tensors smaller than this.
OPT8_MIN_SIZE = 4096
#: The two shared 256-entry fp32 quantization maps of bitsandbytes' 8-bit optimizers.
OPT8_QMAP_BYTES = 2 * 256 * 4
#: CUDA context, kernels and cuBLAS workspace: memory the driver takes before any tensor. An
#: assumed 0.5 GiB (reports range from about 0.3 to 1.3 GB by GPU and library versions). The
#: published points shipped in `published_memory.json` cannot separate it from the static memory,
#: so the tests check only that totals including it stay within those points' bounds.
CUDA_CONTEXT_BYTES = 512 * 2**20
#: The caching allocator reserves more than it allocates (block rounding, fragmentation): this
#: share of the step's dynamic memory (activations and transients) is added. Calibrated on the
#: published Unsloth line (`lora_lab.estimation.published`): its slope in bytes per token, against the
#: estimate's slope without slack, implies 6.4% (tests/test_vram.py recomputes it).
ALLOCATOR_SLACK = 0.06


@dataclass(frozen=True)
class StepShape:
    """One training step's settings, resolved: everything the per-category functions read.

    The widths (bytes per value) say which dtype each kind of tensor has in the course's recipe.
    They differ by method and precision because three libraries each pick a dtype:
    `prepare_model_for_kbit_training` upcasts every non-4-bit weight of a QLoRA model to fp32 (so
    its embeddings, norms and residual stream are fp32); bitsandbytes' 4-bit layers compute in the
    compute dtype but return their input's dtype; peft keeps the LoRA matrices in fp32 and casts
    each adapted layer's input to fp32 before them. Autocast (the Trainer's `bf16=True` /
    `fp16=True`) then runs every matmul in 16-bit, casting whatever it gets.
    """

    arch: Arch  # the model
    method: str  # "full", "lora" or "qlora"
    targets: tuple[Linear, ...]  # the adapted linear layers of one block (empty for full)
    rank: int  # LoRA rank
    batch_size: int  # sequences per micro-step
    seq_len: int  # padded sequence length
    precision: str  # "fp32", "bf16", "fp16" or "mixed"
    autocast: bool  # forward and loss run under torch.autocast in the 16-bit compute dtype
    checkpointing: bool  # gradient checkpointing (only each block's input kept)
    optimizer: str  # OPTIMIZERS entry
    double_quant: bool  # QLoRA double quantization
    eager_attention: bool  # eager attention (seq x seq scores materialised) instead of SDPA
    lora_dropout: float  # LoRA dropout probability
    num_gpus: int  # GPUs the step runs on
    sharding: str | None  # None or "fsdp"
    device: str  # "cuda" or "cpu"
    fused_loss: bool = False  # chunked/fused linear cross-entropy: no batch x seq x vocab logits at once

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def compute_width(self) -> int:
        """Width of the compute dtype: 2 for bf16/fp16 (and mixed), 4 for fp32."""
        return 4 if self.precision == "fp32" else 2

    @property
    def weight_width(self) -> int:
        """Width of the non-quantized model weights (QLoRA: upcast to fp32 by peft)."""
        return 4 if self.precision in ("fp32", "mixed") or self.method == "qlora" else 2

    @property
    def residual_width(self) -> int:
        """Width of the residual stream and the norms' outputs: the embedding's dtype."""
        return self.weight_width

    @property
    def linear_out_width(self) -> int:
        """Width of a base linear layer's output. bitsandbytes' 4-bit layers cast their output back
        to the input's dtype (fp32 in QLoRA); otherwise autocast's dtype, else the weights'."""
        if self.method == "qlora":
            return self.residual_width
        return self.compute_width if self.autocast else self.weight_width

    @property
    def attention_width(self) -> int:
        """Width of the tensors the attention saves (autocast casts q, k, v to 16-bit)."""
        return self.compute_width if self.autocast else self.linear_out_width

    @property
    def logits_width(self) -> int:
        """Width of the output head's logits (before the loss's fp32 copy)."""
        return self.compute_width if self.autocast else self.weight_width

    @property
    def padded(self) -> bool:
        """Several sequences are padded to the longest, so SDPA gets a mask."""
        return self.batch_size > 1


# ---- parameters, weights, gradients, optimizer states ---------------------------------------


def lora_total_params(st: StepShape) -> int:
    """LoRA parameters of the whole model: r * (d_in + d_out) per adapted layer and block."""
    return st.arch.num_layers * sum(lora_layer_params(li.d_in, li.d_out, st.rank) for li in st.targets)


def trainable_sizes(st: StepShape) -> list[int]:
    """The size of every trainable tensor (the optimizer's view of the model)."""
    if st.method == "full":
        return full_param_sizes(st.arch)
    return [n for li in st.targets for n in (st.rank * li.d_in, st.rank * li.d_out)] * st.arch.num_layers


def weight_bytes(st: StepShape) -> int:
    """Every parameter at its storage width: 16/32-bit base, NF4 blocks for QLoRA, fp32 LoRA."""
    arch = st.arch
    lora = 4 * lora_total_params(st)  # peft keeps adapters in fp32
    if st.method == "full":
        return arch.total_params * st.weight_width
    if st.method == "lora":
        return arch.total_params * st.weight_width + lora
    linear_weights = arch.num_layers * sum(li.d_in * li.d_out for li in arch.linears)
    quant = arch.num_layers * sum(storage_bits(li.d_in * li.d_out, double_quant=st.double_quant).bytes for li in arch.linears)
    rest = arch.total_params - linear_weights  # embeddings, norms, head, biases
    return quant + 4 * rest + lora  # prepare_model_for_kbit_training upcasts the rest to fp32


def gradient_bytes(st: StepShape) -> int:
    """One gradient per trainable value, in the trainable parameter's dtype."""
    width = st.weight_width if st.method == "full" else 4
    return sum(trainable_sizes(st)) * width


def optimizer_state_bytes(st: StepShape) -> int:
    """AdamW's two moments (or 8-bit blocks, or none for SGD) for every trainable tensor."""
    sizes = trainable_sizes(st)
    states = optimizer_bytes(sizes, st.optimizer, st.weight_width if st.method == "full" else 4)
    if st.device == "cpu" and st.optimizer == "adamw":
        states += 4 * len(sizes)  # torch keeps each step count as an fp32 tensor on the CPU
    return states


def optimizer_bytes(sizes: list[int], optimizer: str, state_dtype_bytes: int) -> int:
    """Optimizer state bytes for trainable tensors of the given sizes."""
    if optimizer == "sgd":
        return 0
    if optimizer in ("adamw", "paged_adamw_32bit"):
        width = state_dtype_bytes if optimizer == "adamw" else 4
        return sum(2 * width * n for n in sizes)
    total, any8 = 0, False
    for n in sizes:
        if n < OPT8_MIN_SIZE:
            total += 2 * 4 * n
        else:
            any8 = True
            total += 2 * n + 2 * 4 * (-(-n // OPT8_BLOCKSIZE))
    return total + (OPT8_QMAP_BYTES if any8 else 0)


def overhead_terms(st: StepShape, activations: int, transient: int) -> dict[str, int]:
    """What the card holds beyond the step's tensors, by cause.

    - cuda_context: the driver's context, kernels and cuBLAS workspace (`CUDA_CONTEXT_BYTES`).
    - logits_block: the caching allocator keeps a freed block for reuse but cannot hand a block
      to a larger request. The 16-bit logits (batch x seq x vocab) are freed before backward, and
      the fp32 gradients of the log-probs and logits that follow are twice their size: when that
      moment is the step's peak, the 16-bit block is still reserved beside them.
    - allocator_slack: rounding and fragmentation on everything else (`ALLOCATOR_SLACK` of the
      dynamic memory).
    """
    logits = st.tokens * st.arch.vocab_size
    block = st.logits_width * logits if st.logits_width != 4 else 0
    at_loss = 8 * logits + block  # reserved at the start of backward: both fp32 gradients and the old block
    if st.fused_loss:  # one chunk of logits at a time: no full-size block to strand
        at_loss = 0
    return {"cuda_context": CUDA_CONTEXT_BYTES, "logits_block": max(0, at_loss - transient),
            "allocator_slack": int(ALLOCATOR_SLACK * (activations + transient))}


def shard(value: int, st: StepShape) -> int:
    """Per-GPU share of weights, gradients or optimizer states under FSDP."""
    return -(-value // st.num_gpus) if st.sharding == "fsdp" else value


def ddp_bucket_bytes(st: StepShape) -> int:
    """DDP on several GPUs without sharding: its reducer copies the gradients into flat buckets for the
    all-reduce, one more gradient's worth per GPU (PyTorch's DistributedDataParallel documents that
    `gradient_as_bucket_view=True`, off by default, saves exactly the total gradients size)."""
    return gradient_bytes(st) if st.num_gpus > 1 and st.sharding is None else 0
