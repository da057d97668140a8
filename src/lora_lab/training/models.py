"""Load a base model ready for PEFT, attach LoRA, and reload or merge a trained adapter.

The three methods the course compares:

- ``"qlora"``: the base's linear weights stored in 4-bit NF4 with double quantization
  (`BitsAndBytesConfig`), the rest upcast to fp32 by `prepare_model_for_kbit_training`, LoRA
  matrices in fp32 on top. Compute happens in the dtype the hardware calls for.
- ``"lora"``: a 16-bit frozen base (fp32 on the CPU) with the same LoRA matrices.
- ``"full"``: every weight trains, kept in fp32 with mixed-precision autocast on a GPU.

The dtype is decided by compute capability (`lora_lab.runtime.hardware`), never by
`torch.cuda.is_bf16_supported()`: fp16 on a T4 (7.5), bf16 from 8.0 up, fp32 on the CPU. The
decision (`decide_precision`) is kept apart from what this process can execute, so a test can check
"a T4 gets fp16" on a machine without a GPU and still train (in fp32) there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lora_lab.runtime import hardware, units
from lora_lab.runtime.compat import keep_cpu_4bit_layout
from lora_lab.runtime.hub import hub_errors
from lora_lab.standins import tiny
from lora_lab.training import train_cli

#: Fine-tuning methods: 4-bit base + LoRA, 16-bit base + LoRA, every weight trains.
METHODS = train_cli.METHODS  # one home: the command line's choices, importable without torch
#: Largest |merged - unmerged| logit difference accepted, by compute dtype, relative to the logits'
#: scale (the largest |logit|, at least 1): fp16 has ~3 significant digits, bf16 ~2; fp32 differs by
#: summation order only, which grows with depth (SmolLM2-135M, 30 layers, logits up to ~30: 1.1e-4 measured).
MERGE_TOLERANCE = {"float32": 2e-5, "float16": 2e-2, "bfloat16": 6e-2}
#: Pad tokens tried, in order, when a tokenizer has none or pads with its eos token.
PAD_CANDIDATES = ("<|pad|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "<unk>")


def check_method(method: str) -> str:
    """Return `method` if it is one of METHODS, else raise a ValueError listing them."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    return method


@dataclass(frozen=True)
class Precision:
    """The numeric formats of one run: what the hardware calls for, and what this process runs."""

    decided: str  # "float16" (T4), "bfloat16" (capability >= 8.0) or "float32" (CPU): hardware's choice
    executed: str  # what this process computes in: `decided`, or "float32" when no CUDA device is here
    fp16: bool  # SFTConfig.fp16: fp16 autocast with a gradient scaler (T4)
    bf16: bool  # SFTConfig.bf16: bf16 autocast (Ampere and newer); never left to trl's default (True)
    load_dtype: str  # dtype the non-4-bit weights are loaded in ("float32" for full fine-tuning)
    bnb_compute_dtype: str  # bnb_4bit_compute_dtype for QLoRA: the dtype 4-bit matmuls run in
    note: str  # one sentence for the learner

    @property
    def torch_load_dtype(self) -> torch.dtype:
        return getattr(torch, self.load_dtype)

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.executed)

    def to_dict(self) -> dict:
        return asdict(self)


def decide_precision(hw: hardware.Hardware, method: str = "qlora", on_device: bool | None = None) -> Precision:
    """Pick the run's dtypes from the hardware reading, by compute capability.

    Args:
        hw: a `hardware.detect()` reading (tests pass a T4 or an A100 record).
        method: "qlora", "lora" or "full". Full fine-tuning keeps fp32 weights and autocasts, so
            the gradient scaler never has to unscale fp16 gradients (a classic T4 crash).
        on_device: whether the CUDA device of `hw` is really usable in this process; None asks torch.
            With False (a T4 reading on a CPU-only test machine) the decision is recorded but the
            run executes in fp32.

    Returns:
        A `Precision` record.
    """
    check_method(method)
    decided = hardware.compute_dtype_for(hw.device_type, hw.compute_capability)
    if on_device is None:
        on_device = hw.device_type == "cuda" and torch.cuda.is_available()
    executed = decided if on_device else "float32"
    if decided != executed:
        note = (f"{hw.gpu_name or hw.device_type} calls for {decided}; no CUDA device in this process, so it "
                "runs in float32 here.")
    elif executed == "float16":
        note = ("fp16 mixed precision: capability "
                f"{hw.compute_capability[0]}.{hw.compute_capability[1]} has no native bf16.")
    elif executed == "bfloat16":
        note = "bf16 mixed precision: this GPU runs bf16 natively."
    else:
        note = "fp32 on the CPU: no mixed precision."
    return Precision(
        decided=decided,
        executed=executed,
        fp16=executed == "float16",
        bf16=executed == "bfloat16",
        load_dtype="float32" if method == "full" else executed,
        bnb_compute_dtype=executed,
        note=note,
    )


def simulated_gpu(name: str = "Tesla T4", capability: tuple[int, int] = (7, 5),
                  total_bytes: int | None = None) -> hardware.Hardware:
    """A hardware reading for a GPU this machine may not have (default: a Colab T4, 14.74 GiB).

    For preflights, estimates and explanations; nothing runs on it.
    """
    from lora_lab.estimation import vram

    total = total_bytes if total_bytes is not None else vram.GPUS["Colab T4"].usable_bytes
    return hardware.Hardware(
        device_type="cuda", gpu_name=name, gpu_total_bytes=total, gpu_free_bytes=total,
        compute_capability=capability, native_bf16=hardware.has_native_bf16("cuda", capability),
        compute_dtype=hardware.compute_dtype_for("cuda", capability), in_colab=False, disk_free_bytes=0,
        ram_total_bytes=None, ram_available_bytes=None,
    )


def hardware_for(profile, detected=None) -> hardware.Hardware:
    """The hardware reading a run of `profile` plans with: this machine's, or in a rehearsal a Colab T4's.

    A rehearsal takes every decision a T4 would (fp16 from compute capability 7.5, the preflight
    against 14.74 GiB) and executes on this CPU in fp32 (`lora_lab.training.models.decide_precision`).

    Args:
        profile: the run profile (`lora_lab.runtime.profiles`); its `rehearsal` flag decides.
        detected: this machine's reading if the caller has one (else `hardware.detect()`).
    """
    if profile.rehearsal:
        return simulated_gpu()
    return detected if detected is not None else hardware.detect()


def precision_for(device_type: str, capability: tuple[int, int] | None, method: str = "qlora") -> Precision:
    """The `Precision` a run would use on a given device, e.g. ``precision_for("cuda", (7, 5))`` for a T4.

    For estimates and explanations on a machine that is not that device (nothing is executed).
    """
    if device_type != "cuda":
        cpu = dataclasses.replace(simulated_gpu(), device_type="cpu", gpu_name=None, gpu_total_bytes=None,
                                  gpu_free_bytes=None, compute_capability=None, native_bf16=False,
                                  compute_dtype="float32")
        return decide_precision(cpu, method, on_device=False)
    return decide_precision(simulated_gpu("GPU", capability), method, on_device=True)


def bnb_config(precision: Precision | None = None, quant_storage: torch.dtype | None = None, *,
               compute_dtype: torch.dtype | None = None, double_quant: bool = True):
    """The course's `BitsAndBytesConfig` (the one place that builds it): NF4, double quantization,
    compute in the run's dtype.

    Args:
        precision: from `decide_precision` (gives the compute dtype).
        quant_storage: `bnb_4bit_quant_storage`; FSDP needs the packed 4-bit weights stored in the
            same dtype as the other parameters so it can flatten them together. None keeps uint8.
        compute_dtype: the compute dtype when there is no `precision` (memory measurements).
        double_quant: quantize the absmax scales too (the course's default; the estimator's
            comparisons switch it off to measure what it saves).
    """
    from transformers import BitsAndBytesConfig

    if compute_dtype is None:
        if precision is None:
            raise ValueError("bnb_config needs a precision or a compute_dtype.")
        compute_dtype = getattr(torch, precision.bnb_compute_dtype)
    kwargs = {}
    if quant_storage is not None:
        kwargs["bnb_4bit_quant_storage"] = quant_storage
    return BitsAndBytesConfig(
        load_in_4bit=True,  # linear weights in 4 bits
        bnb_4bit_quant_type="nf4",  # NormalFloat4 levels (QLoRA paper), not plain FP4
        bnb_4bit_use_double_quant=double_quant,  # quantize the absmax scales too: ~0.37 bit/param saved
        bnb_4bit_compute_dtype=compute_dtype,  # dequantize to this for matmuls
        **kwargs,
    )


def ensure_pad_token(tokenizer, model=None) -> str:
    """Make sure the tokenizer pads with a token that is not its eos; return the pad token.

    A model whose pad is its eos has its eos labels masked with the padding and never learns to stop
    (pain point 6). We reuse an existing non-eos special token when there is one, otherwise add
    ``<|pad|>`` and grow the model's embeddings by one row.

    Raises:
        ValueError: if the tokenizer has no eos token at all.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token: generation could never stop. Set tokenizer.eos_token "
                         "to the token that ends an assistant turn in its chat template.")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return candidate
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.pad_token


def set_cpu_threads(profile, hw: hardware.Hardware | None = None) -> int:
    """Apply `profile.cpu_threads` to torch on a CPU run; return the thread count in use.

    The tiny model's matrices are so small that each matmul takes microseconds; with several
    threads, every operation waits for the others to synchronise, and on a busy machine that wait
    is a scheduler time slice (~10 ms). One thread made the cpu profile's training step about
    15x faster on a shared 2-core machine (measured for this course). GPU runs are left alone.
    """
    threads = profile.cpu_threads
    on_gpu = hw is not None and hw.device_type == "cuda" and torch.cuda.is_available()
    if threads and not on_gpu and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _device_map(precision: Precision):
    """Put the whole model on this process's GPU (DDP: one per process); None on the CPU."""
    if precision.executed == "float32" and not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def uses_fsdp() -> bool:
    """True when accelerate launched us with FSDP (it exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def load_model_and_tokenizer(profile, method: str = "qlora", hw: hardware.Hardware | None = None,
                             model_path: str | os.PathLike | None = None, *, for_training: bool = True,
                             fsdp: bool | None = None):
    """Load the tokenizer and a base model ready for PEFT.

    Args:
        profile: a `RunProfile`; its `model_id` is resolved to the tiny model's folder for `cpu`.
        method: "qlora" (4-bit NF4 base with double quantization, then
            `prepare_model_for_kbit_training`), "lora" (16-bit base on a GPU, fp32 on the CPU) or
            "full" (fp32 base, every parameter trainable).
        hw: a hardware reading; `hardware.detect()` when None.
        model_path: a local folder or Hub id that overrides `profile.model_id` (tests use stand-ins).
        for_training: False skips `prepare_model_for_kbit_training` and gradient checkpointing
            (for evaluation-only loads; the numerics of the frozen base are the same either way
            on the CPU, and the adapter reload uses True to match the trained model exactly).
        fsdp: store 4-bit weights in the compute dtype (`bnb_4bit_quant_storage`) so FSDP can shard
            them; None detects an FSDP launch by accelerate.

    Returns:
        (model, tokenizer). The model carries its `Precision` as `model.lora_lab_precision`.

    Raises:
        ValueError: for an unknown method or a tokenizer without eos.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_method(method)
    hw = hw or hardware.detect()
    precision = decide_precision(hw, method)
    set_cpu_threads(profile, hw)
    path = str(model_path) if model_path is not None else tiny.resolve_model_path(profile.model_id)
    with hub_errors(path, "model"):  # one line saying what to do when the Hub cannot serve it
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left itself
    kwargs = {"dtype": precision.torch_load_dtype, "device_map": _device_map(precision)}
    fsdp = uses_fsdp() if fsdp is None else fsdp
    if method == "qlora":
        storage = precision.torch_compute_dtype if fsdp else None
        kwargs["quantization_config"] = bnb_config(precision, quant_storage=storage)
    with hub_errors(path, "model"):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    ensure_pad_token(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            # peft 0.19 would enable checkpointing through transformers' deprecated
            # `gradient_checkpointing_enable` (a FutureWarning in 5.24, gone in v6): call the current API.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            if profile.gradient_checkpointing:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if method == "qlora":
        keep_cpu_4bit_layout(model)
    model.lora_lab_precision = precision
    model.lora_lab_method = method
    return model, tokenizer


def lora_config(profile, r: int | None = None, alpha: int | None = None, targets=None, dropout: float | None = None,
                use_rslora: bool = False):
    """The `peft.LoraConfig` of a profile, with optional overrides.

    Args:
        profile: a `RunProfile` (lora_r, lora_alpha, lora_targets, lora_dropout).
        r: LoRA rank (default `profile.lora_r`).
        alpha: scale numerator; the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA).
        targets: "all-linear" (every linear layer except the output head) or module names.
        dropout: dropout on the adapted layers' inputs.
        use_rslora: rank-stabilised scaling alpha / sqrt(r) (arXiv 2312.03732).
    """
    from peft import LoraConfig

    targets = profile.lora_targets if targets is None else targets
    return LoraConfig(
        r=profile.lora_r if r is None else r,  # rank of the update B @ A
        lora_alpha=profile.lora_alpha if alpha is None else alpha,  # scale numerator
        lora_dropout=profile.lora_dropout if dropout is None else dropout,  # on the adapted inputs
        target_modules=targets if isinstance(targets, str) else list(targets),  # which layers get adapters
        bias="none",  # biases stay frozen
        task_type="CAUSAL_LM",  # a PeftModelForCausalLM wrapper (generate, save, merge)
        use_rslora=use_rslora,  # alpha / sqrt(r) instead of alpha / r
    )


def attach_lora(model, config, seed: int = 0):
    """Wrap `model` with fresh LoRA adapters, initialised from `seed` (same seed, same A matrices)."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)
    precision = getattr(model, "lora_lab_precision", None)
    method = getattr(model, "lora_lab_method", None)
    peft_model = get_peft_model(model, config)
    peft_model.lora_lab_precision = precision
    peft_model.lora_lab_method = method
    return peft_model


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def carries_lora(model) -> bool:
    """True when LoRA layers sit inside `model`: peft adds them in place, so the base model a run started
    from carries them too once it has been trained (notebook 03 uses this to keep a finished run)."""
    return any(hasattr(module, "lora_A") for module in model.modules())


# ---------------------------------------------------------------------------------------------
# Saving, reloading and merging adapters


def folder_bytes(path: str | os.PathLike, pattern: str = "*") -> int:
    """Total size in bytes of the files under `path` matching `pattern`."""
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())


#: Bytes per value of each safetensors dtype name.
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class SafetensorsFile:
    """What a safetensors file holds, read with `safetensors.safe_open` (tensor data not loaded)."""

    shapes: dict  # tensor name -> shape (tuple)
    dtypes: dict  # tensor name -> safetensors dtype name ("F32", "BF16", ...)
    file_bytes: int  # size on disk
    tensor_bytes: int  # the tensors' data: values x bytes per value, summed
    header_bytes: int  # the rest: the 8-byte length and the JSON header (names, dtypes, shapes, offsets)

    @property
    def params(self) -> int:
        """Values stored, over every tensor."""
        total = 0
        for shape in self.shapes.values():
            count = 1
            for d in shape:
                count *= d
            total += count
        return total


def read_safetensors(path: str | os.PathLike) -> SafetensorsFile:
    """The package's one safetensors reader: names, shapes, dtypes and sizes, without loading the data.

    The format stores the tensors' bytes contiguously after the header, so the header's size is
    the file's size less the tensors' bytes.
    """
    from safetensors import safe_open

    shapes, dtypes, tensor_bytes = {}, {}, 0
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            piece = f.get_slice(name)
            shapes[name], dtypes[name] = tuple(piece.get_shape()), piece.get_dtype()
            count = 1
            for d in shapes[name]:
                count *= d
            tensor_bytes += count * SAFETENSORS_DTYPE_BYTES[dtypes[name]]
    size = Path(path).stat().st_size
    return SafetensorsFile(shapes=shapes, dtypes=dtypes, file_bytes=size, tensor_bytes=tensor_bytes,
                           header_bytes=size - tensor_bytes)


def safetensors_problem(path) -> str | None:
    """What is wrong with a .safetensors file (missing, cut short, bad header), or None if it is whole.

    `read_safetensors` opens the header only; safetensors itself checks that the tensors it lists
    cover the file exactly, so a file cut short by a disconnect fails here without loading any data.
    """
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        read_safetensors(path)
    except (SafetensorError, OSError, KeyError) as err:
        return f"{path.name} is truncated or not a valid safetensors file ({err})"
    return None


def require_whole_safetensors(path) -> None:
    """Raise a ValueError saying what to do when a weights file is missing, cut short or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No {path.name} in {path.parent}: pass the folder an adapter was saved to.")
    problem = safetensors_problem(path)
    if problem:
        raise ValueError(f"{path.parent}: {problem}. It was probably cut off while saving (a disconnect or "
                         "full disk): save it again, or use an earlier checkpoint.")


#: What `save_adapter` records beside the adapter, for `python -m lora_lab.training.evaluate --adapter`.
ADAPTER_INFO_FILE = "lora_lab_adapter.json"


def save_adapter(model, tokenizer, out_dir: str | os.PathLike, *, task: str | None = None) -> tuple[Path, int]:
    """Save the LoRA adapter (safetensors) and the tokenizer; return (folder, adapter file bytes).

    peft's `adapter_config.json` records the base model's folder (or Hub id) as
    `base_model_name_or_path`, so plain `PeftModel.from_pretrained` finds the base offline;
    `lora_lab_adapter.json` adds how the base was loaded for training (`method`: a 4-bit base for
    QLoRA) and how answers are scored (`task`).

    Raises:
        ValueError: if `model` has no adapter (full fine-tuning saves a whole model instead).
    """
    if not is_peft_model(model):
        raise ValueError("This model has no LoRA adapter to save: use model.save_pretrained() for full fine-tuning.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    base = model.peft_config[model.active_adapter].base_model_name_or_path
    (out / ADAPTER_INFO_FILE).write_text(json.dumps(
        {"base_model": base, "method": getattr(model, "lora_lab_method", None), "task": task}, indent=1))
    weights = out / "adapter_model.safetensors"
    if not weights.exists():
        raise RuntimeError(f"peft wrote no adapter_model.safetensors into {out}.")
    return out, weights.stat().st_size


def load_adapter(profile, adapter_dir, method: str = "qlora", hw=None, model_path=None):
    """A fresh base (loaded exactly as for training) with the saved adapter on top, for inference.

    Returns:
        (peft_model, tokenizer), the model in eval mode.
    """
    from peft import PeftModel

    require_whole_safetensors(Path(adapter_dir) / "adapter_model.safetensors")  # a clear message, not a SafetensorError
    base, tokenizer = load_model_and_tokenizer(profile, method, hw=hw, model_path=model_path)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    return model, tokenizer


@dataclass(frozen=True)
class MergeReport:
    """What merging an adapter into the base it was trained on gave, checked against the trained model."""

    merged_dir: str  # where the merged model was saved ("" when not saved)
    merged_bytes: int  # bytes of its weight files
    dtype: str  # dtype the merged model holds its weights in
    base: str  # what the update was added to: "dequantized NF4" (QLoRA) or "16-bit" (LoRA)
    max_abs_diff: float  # largest |logit(merged) - logit(trained model: base + unmerged adapter)| on the probe batch
    tolerance: float  # accepted difference for this dtype
    ok: bool  # max_abs_diff <= tolerance

    def to_dict(self) -> dict:
        return asdict(self)


def merge_dtype(precision: Precision) -> torch.dtype:
    """The 16-bit dtype to merge into: the run's compute dtype on a GPU, fp32 on the CPU."""
    return precision.torch_compute_dtype


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


@torch.no_grad()
def merge_into_dequantized_base(qlora_model, base_dir, adapter_name: str = "default", dtype=None):
    """The faithful merge of a QLoRA adapter: the NF4 weights it was trained on, dequantized, plus B @ A.

    A QLoRA adapter learned its update on top of the NF4-rounded base, not the original 16-bit one.
    This builds a plain model in `dtype` (default: the dtype of the base's non-quantized weights, fp32
    after `prepare_model_for_kbit_training`) whose adapted linear weights are
    dequantize(W_nf4) + scale * B @ A (summed in fp32, then stored), ready for `save_pretrained`
    and GGUF export. The other weights (embeddings, norms) come from `base_dir`, as in the trained model.
    """
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or qlora_model.get_input_embeddings().weight.dtype)
    dense.to(qlora_model.get_input_embeddings().weight.device)
    targets = dict(dense.named_modules())
    prefix = "base_model.model."
    for name, module in qlora_model.named_modules():
        if not (hasattr(module, "lora_A") and adapter_name in module.lora_A):
            continue
        weight = module.get_base_layer().weight
        w = bnbf.dequantize_4bit(weight.data, weight.quant_state) if getattr(weight, "quant_state", None) \
            is not None else weight.data
        merged = w.float() + module.get_delta_weight(adapter_name).float()
        target = targets[name.removeprefix(prefix)]
        target.weight.data.copy_(merged.to(target.weight.dtype))
    return dense


def merge_adapter(profile, adapter_dir, probe_batch: dict, *, method: str = "qlora", hw=None, model_path=None,
                  out_dir: str | os.PathLike | None = None, trained_model=None, tokenizer=None,
                  adapter_name: str = "default", dtype=None) -> tuple[torch.nn.Module, MergeReport]:
    """Merge an adapter into the base it was trained on, and check the merged model against the trained one.

    The course's one merge (notebooks 03, 05 and 06, and the command line). The merged weights are
    W + (alpha / r) B A, with W the weights the adapter was trained on:

    - QLoRA: the NF4 base, dequantized (`merge_into_dequantized_base`). The result is the trained model
      itself, without peft and without 4-bit layers. Merging into the original 16-bit base instead adds the
      update to weights the adapter never saw and moves the logits by the base's quantization error;
      merging into the 4-bit weights re-rounds W + BA to NF4 and loses most of the update (notebook 06
      measures both).
    - LoRA: the 16-bit base it trained on, so the merge only re-associates a sum (peft's merge_and_unload).

    The check compares logits on `probe_batch` (input_ids and attention_mask) with the trained model:
    the same up to the merged dtype's rounding (`MERGE_TOLERANCE`).

    Args:
        profile: the run profile (for the model id).
        adapter_dir: folder written by `save_adapter`.
        probe_batch: a tokenized batch to compare logits on.
        method: "qlora" (4-bit base) or "lora" (16-bit base), the method the adapter was trained with.
        hw: hardware reading (decides the 16-bit dtype).
        model_path: overrides `profile.model_id`.
        out_dir: where to save the merged model (safetensors); None skips saving.
        trained_model: the model as trained (base + unmerged adapter, left unchanged); default: the adapter
            reloaded from `adapter_dir` on the base `method` trains on.
        tokenizer: saved beside the merged weights, so the folder loads (and exports to GGUF) on its own.
        adapter_name: the adapter of `trained_model` to merge, when it holds several.
        dtype: the merged weights' dtype (default: `merge_dtype`, the run's compute dtype).

    Returns:
        (merged model, `MergeReport`).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hw = hw or hardware.detect()
    precision = decide_precision(hw, "lora")
    dtype = dtype or merge_dtype(precision)
    path = str(model_path) if model_path is not None else tiny.resolve_model_path(profile.model_id)
    if trained_model is None:
        trained_model, _ = load_adapter(profile, adapter_dir, method, hw=hw, model_path=model_path)
    if adapter_name in getattr(trained_model, "peft_config", {}):
        trained_model.set_adapter(adapter_name)
    reference = _logits(trained_model, probe_batch)
    if method == "qlora":
        merged, base = merge_into_dequantized_base(trained_model, path, adapter_name, dtype), "dequantized NF4"
    else:  # a fresh 16-bit copy, so the trained model stays as it is
        copy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=_device_map(precision))
        merged, base = PeftModel.from_pretrained(copy, str(adapter_dir)).merge_and_unload(), "16-bit"
    diff = (_logits(merged, probe_batch) - reference).abs().max().item()
    dtype_name = str(dtype).replace("torch.", "")
    tolerance = MERGE_TOLERANCE[dtype_name] * max(1.0, reference.abs().max().item())
    merged_dir, merged_bytes = "", 0
    if out_dir is not None:
        out = Path(out_dir)
        merged.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        merged_dir, merged_bytes = str(out), folder_bytes(out, "*.safetensors")
    report = MergeReport(merged_dir=merged_dir, merged_bytes=merged_bytes, dtype=dtype_name, base=base,
                         max_abs_diff=diff, tolerance=tolerance, ok=diff <= tolerance)
    return merged, report


def trainable_hash(model) -> str:
    """SHA-256 of the trainable parameters (the adapter), in name order: equal hashes, equal adapters."""
    return units.tensors_sha256((name, p) for name, p in model.named_parameters() if p.requires_grad)
