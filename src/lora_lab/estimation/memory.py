"""Measure what one real training step holds in memory, in the estimator's categories.

`lora_lab.estimation.vram.estimate` predicts memory from a config; this module measures it, so every estimate
in the course can stand next to the number it predicts.

- On CUDA the step is bracketed by `torch.cuda.reset_peak_memory_stats()` and read back with
  `torch.cuda.max_memory_allocated()` (what our tensors needed at the worst moment) and
  `torch.cuda.max_memory_reserved()` (what the caching allocator took from the card: the figure
  that decides an out-of-memory error).
- On the CPU there is no allocator to ask, so each category is counted exactly instead:
  parameters (with bitsandbytes' 4-bit quantization states), gradients, optimizer state, and the
  tensors autograd saves for the backward pass, caught with
  `torch.autograd.graph.saved_tensors_hooks` and deduplicated by storage. With non-reentrant
  gradient checkpointing (the transformers default) the checkpointed layers save nothing through
  those hooks; what they keep instead is their inputs, which we record with a forward pre-hook on
  each checkpointed layer.

Deduplicating by storage matters: the same hidden-state tensor is saved by several operations
(the q, k and v projections all save their shared input), and a view shares its base's memory.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass

import torch

from lora_lab.runtime.units import GIB


@dataclass(frozen=True)
class MeasuredMemory:
    """Bytes one training step held, by category (same names as `vram.MemoryEstimate`)."""

    weights: int  # parameters, including 4-bit packed weights and their quantization states
    gradients: int  # .grad of every trainable parameter after backward
    optimizer_states: int  # every tensor in optimizer.state after the step (deduplicated)
    activations: int  # tensors saved for backward (and checkpoint inputs), deduplicated by storage
    total: int  # CUDA: peak reserved; CPU: the sum of the four categories above
    peak_allocated: int | None  # CUDA only: torch.cuda.max_memory_allocated() during the step
    peak_reserved: int | None  # CUDA only: torch.cuda.max_memory_reserved() during the step
    total_params: int  # parameter count, 4-bit weights counted as the values they hold
    trainable_params: int  # parameters with requires_grad
    loss: float  # the step's loss (a sanity check that the step really ran)
    device: str  # "cpu" or "cuda"

    def to_dict(self) -> dict:
        """The measurement as a plain dict (for CSV rows and JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        rows = [("weights", self.weights), ("gradients", self.gradients),
                ("optimizer states", self.optimizer_states), ("activations (saved)", self.activations)]
        if self.peak_allocated is not None:
            rows += [("peak allocated", self.peak_allocated), ("peak reserved", self.peak_reserved)]
        rows.append(("total", self.total))
        return "\n".join(f"{name:<20} {value / GIB:10.4f} GiB" for name, value in rows)


def _storage_key(t: torch.Tensor):
    """An identity for the memory behind a tensor (views of one buffer share it)."""
    try:
        storage = t.untyped_storage()
        return (t.device.type, storage.data_ptr(), storage.nbytes())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return (t.device.type, id(t), t.numel() * t.element_size())


def _quant_state_tensors(param) -> list[torch.Tensor]:
    """The tensors behind a bitsandbytes Params4bit's quant_state (absmax, code, nested state)."""
    state = getattr(param, "quant_state", None)
    out = []
    while state is not None:
        for name in ("absmax", "code", "offset"):
            value = getattr(state, name, None)
            if isinstance(value, torch.Tensor):
                out.append(value)
        state = getattr(state, "state2", None)
    return out


def parameter_count(param) -> int:
    """How many values a parameter holds: 4-bit weights are packed two per byte."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(math.prod(shape)) if shape is not None else param.numel()


def weight_storages(model) -> dict:
    """Storage key -> bytes for every parameter and 4-bit quantization state of `model`."""
    seen = {}
    for p in model.parameters():
        for t in (p, *_quant_state_tensors(p)):
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return seen


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameter counts, 4-bit weights counted as values (as peft prints them)."""
    total = trainable = 0
    for p in model.parameters():
        n = parameter_count(p)
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state, deduplicated by storage."""
    seen = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                seen[_storage_key(value)] = value.untyped_storage().nbytes()
    return sum(seen.values())


class SavedTensorRecorder:
    """Context manager that records every tensor autograd saves, keyed by storage.

    Also records the inputs of layers run under non-reentrant gradient checkpointing, since those
    are what checkpointing keeps instead of the layer's saved tensors. Parameters and quantization
    states are excluded: they are weights, not activations.
    """

    def __init__(self, model=None, exclude: dict | None = None):
        self.model = model
        self.exclude = set(exclude or {})
        self.saved: dict = {}  # storage key -> bytes
        self.labels: dict = {}  # storage key -> (shape, dtype) of the first tensor seen there
        self._handles = []
        self._hooks = None

    def _record(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        key = _storage_key(t)
        if key in self.exclude or key in self.saved:
            return
        self.saved[key] = t.untyped_storage().nbytes()
        self.labels[key] = (tuple(t.shape), str(t.dtype).replace("torch.", ""))

    def _pack(self, t):
        self._record(t)
        return t

    def _pre_hook(self, module, args, kwargs):
        if module.training and getattr(module, "gradient_checkpointing", False) and torch.is_grad_enabled():
            for value in (*args, *kwargs.values()):
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    self._record(t)

    def __enter__(self):
        if self.model is not None:
            from transformers.modeling_layers import GradientCheckpointingLayer

            for module in self.model.modules():
                if isinstance(module, GradientCheckpointingLayer):
                    self._handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    @property
    def total(self) -> int:
        return sum(self.saved.values())


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def measure_step(model, batch: dict, optimizer, autocast_dtype: torch.dtype | None = None) -> MeasuredMemory:
    """Run one real training step (forward, loss, backward, optimizer step) and measure its memory.

    Args:
        model: a causal LM in training mode (plain, peft-wrapped, or 4-bit), already on its device.
            It must return `.loss` when given `labels`.
        batch: `input_ids`, `attention_mask` and `labels` tensors; their padded length is the
            sequence length the estimate should be asked about.
        optimizer: the optimizer over the trainable parameters (states are created by this step).
        autocast_dtype: run the forward pass and the loss under `torch.autocast` in this dtype, as
            the Trainer does with `bf16=True` / `fp16=True` (backward runs outside it, as there).

    Returns:
        A `MeasuredMemory`. Activations are the bytes saved for backward at the end of the forward
        pass (what `vram.MemoryEstimate.activations` predicts); on CUDA the peaks are the real ones.

    Raises:
        ValueError: if the batch has no `labels` or the model has no trainable parameters.
    """
    if "labels" not in batch:
        raise ValueError("measure_step needs a batch with 'labels' so the model returns a loss.")
    total_params, trainable_params = count_parameters(model)
    if trainable_params == 0:
        raise ValueError("The model has no trainable parameters: attach LoRA adapters or unfreeze weights.")
    device = next(model.parameters()).device
    batch = _to_device(batch, device)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    weights = weight_storages(model)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with SavedTensorRecorder(model, exclude=weights) as recorder, autocast:
        loss = model(**batch).loss
    activations = recorder.total
    loss.backward()
    gradients = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    optimizer_states = optimizer_state_bytes(optimizer)
    peak_allocated = peak_reserved = None
    if cuda:
        torch.cuda.synchronize(device)
        peak_allocated = int(torch.cuda.max_memory_allocated(device))
        peak_reserved = int(torch.cuda.max_memory_reserved(device))
    weight_bytes = sum(weights.values())
    total = peak_reserved if cuda else weight_bytes + gradients + optimizer_states + activations
    result = MeasuredMemory(
        weights=int(weight_bytes),
        gradients=int(gradients),
        optimizer_states=int(optimizer_states),
        activations=int(activations),
        total=int(total),
        peak_allocated=peak_allocated,
        peak_reserved=peak_reserved,
        total_params=total_params,
        trainable_params=trainable_params,
        loss=float(loss.detach()),
        device=device.type,
    )
    optimizer.zero_grad(set_to_none=True)
    return result


def saved_tensor_report(model, batch: dict, top: int = 20) -> list[tuple[tuple, str, int]]:
    """The largest tensors one forward pass saves for backward: (shape, dtype, bytes), biggest first.

    A teaching aid: it shows where activation memory goes (logits, attention scores, MLP inputs).
    """
    device = next(model.parameters()).device
    model.train()
    with SavedTensorRecorder(model, exclude=weight_storages(model)) as recorder:
        _ = model(**_to_device(batch, device)).loss
    rows = [(*recorder.labels[k], n) for k, n in recorder.saved.items()]
    return sorted(rows, key=lambda r: -r[2])[:top]


# --------------------------------------------------------------------------------------------
# Building a model to measure: the course's recipe on a random-weight model from a config
# --------------------------------------------------------------------------------------------


def shrink_config(config: dict, *, layers: int = 2, width_divisor: int = 1, vocab_divisor: int = 1) -> dict:
    """A smaller copy of a config.json dict that keeps the block's structure.

    Depth becomes `layers`; widths (hidden, intermediate, head_dim) are divided by `width_divisor`
    and the vocabulary by `vocab_divisor`, while head counts, grouped-query ratios, biases, norms,
    fused projections and tying stay as they are. Used to measure real architectures on a CPU.
    """
    cfg = dict(config)
    cfg["num_hidden_layers"] = layers
    if width_divisor > 1:
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        new_head_dim = max(8, head_dim // width_divisor)
        if "head_dim" in cfg or cfg["hidden_size"] != heads * head_dim:
            cfg["head_dim"] = new_head_dim
            cfg["hidden_size"] = max(16, cfg["hidden_size"] // width_divisor)
        else:
            cfg["hidden_size"] = heads * new_head_dim
        cfg["intermediate_size"] = max(16, cfg["intermediate_size"] // width_divisor)
        if cfg.get("query_pre_attn_scalar"):
            cfg["query_pre_attn_scalar"] = new_head_dim
    if vocab_divisor > 1:
        cfg["vocab_size"] = max(64, cfg["vocab_size"] // vocab_divisor)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(key), int) and cfg[key] >= cfg["vocab_size"]:
            cfg[key] = cfg["vocab_size"] - 1
    if cfg.get("max_window_layers") is not None:
        cfg["max_window_layers"] = layers
    return cfg


@contextlib.contextmanager
def _no_progress_bars():
    """Silence transformers' load/save progress bars (throwaway models need none)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def build_training_model(
    config: dict,
    method: str,
    *,
    rank: int = 16,
    target_modules="all-linear",
    lora_dropout: float = 0.0,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    optimizer: str = "adamw",
    double_quant: bool = True,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
    workdir: str | None = None,
    model_path: str | None = None,
):
    """A causal LM set up exactly as the course trains it, and its optimizer.

    The weights are random (built from `config`) unless `model_path` names a saved model, such as
    the cpu profile's tiny Llama: memory does not depend on the values of the weights.

    full: every weight trains. lora: frozen base plus peft adapters. qlora: the base saved and
    reloaded through `BitsAndBytesConfig` (NF4), then `prepare_model_for_kbit_training`
    (non-quantized weights to fp32) and peft adapters. Gradient checkpointing is the transformers
    default (non-reentrant).

    Args:
        config: a config.json dict (e.g. `lora_lab.estimation.vram.preset_config(...)`, shrunk with
            `shrink_config`).
        model_path: a folder saved with `save_pretrained` to load instead of random weights.
        dtype: the dtype the base model is loaded in (peft keeps LoRA matrices in fp32 regardless).
        compute_dtype: QLoRA's `bnb_4bit_compute_dtype` (default: `dtype`).
        method: "full", "lora" or "qlora".
        optimizer: "adamw" (torch), "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"
            (bitsandbytes) or "sgd".

    Returns:
        (model, optimizer)
    """
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"Unknown method {method!r}: choose full, lora or qlora.")
    torch.manual_seed(seed)
    if config.get("model_type") == "gemma2" and attention == "sdpa":
        attention = "eager"  # transformers has no SDPA path for Gemma-2 (softcapped scores)
    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if not k.startswith("_")})
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        from lora_lab.training.models import bnb_config
        with _no_progress_bars(), tempfile.TemporaryDirectory(dir=workdir) as tmp:
            if model_path is None:
                AutoModelForCausalLM.from_config(cfg, dtype=dtype).save_pretrained(tmp)
            quant = bnb_config(compute_dtype=compute_dtype or dtype, double_quant=double_quant)
            model = AutoModelForCausalLM.from_pretrained(model_path or tmp, quantization_config=quant,
                                                         dtype=dtype, attn_implementation=attention,
                                                         device_map=device)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif model_path is not None:
        with _no_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attention)
        model = model.to(device)
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attention).to(device)
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if method != "full":
        from peft import LoraConfig, get_peft_model

        if gradient_checkpointing and method == "lora":
            model.enable_input_require_grads()
        with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules,
                                                     lora_dropout=lora_dropout, task_type="CAUSAL_LM"))
    model.train()
    return model, make_optimizer(model, optimizer)


def make_optimizer(model, name: str, lr: float = 1e-4):
    """The optimizer the course's trainer builds for `name`, built by the Trainer's own name lookup.

    `name` is an estimator name ("adamw", "sgd") or a transformers `optim` name ("adamw_8bit",
    "paged_adamw_8bit", "paged_adamw_32bit", ...); "adamw" is transformers' "adamw_torch".
    """
    import tempfile

    from transformers import Trainer, TrainingArguments

    optim = {"adamw": "adamw_torch"}.get(name, name)  # the estimator's name for torch's AdamW
    params = [p for p in model.parameters() if p.requires_grad]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            args = TrainingArguments(output_dir=tmp, optim=optim, learning_rate=lr, report_to="none")
        except ValueError as err:
            raise ValueError(f"Unknown optimizer {name!r}: choose adamw, adamw_8bit, paged_adamw_8bit, "
                             "paged_adamw_32bit or sgd.") from err
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(params, **kwargs)


def random_batch(vocab_size: int, batch_size: int, seq_len: int, *, pad_last: int = 0, seed: int = 0) -> dict:
    """A batch of random token ids, labels equal to the inputs.

    `pad_last` pads the end of every sequence but the first by that many tokens (masked and
    label -100), so a batch of several sequences carries an attention mask as a padded batch does.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    if pad_last and batch_size > 1:
        mask[1:, seq_len - pad_last:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


#: The categories compared between estimate and measurement.
CATEGORIES = ("weights", "gradients", "optimizer_states", "activations")


def compare(config: dict, method: str, *, batch_size: int, seq_len: int, gradient_checkpointing: bool,
            rank: int = 16, target_modules="all-linear", optimizer: str = "adamw", attention: str = "sdpa",
            lora_dropout: float = 0.0, pad_last: int | None = None, seed: int = 0, model_path: str | None = None,
            device: str = "cpu", dtype: torch.dtype = torch.float32, precision: str | None = None,
            autocast: bool = True) -> dict:
    """Measure one real training step and put the estimate beside it.

    On the CPU (fp32) every category is counted exactly. On CUDA the row also carries the
    measured peaks (`measured_peak_allocated`, `measured_peak_reserved`) next to the estimate's
    `peak_allocated` and `reserved`.

    Precision: `precision` is the estimator's ("fp32", "bf16", "fp16" or "mixed"); without it,
    `dtype` picks it. "bf16"/"fp16" load the base in that dtype (peft keeps the adapters in fp32)
    and, with `autocast` (the default, as the Trainer does it), run forward and loss under
    `torch.autocast`; `autocast=False` is pure 16-bit loading. "mixed" keeps fp32 weights and
    autocasts to bf16.

    Batches of more than one sequence are padded (the second sequence is shorter by
    `pad_last` tokens, default seq_len // 8), as real batches are.

    Returns:
        A flat dict: the settings, `measured_<category>`, `predicted_<category>` and
        `error_<category>` (relative: predicted / measured - 1) for each of `CATEGORIES`, the
        parameter counts from the model and from the estimate, and the seconds the step took.
    """
    import time

    from lora_lab.estimation import vram

    t0 = time.perf_counter()
    if precision is None:
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    compute = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "mixed": torch.bfloat16}[precision]
    load_dtype = torch.float32 if precision == "mixed" else compute
    autocast = precision == "mixed" or (autocast and precision != "fp32")
    model, opt = build_training_model(config, method, rank=rank, target_modules=target_modules,
                                      lora_dropout=lora_dropout, gradient_checkpointing=gradient_checkpointing,
                                      attention=attention, optimizer=optimizer, seed=seed, model_path=model_path,
                                      device=device, dtype=load_dtype, compute_dtype=compute)
    batch = random_batch(config["vocab_size"], batch_size, seq_len,
                         pad_last=seq_len // 8 if pad_last is None else pad_last, seed=seed)
    measured = measure_step(model, batch, opt, autocast_dtype=compute if autocast else None)
    est = vram.estimate(config, method=method, rank=rank, target_modules=target_modules, batch_size=batch_size,
                        seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, optimizer=optimizer,
                        precision=precision, autocast=autocast, attention=attention, lora_dropout=lora_dropout,
                        device="cuda" if device == "cuda" else "cpu")
    row = dict(model=config.get("_name_or_path", config.get("model_type")), method=method, rank=rank,
               precision=precision, autocast=autocast,
               gradient_checkpointing=gradient_checkpointing, seq_len=seq_len, batch_size=batch_size,
               optimizer=optimizer, attention=attention, lora_dropout=lora_dropout,
               measured_total_params=measured.total_params, predicted_total_params=est.total_params,
               measured_trainable_params=measured.trainable_params, predicted_trainable_params=est.trainable_params)
    for cat in CATEGORIES:
        m, p = getattr(measured, cat), getattr(est, cat)
        row[f"measured_{cat}"] = m
        row[f"predicted_{cat}"] = p
        row[f"error_{cat}"] = (p / m - 1) if m else (0.0 if p == 0 else float("inf"))
    if measured.peak_allocated is not None:
        row.update(measured_peak_allocated=measured.peak_allocated, predicted_peak_allocated=est.peak_allocated,
                   measured_peak_reserved=measured.peak_reserved, predicted_reserved=est.reserved)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    del model, opt
    return row
