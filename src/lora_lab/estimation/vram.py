"""Will it fit? An architecture-aware estimate of the GPU memory one fine-tuning step needs.

`estimate(model, method=...)` reads a model's config (a shipped preset, a Hub id, a
`PretrainedConfig`, a path to a `config.json`, or a bare parameter count) and adds up, in bytes,
what the course's own recipe (transformers + peft + trl, with bitsandbytes for QLoRA) holds at the
worst moment of a training step. The arithmetic is lesson code, one function per category over a
`StepShape` (the settings and the dtype width of each kind of tensor): weights, gradients, optimizer
states and overhead in `lora_lab.lessons.step_memory`, activations and transient peaks in
`lora_lab.lessons.activation_memory`, the model's shape (`Arch`) in `lora_lab.lessons.model_shape`.
This module reads configs into an `Arch`, validates the arguments, adds the categories up, answers
the reverse questions (largest batch, longest sequence, smallest GPU) and is the command line.

Which measured number each field predicts:

- `activations` predicts the bytes saved for backward at the end of the forward pass
  (`lora_lab.estimation.memory.measure_step` counts them exactly on the CPU with saved-tensor hooks).
- `peak_allocated` (everything but overhead) predicts `torch.cuda.max_memory_allocated()`.
- `reserved` (`total` less the CUDA context) predicts `torch.cuda.max_memory_reserved()`, the
  caching allocator's peak, which is what runs out first in an out-of-memory error.
- `total` is what the card must hold: reserved memory plus the CUDA context (about what
  `nvidia-smi` shows), and it is what `fits()` compares with a GPU's usable memory.

The sum is deliberately a sum (accelerate's calculator takes the max of the parts instead): at the
start of backward the weights, the optimizer states (from the second step on), the saved
activations and the logits' gradient are all alive at once. Counting all gradients at that moment
as well over-states full fine-tuning slightly (early layers' gradients do not exist yet).

One call takes well under a millisecond after the first for a preset: the architecture is read
once and cached, and no model is instantiated.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources

from lora_lab.lessons.activation_memory import activation_terms, transient_bytes
from lora_lab.lessons.counting import lora_layer_params
from lora_lab.lessons.model_shape import Arch, Linear
from lora_lab.lessons.step_memory import (
    CUDA_CONTEXT_BYTES,
    StepShape,
    ddp_bucket_bytes,
    gradient_bytes,
    lora_total_params,
    optimizer_state_bytes,
    overhead_terms,
    shard,
    trainable_sizes,
    weight_bytes,
)
from lora_lab.runtime import hub
from lora_lab.runtime.units import GIB

GB = 10**9

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16", "mixed")
ATTENTIONS = ("eager", "sdpa")
SHARDINGS = (None, "fsdp")

@dataclass(frozen=True)
class GPU:
    """A GPU the calculator knows about."""

    name: str  # what the learner would call it
    usable_bytes: int  # total memory as torch reports it (get_device_properties().total_memory)
    note: str  # where the figure comes from


def _gib(x: float) -> int:
    return int(round(x * GIB))


#: Usable memory: what `torch.cuda.get_device_properties(0).total_memory` reports, which is
#: below the marketing figure (GB = 1e9 vs GiB = 2^30, and what the driver keeps for itself).
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("Colab T4", _gib(14.74), "16 GB card; torch reports about 14.74 GiB total on Colab: read it at run time"),
        GPU("L4", _gib(22.0), "24 GB card; about 22 GiB usable (approximate)"),
        GPU("A10G", _gib(22.0), "24 GB card (AWS g5); about 22 GiB usable (approximate)"),
        GPU("RTX 3090", _gib(23.6), "24 GB card; about 23.6 GiB usable (approximate)"),
        GPU("RTX 4090", _gib(23.6), "24 GB card; about 23.6 GiB usable (approximate)"),
        GPU("A100 40GB", _gib(39.4), "40 GB card; about 39.4 GiB usable (approximate)"),
        GPU("A100 80GB", _gib(79.1), "80 GB card; about 79.1 GiB usable (approximate)"),
        GPU("H100 80GB", _gib(79.1), "80 GB card; about 79.1 GiB usable (approximate)"),
        GPU("H200", _gib(139.8), "141 GB card; about 139.8 GiB usable (approximate)"),
    )
}


# --------------------------------------------------------------------------------------------
# Architecture: everything the estimate needs from a config, read once.
# --------------------------------------------------------------------------------------------


_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "stablelm", "olmo", "granite", "smollm3"}


def _get(cfg: dict, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def arch_from_dict(cfg: dict, name: str = "config") -> Arch:
    """Read an `Arch` from a config.json dictionary (or `PretrainedConfig.to_dict()`).

    Raises:
        ValueError: if a field the estimate needs is missing.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"{name}: a config must be a JSON object of fields (a dict, like a model's config.json), "
                         f"not a {type(cfg).__name__}.")
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", False)}
    model_type = cfg.get("model_type", "llama")
    if not isinstance(model_type, str):
        raise ValueError(f"{name}: model_type must be a string such as 'llama' (got {model_type!r}).")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if cfg.get(k) is None]
    if missing:
        raise ValueError(f"{name}: the config lacks {', '.join(missing)}; a decoder-only causal LM config is needed.")
    if model_type not in _LLAMA_LIKE and model_type != "phi3":
        warnings.warn(
            f"{name}: model_type {model_type!r} is not one the estimator was checked on; it is treated as a "
            "Llama-style block (q/k/v/o, gated MLP, two RMSNorms).", stacklevel=3)
    V, h, I_ = (_config_count(cfg, k, name) for k in ("vocab_size", "hidden_size", "intermediate_size"))
    L, H = _config_count(cfg, "num_hidden_layers", name), _config_count(cfg, "num_attention_heads", name)
    kv = _config_count(cfg, "num_key_value_heads", name, default=H)
    if H % kv:
        raise ValueError(f"{name}: num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv}): "
                         "each key/value head serves a whole group of query heads.")
    if cfg.get("head_dim") is None and h % H:
        raise ValueError(f"{name}: hidden_size ({h}) must be divisible by num_attention_heads ({H}) when the "
                         "config has no head_dim; set head_dim or a head count that divides the width.")
    d = _config_count(cfg, "head_dim", name, default=h // H)
    q_dim, kv_dim = H * d, kv * d
    tied = _config_bool(cfg, "tie_word_embeddings", name, default=model_type.startswith("gemma"))
    if model_type == "phi3":
        linears = (
            Linear("qkv_proj", h, q_dim + 2 * kv_dim, False, "attn_in"),
            Linear("o_proj", q_dim, h, False, "attn_out"),
            Linear("gate_up_proj", h, 2 * I_, False, "mlp_in"),
            Linear("down_proj", I_, h, False, "mlp_act"),
        )
    else:
        qkv_bias = bool(cfg.get("attention_bias", False)) or model_type == "qwen2" or bool(cfg.get("use_qkv_bias", False))
        o_bias = bool(cfg.get("attention_bias", False)) and model_type != "qwen2"
        mlp_bias = bool(cfg.get("mlp_bias", False))
        linears = (
            Linear("q_proj", h, q_dim, qkv_bias, "attn_in"),
            Linear("k_proj", h, kv_dim, qkv_bias, "attn_in"),
            Linear("v_proj", h, kv_dim, qkv_bias, "attn_in"),
            Linear("o_proj", q_dim, h, o_bias, "attn_out"),
            Linear("gate_proj", h, I_, mlp_bias, "mlp_in"),
            Linear("up_proj", h, I_, mlp_bias, "mlp_in"),
            Linear("down_proj", I_, h, mlp_bias, "mlp_act"),
        )
    layer_norm = model_type == "stablelm"
    return Arch(
        name=name,
        model_type=model_type,
        vocab_size=V,
        hidden_size=h,
        intermediate_size=I_,
        num_layers=L,
        num_heads=H,
        num_kv_heads=kv,
        head_dim=d,
        tied=tied,
        linears=linears,
        norms_per_layer=4 if model_type == "gemma2" else 2,
        norm_params=2 * h if layer_norm else h,
        qk_norm_params=2 * d if model_type == "qwen3" else 0,
        fused_qkv=model_type == "phi3",
        norm_saves_fp32_scaled=model_type.startswith("gemma"),
        attn_softcap=model_type == "gemma2" and cfg.get("attn_logit_softcapping") is not None,
        logit_softcap=model_type == "gemma2" and cfg.get("final_logit_softcapping") is not None,
        sdpa_supported=model_type != "gemma2",
        max_positions=cfg.get("max_position_embeddings"),
    )


def _config_count(cfg: dict, key: str, name: str, default=None) -> int:
    """A positive whole-number config field (layers, heads, widths, vocabulary), or ValueError."""
    value = cfg.get(key)
    if value is None:
        value = default
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and value == int(value) and value > 0)
    if not ok:
        raise ValueError(f"{name}: {key} must be a positive whole number (got {value!r}); fix it in the config.")
    return int(value)


def _config_bool(cfg: dict, key: str, name: str, default: bool) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {key} must be true or false (got {value!r}); fix it in the config.")
    return value


#: The largest bare parameter count `generic_arch` accepts: 10 trillion, several times the largest published model.
MAX_GENERIC_PARAMS = 10**13


def generic_arch(n_params: int) -> Arch:
    """A Llama-2-style dense decoder of about `n_params` parameters.

    Assumptions (stated because a bare count cannot say them): vocabulary 32,000, untied head,
    full multi-head attention with head_dim 128, depth = width / 128 (Llama-2-7B: 4096 / 32,
    13B: 5120 / 40), and the MLP width solved so the total comes out at `n_params`.
    """
    if n_params < 10_000_000:
        raise ValueError(f"A bare parameter count must be at least 10,000,000 (got {n_params:,}); "
                         "pass a config for smaller models.")
    if n_params > MAX_GENERIC_PARAMS:
        raise ValueError(f"A bare parameter count must be at most {MAX_GENERIC_PARAMS:.0e} (got {n_params:.3g}): "
                         "no model is that large; pass the count in parameters, e.g. 7e9 for 7B.")
    V = 32000

    def total(h):  # with I = 8/3 h
        return h // 128 * (4 * h * h + 8 * h * h + 2 * h) + 2 * V * h + h

    h = 128
    while total(h + 128) <= n_params:
        h += 128
    L = h // 128
    I_ = max(128, round((n_params - 2 * V * h - h - L * (4 * h * h + 2 * h)) / (3 * h * L)))
    cfg = dict(model_type="llama", vocab_size=V, hidden_size=h, intermediate_size=I_, num_hidden_layers=L,
               num_attention_heads=h // 128, num_key_value_heads=h // 128, head_dim=128,
               tie_word_embeddings=False, max_position_embeddings=4096)
    return dataclass_replace(arch_from_dict(cfg, f"generic-{_short_count(n_params)}"), generic=True)


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _short_count(n: int) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


# --------------------------------------------------------------------------------------------
# Presets shipped as package data
# --------------------------------------------------------------------------------------------


def _preset_file(name: str) -> str:
    return name.replace("/", "__") + ".json"


@functools.lru_cache(maxsize=1)
def preset_names() -> tuple[str, ...]:
    """The model names whose config.json ships with the package (usable offline)."""
    folder = resources.files("lora_lab") / "configs"
    names = []
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            names.append(json.loads(entry.read_text())["_name_or_path"])
    return tuple(sorted(names))


def preset_config(name: str) -> dict:
    """The shipped config.json of a preset, as a dict (see `preset_names()`)."""
    if name not in preset_names():
        raise ValueError(f"Unknown model preset {name!r}. {_unknown_preset_message(name)}")
    return json.loads((resources.files("lora_lab") / "configs" / _preset_file(name)).read_text())


def _unknown_preset_message(name: str) -> str:
    names = preset_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    lowered = {n.lower().split("/")[-1]: n for n in names}
    close += [lowered[k] for k in difflib.get_close_matches(name.lower().split("/")[-1], lowered, n=3, cutoff=0.5)
              if lowered[k] not in close]
    hint = f"Did you mean {', '.join(repr(c) for c in close[:3])}? " if close else ""
    return (f"{hint}Presets shipped with the package (usable offline): {', '.join(names)}. "
            "You can also pass a transformers config, a path to a config.json, or a parameter count.")


@functools.lru_cache(maxsize=64)
def _preset_arch(name: str) -> Arch:
    return arch_from_dict(preset_config(name), name)


@functools.lru_cache(maxsize=64)
def _path_arch(path: str, mtime: float) -> Arch:
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as a config.json ({err}); pass a model's config.json.") from None
    return arch_from_dict(cfg, path)


def parse_model_text(text: str):
    """What a learner types as a model: '7B', '7e9', '135M', '1,500,000,000' -> a count; else the text.

    Used by the command line and the notebook's calculator alike, so `--model 7B` means the same
    in both. Suffixes K, M, B, T scale by 1e3, 1e6, 1e9, 1e12.

    Raises:
        ValueError: for a count that is not a finite positive number ('inf', '1e400', '-5').
    """
    t = str(text).strip()
    compact = t.replace(",", "").replace("_", "")
    if not compact:
        raise ValueError("Type a model: a parameter count (e.g. 7B or 7e9), a preset or Hub id, or a config.json path.")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}.get(compact[-1].lower())
    try:
        number = float(compact[:-1] if scale else compact) * (scale or 1)
    except ValueError:
        return t  # a name or a path
    if not math.isfinite(number):
        raise ValueError(f"A parameter count must be a finite number (got {text!r}); type e.g. 7B or 7e9.")
    if number <= 0:
        raise ValueError(f"A parameter count must be positive (got {text!r}); type e.g. 7B or 7e9.")
    return int(number)


def load_arch(model) -> Arch:
    """An `Arch` from a preset name, a Hub id, a `PretrainedConfig`, a config dict or path, a count, or an Arch.

    A name that is neither a shipped preset nor a local path is looked up with
    `transformers.AutoConfig.from_pretrained` (the local Hub cache, then the Hub; remote code is
    never run). Only when that fails are close preset names suggested, with the reason.

    Raises:
        ValueError: saying what to pass instead, for a name that cannot be resolved (offline, not
            found, gated), an unusable config, a non-finite or non-positive count, or a model object.
    """
    if isinstance(model, Arch):
        return model
    if isinstance(model, bool):
        raise ValueError("model must be a preset name, a config, a config.json path or a parameter count.")
    if isinstance(model, (int, float)):
        if not math.isfinite(model):
            raise ValueError(f"A parameter count must be a finite number (got {model}).")
        if model <= 0:
            raise ValueError(f"A parameter count must be positive (got {model}).")
        return _generic_cached(int(model))
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        if text in preset_names():
            return _preset_arch(text)
        path = text
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if os.path.isfile(path):
            return _path_arch(path, os.path.getmtime(path))
        return _hub_arch(text)
    if isinstance(model, dict):
        return arch_from_dict(model, model.get("_name_or_path") or model.get("model_type", "config"))
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):
        cfg = model.to_dict()
        cfg.setdefault("model_type", model.model_type)
        if getattr(model, "head_dim", None) and "head_dim" not in cfg:
            cfg["head_dim"] = model.head_dim
        return arch_from_dict(cfg, getattr(model, "_name_or_path", "") or model.model_type)
    if hasattr(model, "config") and hasattr(model, "parameters"):
        raise ValueError(f"Got a {type(model).__name__} model object; pass its configuration instead: "
                         "estimate(model.config, ...).")
    if isinstance(model, (list, tuple)):
        raise ValueError(f"A config must be a JSON object of fields (a dict, like a model's config.json), "
                         f"not a {type(model).__name__}.")
    raise ValueError(f"Cannot read a model from {type(model).__name__}: pass a preset name, a Hub id, a "
                     "transformers config, a path to a config.json, or a parameter count.")


def _hub_failure_reason(err: BaseException, model_id: str) -> str:
    """Why `AutoConfig.from_pretrained(model_id)` failed, in words that say what to do."""
    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {base.__name__ for x in chain for base in type(x).__mro__}
    text = " ".join(str(x) for x in chain).lower()
    if "GatedRepoError" in names or "gated repo" in text:
        return (f"{model_id!r} is a gated model on the Hub: accept its licence and log in (`hf auth login`), or "
                "download its config.json and pass that path")
    if "RepositoryNotFoundError" in names or "not a valid model identifier" in text or "not a local folder or a "             "valid repository" in text:
        return f"{model_id!r} was not found on the Hub (check the spelling, or pass a config.json path)"
    if ({"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "TimeoutException"} & names
            or "couldn't connect" in text or "offline" in text):
        return (f"{model_id!r} is not in the local Hub cache and the Hub cannot be reached (offline); pass a "
                "config.json path or a parameter count")
    if "trust_remote_code" in text or "does not recognize this architecture" in text:
        return (f"{model_id!r} needs custom code to read its config, which the course never runs; pass its "
                "config.json path")
    return f"loading {model_id!r}'s config from the Hub failed ({type(err).__name__}: {str(err)[:200]})"


@functools.lru_cache(maxsize=32)
def _hub_arch(model_id: str) -> Arch:
    """A Hub id's config through `AutoConfig.from_pretrained` (local cache first, then the Hub)."""
    from transformers import AutoConfig

    try:
        try:  # the local cache first: no network needed
            cfg = AutoConfig.from_pretrained(model_id, trust_remote_code=False, local_files_only=True)
        except OSError:
            if not hub.reachable():  # fail in seconds, not after half a minute of download retries
                raise ValueError(f"Cannot resolve model {model_id!r}: it is not in the local Hub cache and the Hub "
                                 "cannot be reached (offline, or HF_HUB_OFFLINE set); pass a config.json path or a "
                                 f"parameter count. {_unknown_preset_message(model_id)}") from None
            cfg = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    except ValueError:
        raise
    except Exception as err:  # gated, misspelled or remote code: say why, then suggest presets
        raise ValueError(f"Cannot resolve model {model_id!r}: {_hub_failure_reason(err, model_id)}. "
                         f"{_unknown_preset_message(model_id)}") from None
    return load_arch(cfg)


@functools.lru_cache(maxsize=64)
def _generic_cached(n: int) -> Arch:
    return generic_arch(n)


# --------------------------------------------------------------------------------------------
# LoRA bookkeeping
# --------------------------------------------------------------------------------------------


def resolve_targets(arch: Arch, target_modules) -> tuple[Linear, ...]:
    """The block's linear layers peft would adapt for `target_modules`.

    "all-linear" is every linear layer of the blocks; peft leaves the output head out.

    Raises:
        ValueError: when a named module does not exist in this architecture.
    """
    if target_modules in ("all-linear", "all_linear"):
        return arch.linears
    if isinstance(target_modules, str):
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    names = list(target_modules)
    if not names:
        raise ValueError("target_modules is empty: name at least one module, or use 'all-linear'.")
    known = {li.name for li in arch.linears}
    unknown = [n for n in names if n not in known]
    if unknown:
        extra = " (it fuses q, k and v into qkv_proj and gate/up into gate_up_proj)" if arch.fused_qkv else ""
        raise ValueError(f"{arch.name} has no module {', '.join(map(repr, unknown))}{extra}. "
                         f"Its linear layers are: {', '.join(sorted(known))}.")
    return tuple(li for li in arch.linears if li.name in names)


def lora_params(arch: Arch, rank: int, target_modules="all-linear") -> int:
    """LoRA trainable parameters exactly as peft counts them: sum of r * (d_in + d_out)."""
    return arch.num_layers * sum(lora_layer_params(li.d_in, li.d_out, rank) for li in resolve_targets(arch, target_modules))


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted GPU memory of one training step, in bytes, with the settings that produced it."""

    weights: int  # parameters (NF4 + quant states for QLoRA; fp32 + 16-bit copies for "mixed")
    gradients: int  # one gradient per trainable parameter
    optimizer_states: int  # AdamW moments (8-bit or 32-bit) or nothing for plain SGD
    activations: int  # tensors saved for backward at the end of forward, incl. fp32 log-probs
    transient: int  # short-lived peak on top: logits copies, their gradient, recompute, dequantization
    overhead: int  # CUDA context plus the caching allocator's slack
    total: int  # the sum of the above: what the GPU must hold
    total_params: int  # all parameters (base + LoRA), counted as values
    trainable_params: int  # parameters that get gradients and optimizer states
    settings: dict = field(default_factory=dict)  # the arguments of estimate(), for the record
    terms: dict = field(default_factory=dict)  # activations by named term (bytes), summing to activations
    overhead_terms: dict = field(default_factory=dict)  # overhead by cause (bytes), summing to overhead

    @property
    def peak_allocated(self) -> int:
        """Predicts `torch.cuda.max_memory_allocated()`: everything but the overhead."""
        return self.total - self.overhead

    @property
    def reserved(self) -> int:
        """Predicts `torch.cuda.max_memory_reserved()`: the total less the CUDA context."""
        return self.total - CUDA_CONTEXT_BYTES

    def fits(self, gpu: str | GPU | int) -> bool:
        """True if `total` is within the GPU's usable memory (a `GPUS` name, a GPU, or bytes)."""
        return self.total <= _gpu_bytes(gpu)

    def headroom(self, gpu: str | GPU | int) -> int:
        """Usable memory left after this step (negative when it does not fit), in bytes."""
        return _gpu_bytes(gpu) - self.total

    def breakdown(self) -> dict[str, int]:
        """The parts that add up to `total`, in bytes, in stacking order."""
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer_states": self.optimizer_states,
            "activations": self.activations,
            "transient": self.transient,
            "overhead": self.overhead,
        }

    def to_dict(self) -> dict:
        """Every field plus the derived peaks, JSON-ready."""
        d = asdict(self)
        d["peak_allocated"] = self.peak_allocated
        d["reserved"] = self.reserved
        return d

    def __str__(self) -> str:
        s = self.settings
        head = (f"{s.get('model', '?')} | {s.get('method', '?')} | batch {s.get('batch_size')} x seq "
                f"{s.get('seq_len')} | {s.get('precision')} | checkpointing "
                f"{'on' if s.get('gradient_checkpointing') else 'off'} | {s.get('optimizer')}")
        lines = [head, f"{'parameters':<18} {self.total_params:>16,}  trainable {self.trainable_params:,} "
                 f"({100 * self.trainable_params / max(self.total_params, 1):.3g}%)"]
        for name, value in self.breakdown().items():
            lines.append(f"{name.replace('_', ' '):<18} {value / GIB:>12.2f} GiB")
        lines.append(f"{'total':<18} {self.total / GIB:>12.2f} GiB")
        return "\n".join(lines)


def _gpu_bytes(gpu) -> int:
    if isinstance(gpu, GPU):
        return gpu.usable_bytes
    if isinstance(gpu, (int, float)) and not isinstance(gpu, bool):
        if not math.isfinite(gpu) or gpu <= 0:
            raise ValueError(f"A GPU size in bytes must be a finite positive number (got {gpu!r}).")
        return int(gpu)
    if isinstance(gpu, str) and gpu in GPUS:
        return GPUS[gpu].usable_bytes
    word = str(gpu).strip().lower()
    close = [n for n in GPUS if word and (word == n.lower() or word in n.lower().split())]
    close += [n for n in difflib.get_close_matches(str(gpu), list(GPUS), n=2, cutoff=0.3) if n not in close]
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown GPU {gpu!r}.{hint} Known: {', '.join(GPUS)} (or pass a size in bytes).")


def _check_choice(value, choices, what):
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown {what} {value!r}.{hint} Choose one of: {', '.join(map(str, choices))}.")


def _check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive whole number (got {value!r}).")


def _check_bool(value, what):
    """Refuse 'no', 0, None...: a string is truthy, so `gradient_checkpointing='no'` would mean yes."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False (got {value!r}).")


def _check_number(value, what, *, lo: float, hi: float | None = None, allow_none: bool = False):
    """A finite real number in [lo, hi) (hi excluded), or ValueError naming the field."""
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < lo or (hi is not None and value >= hi):
        bound = f"in [{lo:g}, {hi:g})" if hi is not None else f"a finite number >= {lo:g}"
        raise ValueError(f"{what} must be {bound} (got {value!r}).")


def _check_rank_fits(rank: int, targets) -> None:
    """LoRA's rank cannot exceed an adapted layer's smaller side; name the layer that binds."""
    if not targets:
        return
    binding = min(targets, key=lambda li: min(li.d_in, li.d_out))
    limit = min(binding.d_in, binding.d_out)
    if rank > limit:
        raise ValueError(f"rank {rank} is larger than {binding.name}'s smaller dimension ({binding.d_in} x "
                         f"{binding.d_out}), the smallest adapted layer: use rank <= {limit}, or leave "
                         f"{binding.name} out of target_modules.")


def _warn_ignored_lora_flags(method: str, rank, target_modules, double_quant, lora_dropout) -> None:
    """Full fine-tuning has no adapters: flags that only shape LoRA/QLoRA are ignored, say so."""
    ignored = []
    if method == "full":
        if rank != 16:
            ignored.append(f"rank={rank}")
        if target_modules not in ("all-linear", "all_linear"):
            ignored.append(f"target_modules={_targets_repr(target_modules)!r}")
        if lora_dropout:
            ignored.append(f"lora_dropout={lora_dropout}")
    if method != "qlora" and double_quant is not True:
        ignored.append(f"double_quant={double_quant}")
    if ignored:
        warnings.warn(f"method={method!r}: {', '.join(ignored)} only apply to "
                      f"{'LoRA/QLoRA' if method == 'full' else 'QLoRA'} and are ignored.", stacklevel=3)


def step_shape(model, *, method, rank=16, target_modules="all-linear", batch_size=1, seq_len=512,
               gradient_checkpointing=True, optimizer="adamw", precision="bf16", autocast=True, double_quant=True,
               attention="sdpa", lora_dropout=0.0, num_gpus=1, sharding=None, device="cuda",
               fused_cross_entropy=False) -> StepShape:
    """Validate `estimate`'s arguments (same names and defaults) and resolve them into the `StepShape`
    that the lesson's category functions (`lora_lab.lessons.step_memory`, `activation_memory`) read."""
    _check_choice(method, METHODS, "method")
    _check_choice(optimizer, OPTIMIZERS, "optimizer")
    _check_choice(precision, PRECISIONS, "precision")
    _check_choice(attention, ATTENTIONS, "attention")
    _check_choice(sharding, SHARDINGS, "sharding")
    _check_choice(device, ("cuda", "cpu"), "device")
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(seq_len, "seq_len")
    _check_positive_int(num_gpus, "num_gpus")
    if method != "full":
        _check_positive_int(rank, "rank")
    _check_bool(gradient_checkpointing, "gradient_checkpointing")
    _check_bool(double_quant, "double_quant")
    _check_bool(autocast, "autocast")
    _check_bool(fused_cross_entropy, "fused_cross_entropy")
    _check_number(lora_dropout, "lora_dropout", lo=0.0, hi=1.0)
    _warn_ignored_lora_flags(method, rank, target_modules, double_quant, lora_dropout)
    if sharding == "fsdp" and num_gpus < 2:
        raise ValueError("sharding='fsdp' splits memory over several GPUs: set num_gpus >= 2, or sharding=None.")
    arch = load_arch(model)
    if arch.max_positions and seq_len > arch.max_positions:
        warnings.warn(f"seq_len {seq_len} exceeds {arch.name}'s context of {arch.max_positions} tokens; the "
                      "model was not trained for sequences that long.", stacklevel=3)
    targets = resolve_targets(arch, target_modules) if method != "full" else ()
    _check_rank_fits(rank, targets)
    return StepShape(arch=arch, method=method, targets=targets, rank=rank, batch_size=batch_size, seq_len=seq_len,
                     precision=precision, autocast=precision == "mixed" or (autocast and precision != "fp32"),
                     checkpointing=gradient_checkpointing, optimizer=optimizer, double_quant=double_quant,
                     eager_attention=attention == "eager" or not arch.sdpa_supported,
                     lora_dropout=float(lora_dropout), num_gpus=num_gpus, sharding=sharding, device=device,
                     fused_loss=fused_cross_entropy)


def estimate(
    model,
    *,
    method: str,
    rank: int = 16,
    lora_alpha: float | None = None,
    target_modules="all-linear",
    batch_size: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = True,
    optimizer: str = "adamw",
    precision: str = "bf16",
    double_quant: bool = True,
    attention: str = "sdpa",
    lora_dropout: float = 0.0,
    num_gpus: int = 1,
    sharding: str | None = None,
    device: str = "cuda",
    autocast: bool = True,
    fused_cross_entropy: bool = False,
) -> MemoryEstimate:
    """Estimate the memory of one training step of `model` with the course's recipe.

    Args:
        model: a preset name (`preset_names()`), a Hub id, a `transformers.PretrainedConfig`, a path
            to a config.json (or its folder), or a bare parameter count (a Llama-2-style decoder).
        method: "full" (every weight trains), "lora" (16-bit frozen base plus adapters) or
            "qlora" (NF4 frozen base plus adapters).
        rank: LoRA rank r (ignored for "full").
        lora_alpha: LoRA scale numerator; does not change memory, recorded for completeness.
        target_modules: "all-linear" or module names such as ("q_proj", "v_proj").
        batch_size: sequences per micro-step.
        seq_len: the longest padded sequence in the batch (it sets the peak, not the average).
        gradient_checkpointing: keep only each layer's input and recompute the rest in backward.
        optimizer: "adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit" or "sgd" (plain,
            no momentum). Paged states can spill to CPU under pressure; we count them on the GPU.
        precision: "fp32", "bf16" or "fp16" (the base loaded in that dtype; LoRA adapters stay
            fp32, peft's default), or "mixed" (fp32 weights, bf16/fp16 autocast compute).
        double_quant: QLoRA double quantization of the absmax values (bnb_4bit_use_double_quant).
        attention: "sdpa" (no seq x seq scores kept) or "eager" (the scores are materialised).
        lora_dropout: peft's LoRA dropout; above 0 each adapted layer keeps a dropped-out copy of
            its input and the dropout mask.
        num_gpus: GPUs the step runs on.
        sharding: None (each GPU holds everything; with num_gpus > 1 that is DDP, which adds its
            gradient buckets) or "fsdp" (weights, gradients and optimizer states split over
            `num_gpus`); the figures are per GPU.
        device: "cuda" (the default: what the estimate is for) or "cpu" (dropout masks are stored
            in the input's dtype there instead of one byte; used to check against CPU measurement).
        autocast: with "bf16"/"fp16", run forward and loss under `torch.autocast` as the Trainer
            does with `bf16=True`/`fp16=True` (the default); False is pure 16-bit loading.
        fused_cross_entropy: compute the output head and the loss chunk by chunk, as Liger Kernel's
            fused linear cross-entropy does (`fused_chunk_tokens`), so the batch x seq x vocabulary
            logits, their fp32 copy and their gradients never exist at once (default False: the
            standard head and loss of transformers).

    Returns:
        A `MemoryEstimate` in bytes; `terms` names every activation term.

    Raises:
        ValueError: saying what to change, for unknown methods, optimizers, precisions or
            presets, non-positive or non-finite sizes, non-boolean flags, an unusable config,
            or a rank larger than an adapted layer allows.
    """
    _check_number(lora_alpha, "lora_alpha", lo=0.0, allow_none=True)
    st = step_shape(model, method=method, rank=rank, target_modules=target_modules, batch_size=batch_size,
                     seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, optimizer=optimizer,
                     precision=precision, autocast=autocast, double_quant=double_quant, attention=attention,
                     lora_dropout=lora_dropout, num_gpus=num_gpus, sharding=sharding, device=device,
                     fused_cross_entropy=fused_cross_entropy)
    weights = shard(weight_bytes(st), st)
    gradients = shard(gradient_bytes(st), st) + ddp_bucket_bytes(st)
    optimizer_states = shard(optimizer_state_bytes(st), st)
    terms = activation_terms(st)
    activations = sum(terms.values())
    transient = transient_bytes(st)
    overheads = overhead_terms(st, activations, transient)
    overhead = sum(overheads.values())
    total = weights + gradients + optimizer_states + activations + transient + overhead
    settings = dict(model=st.arch.name, method=method, rank=rank if method != "full" else None,
                    lora_alpha=lora_alpha, target_modules=_targets_repr(target_modules) if method != "full" else None,
                    batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
                    optimizer=optimizer, precision=precision, autocast=st.autocast,
                    double_quant=double_quant if method == "qlora" else None,
                    attention="eager" if st.eager_attention else "sdpa", lora_dropout=lora_dropout, num_gpus=num_gpus,
                    sharding=sharding, device=device, fused_cross_entropy=fused_cross_entropy)
    return MemoryEstimate(
        weights=int(weights), gradients=int(gradients), optimizer_states=int(optimizer_states),
        activations=int(activations), transient=int(transient), overhead=int(overhead), total=int(total),
        total_params=int(st.arch.total_params + lora_total_params(st)), trainable_params=int(sum(trainable_sizes(st))),
        settings=settings, terms={k: int(v) for k, v in terms.items()},
        overhead_terms={k: int(v) for k, v in overheads.items()},
    )


def _targets_repr(target_modules):
    return target_modules if isinstance(target_modules, str) else ",".join(target_modules)


# --------------------------------------------------------------------------------------------
# Reverse questions
# --------------------------------------------------------------------------------------------


def quiet_estimate(model, **kwargs) -> MemoryEstimate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimate(model, **kwargs)


def _largest(fits, lo: int, hi: int) -> int:
    """Largest n in [lo, hi] with fits(n) true (fits is monotone: true then false); lo - 1 if none."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_seq_len_that_fits(model, gpu, *, upper: int | None = None, **kwargs) -> int:
    """The longest padded sequence (tokens) for which a step fits on `gpu`; 0 if none does.

    Args:
        model: as for `estimate`.
        gpu: a `GPUS` name, a `GPU`, or usable bytes.
        upper: the longest length to consider (default: the model's context, at most 1,048,576).
        **kwargs: the other `estimate` arguments (method is required); seq_len is ignored.
    """
    kwargs.pop("seq_len", None)
    arch = load_arch(model)
    hi = upper or min(arch.max_positions or 131072, 1 << 20)
    return _largest(lambda n: quiet_estimate(arch, seq_len=n, **kwargs).fits(gpu), 1, hi)


def max_batch_size_that_fits(model, gpu, *, upper: int = 4096, **kwargs) -> int:
    """The largest batch (sequences per micro-step) that fits on `gpu`; 0 if not even one does."""
    kwargs.pop("batch_size", None)
    arch = load_arch(model)
    return _largest(lambda n: quiet_estimate(arch, batch_size=n, **kwargs).fits(gpu), 1, upper)


def training_precision(method: str, compute_dtype: str) -> str:
    """The estimator's precision for the course's training recipe in `compute_dtype` ("float16" on a T4,
    "bfloat16" from compute capability 8.0, "float32" on a CPU). Full fine-tuning keeps fp32 weights under
    autocast ("mixed"): fp16 weights trained under fp16 autocast cannot train at all, since the gradient
    scaler refuses to unscale fp16 gradients. LoRA and QLoRA keep the frozen base in the compute dtype
    (their trainable matrices stay fp32)."""
    if compute_dtype == "float32":
        return "fp32"
    if method == "full":
        return "mixed"
    return {"float16": "fp16", "bfloat16": "bf16"}[compute_dtype]


def smallest_gpu(model, **kwargs) -> str | None:
    """The name of the GPU with the least usable memory that fits the step, or None if none does."""
    total = quiet_estimate(model, **kwargs).total
    for gpu in sorted(GPUS.values(), key=lambda g: g.usable_bytes):
        if total <= gpu.usable_bytes:
            return gpu.name
    return None


def largest_model_that_fits(gpu, *, lo: float = 1e8, hi: float = 1e12, **kwargs) -> int:
    """The largest generic dense decoder (parameter count) whose training step fits on `gpu`.

    Bisects over bare parameter counts (see `estimate` for the generic architecture assumed), so
    the answer to "what can I fine-tune on this card?" comes from the same estimate as everything
    else. Returns 0 if even `lo` parameters do not fit.
    """
    if not quiet_estimate(int(lo), **kwargs).fits(gpu):
        return 0
    lo, hi = int(lo), int(hi)
    while hi / lo > 1.001:
        mid = int((lo * hi) ** 0.5)
        lo, hi = (mid, hi) if quiet_estimate(mid, **kwargs).fits(gpu) else (lo, mid)
    return lo


def suggestions(model, gpu, **kwargs) -> list[str]:
    """Changes that would make a step that does not fit on `gpu` fit, each checked by `estimate`.

    Tries, in this order: gradient checkpointing, a shorter sequence (never past the model's context), a
    smaller batch, a smaller LoRA rank, an 8-bit optimizer (full fine-tuning), LoRA or QLoRA instead of the
    current method, a bigger GPU.
    """
    arch = load_arch(model)
    base = dict(kwargs)
    out = []

    def fits(**changes):
        return quiet_estimate(arch, **{**base, **changes}).fits(gpu)

    if not base.get("gradient_checkpointing", True) and fits(gradient_checkpointing=True):
        out.append("gradient checkpointing")
    seq = base.get("seq_len", 512)
    best_seq = max_seq_len_that_fits(arch, gpu, upper=seq, **base)
    if arch.max_positions:  # never advise a length the model was not trained for
        best_seq = min(best_seq, arch.max_positions)
    if min(seq, 64) <= best_seq < seq:  # a sequence too short to train on is no advice
        out.append(f"seq {_round_down(best_seq)}")
    batch = base.get("batch_size", 1)
    if batch > 1:
        best_batch = max_batch_size_that_fits(arch, gpu, upper=batch, **base)
        if 0 < best_batch < batch:
            out.append(f"batch {best_batch} (with gradient accumulation for the same effective batch)")
    method = base.get("method")
    rank = base.get("rank", 16)
    if method in ("lora", "qlora") and rank > 1:  # the largest power-of-two rank below this one that fits
        smaller = [r for r in (2**k for k in range(rank.bit_length(), -1, -1)) if r < rank]
        fitting = next((r for r in smaller if fits(rank=r)), None)
        if fitting is not None:
            out.append(f"rank {fitting}")
    if method == "full" and base.get("optimizer", "adamw") in ("adamw", "paged_adamw_32bit") and fits(
            optimizer="paged_adamw_8bit"):
        out.append("an 8-bit optimizer (paged_adamw_8bit)")
    if method == "full" and fits(method="lora"):
        out.append("LoRA")
    if method in ("full", "lora") and fits(method="qlora"):
        out.append("QLoRA")
    if not out:  # no single change is enough: combine them, cheapest first
        combo, words = {}, []
        for change, word in (({"gradient_checkpointing": True}, "gradient checkpointing"),
                             ({"method": "qlora"} if method != "qlora" else {}, "QLoRA"),
                             ({"batch_size": 1} if batch > 1 else {}, "batch 1")):
            if change and any(base.get(k, v) != v for k, v in change.items()):
                combo.update(change)
                words.append(word)
                if fits(**combo):
                    break
        seq_ok = max_seq_len_that_fits(arch, gpu, upper=seq, **{**base, **combo})
        if seq_ok >= min(seq, 64):
            if seq_ok < seq:
                words.append(f"seq {_round_down(seq_ok)}")
            out.append(" with ".join([words[0], " and ".join(words[1:])]) if len(words) > 1 else words[0])
    bigger = smallest_gpu(arch, **base)
    if bigger is not None and _gpu_bytes(bigger) > _gpu_bytes(gpu):
        out.append(f"a bigger GPU ({bigger})")
    return out


def _round_down(n: int) -> int:
    """Round a sequence length down to a multiple of 64 (what a learner would set)."""
    return n - n % 64 if n >= 64 else n


def _gpu_name(gpu) -> str:
    if isinstance(gpu, GPU):
        return gpu.name
    if isinstance(gpu, str):
        return gpu
    return f"a {int(gpu) / GIB:.1f} GiB GPU"


def verdict(model, gpu, **kwargs) -> str:
    """One sentence: does the step fit on `gpu`, with how much to spare, and what to try if not.

    A pure function of its inputs (used by the notebook's calculator and tested on its own).

    Example:
        "fits on a Colab T4 with 2.1 GiB to spare" or
        "needs 19.3 GiB, more than a Colab T4's 14.7 GiB: try gradient checkpointing, seq 512, or QLoRA"

    Raises:
        ValueError: for bad inputs, from `estimate`.
    """
    cap = _gpu_bytes(gpu)  # first: a bad GPU is refused before anything else
    est = quiet_estimate(model, **kwargs)
    name = _gpu_name(gpu)
    if est.fits(gpu):
        return f"fits on {_article(name)} with {(cap - est.total) / GIB:.1f} GiB to spare (needs {est.total / GIB:.1f} GiB)"
    tips = suggestions(model, gpu, **kwargs)
    text = f"needs {est.total / GIB:.1f} GiB, more than {_article(name)}'s {cap / GIB:.1f} GiB"
    if tips:
        text += ": try " + (", ".join(tips[:-1]) + ", or " + tips[-1] if len(tips) > 1 else tips[0])
    else:
        text += ": no single change on our list makes it fit; shrink the model"
    return text


def _article(name: str) -> str:
    if name.startswith("a "):
        return name
    return ("an " if name[:1].upper() in "AEIOUH" and not name.startswith("H100") and not name.startswith("H200")
            else "a ") + name


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    """`python -m lora_lab.estimation.vram --model Qwen/Qwen2.5-7B --method qlora --rank 16 --batch-size 4 --seq-len 512`."""
    parser = argparse.ArgumentParser(prog="python -m lora_lab.estimation.vram", description="Estimate fine-tuning GPU memory.")
    parser.add_argument("--model", required=True, help="preset name, config.json path, Hub id (Colab) or parameter count")
    parser.add_argument("--method", required=True, help="full, lora or qlora")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="all-linear", help="all-linear or comma-separated module names")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--precision", default="bf16", help="fp32, bf16, fp16 or mixed")
    parser.add_argument("--no-autocast", action="store_true",
                        help="pure 16-bit loading (default: autocast, as the Trainer's bf16/fp16 flags do)")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--no-double-quant", action="store_true")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--sharding", default=None)
    parser.add_argument("--gpu", default=None, help=f"say whether it fits on one of: {', '.join(GPUS)}")
    parser.add_argument("--json", action="store_true", help="print to_dict() as JSON")
    args = parser.parse_args(argv)
    try:
        model = parse_model_text(args.model)
    except ValueError as err:
        parser.error(str(err))
    kwargs = dict(method=args.method, rank=args.rank, target_modules=args.targets, batch_size=args.batch_size,
                  seq_len=args.seq_len, gradient_checkpointing=not args.no_gradient_checkpointing,
                  optimizer=args.optimizer, precision=args.precision, autocast=not args.no_autocast,
                  attention=args.attention,
                  lora_dropout=args.lora_dropout, double_quant=not args.no_double_quant,
                  num_gpus=args.num_gpus, sharding=args.sharding)
    try:
        est = estimate(model, **kwargs)
        line = verdict(model, args.gpu, **kwargs) if args.gpu else None
    except ValueError as err:
        parser.error(str(err))  # exits with status 2
    if args.json:
        d = est.to_dict()
        if line:
            d["verdict"] = line
        print(json.dumps(d, indent=1))
    else:
        print(est)
        if line:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
