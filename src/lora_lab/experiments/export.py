"""After the run: a model and its LoRA adapter to GGUF for llama.cpp and Ollama, checked against PyTorch.

The conversion uses llama.cpp's own converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`,
their `conversion/` package and the gguf-py they ship with), taken from the pinned `llama-cpp-python`
source distribution on PyPI; nothing here converts tensors by itself. The GGUF
files are then loaded by a real llama.cpp: node-llama-cpp's prebuilt CPU build (npm), driven by
`llama_runtime/llama_eval.mjs`, and its logits are compared with transformers/peft on the same tokens.

Everything built is cached under `units.cache_dir("export")` ($LORA_LAB_CACHE): the extracted
converters, the npm runtime and each GGUF file (keyed by a hash of its inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lora_lab.runtime import units

#: llama.cpp's converters come from this sdist (its vendored llama.cpp); gguf-py inside it is 0.19.0.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: The sdist's vendored gguf-py (the converters' tensor writer). PyPI's `gguf` 0.19.0 carries the same
#: version number but is older code: the pinned converters fail with it (`gguf.LazyChunkedTensor`
#: missing), so the vendored copy is extracted and used, and its version is checked.
GGUF_VERSION = "0.19.0"
#: Only used to read the sdist's metadata without building it (see `fetch_converters`).
SCIKIT_BUILD_CORE_VERSION = "0.11.6"
#: npm's node-llama-cpp and its prebuilt Linux x86-64 CPU binaries (pinned with a lock file).
NODE_LLAMA_CPP_VERSION = "3.22.1"

#: Output types the pinned `convert_hf_to_gguf.py` can write itself. q4_K_M is not among them: it
#: needs llama.cpp's compiled `llama-quantize`, which neither the sdist (uncompiled) nor node-llama-cpp ships.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

#: Largest difference in next-token probability accepted between llama.cpp and PyTorch, per file type,
#: for the course's tiny model (f32 reference), on top of identical greedy tokens. (Top-5 sets are
#: reported, not required: q8_0 swapped the 5th and 6th candidates of a near-tie at 1 of 24 steps here.)
#: Probabilities, not raw logits: the largest |logit difference| depends on the CPU's kernels (q8_0:
#: 0.093 on an AVX2 machine, 0.516 on an AVX-512/AMX one, with the same greedy and top-5 tokens),
#: while what a user sees (which tokens, with what probability) does not. The logit difference is
#: still measured and printed (`Agreement.max_abs_logit_diff`). f32 differs only by summation order,
#: f16 by rounding each weight to 11 significant bits, q8_0 by 8-bit blocks of 32 weights with one
#: f16 scale each. Measured (max |prob diff| on an AVX2 CPU): f32 0.0006, f16 0.0009, q8_0 0.012.
TOLERANCES = {"f32": 0.01, "f16": 0.02, "q8_0": 0.1}

_SDIST_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/gguf/")
_RUNTIME_FILES = ("package.json", "package-lock.json", "llama_eval.mjs")


class ExportToolsMissing(RuntimeError):
    """The converters or the llama.cpp runtime are not installed yet; the message says which command does it."""


def export_cache() -> Path:
    """Root of everything this module builds: `units.cache_dir("export")`."""
    return units.cache_dir("export")


# --------------------------------------------------------------------------- the converters


def converters_dir() -> Path:
    """Where the converter scripts of the pinned sdist are extracted."""
    return export_cache() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def _sdist_path() -> Path:
    return export_cache() / "downloads" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def fetch_converters(download: bool = True) -> Path:
    """Extract llama.cpp's converters from the pinned llama-cpp-python sdist into the cache.

    The sdist is downloaded with pip (`pip download --no-binary :all:`), nothing is compiled. pip reads
    an sdist's metadata before saving it, which normally builds an isolated environment with cmake;
    giving it the build backend (scikit-build-core, pure Python) with `--no-build-isolation` skips that.

    Args:
        download: fetch the sdist from PyPI when it is not cached (False: fail with a clear message).

    Returns:
        The folder holding `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py` and `conversion/`.
    """
    out = converters_dir()
    if (out / ".complete").exists():
        return out
    sdist = _sdist_path()
    if not sdist.exists():
        if not download:
            raise ExportToolsMissing(f"llama.cpp's converters are not in {out}: run `make gguf-tools`.")
        sdist.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            backend = Path(tmp) / "backend"
            pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "install", "--target", str(backend),
                            f"scikit-build-core=={SCIKIT_BUILD_CORE_VERSION}"], check=True)
            env = {**os.environ, "PYTHONPATH": str(backend)}
            subprocess.run([*pip, "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                            "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], check=True, env=env)
            shutil.move(str(Path(tmp) / sdist.name), sdist)
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        vendored_gguf = None
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if name == "gguf-py/pyproject.toml":
                text = tar.extractfile(member).read().decode()
                vendored_gguf = next(line.split('"')[1] for line in text.splitlines() if line.startswith("version"))
            if member.isfile() and name.startswith(_SDIST_MEMBERS) and name.endswith((".py", ".typed")):
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    if vendored_gguf != GGUF_VERSION:
        raise RuntimeError(f"the sdist vendors gguf-py {vendored_gguf}, the course pins gguf {GGUF_VERSION}")
    (staging / ".complete").write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    sdist.unlink()  # 75 MB, of which the 2 MB extracted are all we use
    return out


#: Qwen2's split rule, as transformers writes it into tokenizer.json (llama.cpp's "qwen2" pre-tokenizer).
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def declared_pre_tokenizer(model_dir: str | os.PathLike) -> str | None:
    """The llama.cpp pre-tokenizer name to declare for a tokenizer the converter does not recognise.

    The converter identifies a BPE pre-tokenizer by hashing how it splits a fixed text, and rejects
    any hash it has not seen. A plain byte-level BPE (`ByteLevel` with GPT-2's split regex, as the
    course's tiny tokenizer) splits exactly like GPT-2, so it can be declared as `gpt-2`; Qwen2's
    split rule with a trained vocabulary of its own (the rehearsal's stand-in) as `qwen2`. Anything
    else returns None: the converter's own error then stands.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        return None
    tok = json.loads(path.read_text())
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and tok.get("normalizer") is None:
        return "gpt-2"
    # Qwen2's pre-tokenizer (transformers writes it for every Qwen2 tokenizer, the t4 rehearsal's stand-in
    # included): its own split regex, then byte-level without a regex, after NFC. llama.cpp calls it "qwen2".
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
            and (parts[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT_REGEX
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)
            and (tok.get("normalizer") or {}).get("type") in (None, "NFC")):
        return "qwen2"
    return None


# Runs converter scripts, one after the other, in one fresh interpreter (torch is imported once).
# Only the unrecognised-pre-tokenizer case is changed, and only where a job declares a name.
_LAUNCHER = r"""
import json, os, runpy, sys
jobs = json.loads(sys.argv[1])
sys.path.insert(0, os.path.dirname(jobs[0]["script"]))
from conversion import base
original = base.TextModel.get_vocab_base_pre
declared = None
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        if not declared:
            raise
        print(f"lora_lab: pre-tokenizer not in the converter's list, declared as {declared!r}", file=sys.stderr)
        return declared
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
for job in jobs:
    declared = job["pre"]
    sys.argv = [job["script"], *job["args"]]
    runpy.run_path(job["script"], run_name="__main__")
    os.replace(job["part"], job["out"])
"""


def _run_converters(jobs: list[dict]) -> None:
    """Run the pending jobs ({script, args, model_dir, out}) in one subprocess; skip cached outputs."""
    jobs = [j for j in jobs if not Path(j["out"]).exists()]
    if not jobs:
        return
    tools = fetch_converters(download=False)
    try:  # the converter imports sentencepiece before it looks for a sentencepiece model, even for BPE
        import sentencepiece  # noqa: F401
    except ImportError:
        raise ExportToolsMissing("llama.cpp's converter imports sentencepiece even for a BPE tokenizer: "
                                 "pip install -r requirements.txt") from None
    payload = []
    for job in jobs:
        out = Path(job["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")
        payload.append({"script": str(tools / job["script"]), "args": [*job["args"], "--outfile", str(part)],
                        "pre": declared_pre_tokenizer(job["model_dir"]), "part": str(part), "out": str(out)})
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the scripts then import the vendored gguf-py next to them
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(payload)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"llama.cpp's converter failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def _hash_folder(folder, patterns=("*.json", "*.safetensors", "*.jinja")) -> str:
    h = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(Path(folder).glob(pattern)):
            h.update(path.name.encode())
            h.update(units.file_sha256(path).encode())
    return h.hexdigest()[:12]


def _check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: choose one of {OUTTYPES} (q4_K_M needs llama.cpp's llama-quantize)")


def check_export_inputs(model_dir, adapter_dir=None, out_dir=None) -> None:
    """Refuse, in one line, a folder llama.cpp's converter would fail on with a long traceback or a wrong hint.

    Raises:
        ValueError: a missing folder, no config.json or no `architectures` in it, no safetensors weights, no
            tokenizer files, an adapter folder without its config or weights, or an output path that is a file.
    """
    model = Path(model_dir)
    if not model.is_dir():
        raise ValueError(f"{model} is not a folder: pass a save_pretrained folder (config.json, *.safetensors, tokenizer).")
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{model} has no readable config.json: pass a folder written by save_pretrained.") from None
    if not isinstance(config, dict) or not config.get("architectures"):
        raise ValueError(f"{model}/config.json names no architecture (\"architectures\"): the converter cannot tell "
                         "which model it is; save the model with save_pretrained.")
    if not any(model.glob("*.safetensors")):
        raise ValueError(f"{model} has no *.safetensors weights: save the model with save_pretrained.")
    if not any((model / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ValueError(f"{model} has no tokenizer files (tokenizer.json): save the tokenizer beside the model "
                         "(tokenizer.save_pretrained(folder)); folders written by lora_lab.training.train include it.")
    if adapter_dir is not None:
        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").is_file() or not (adapter / "adapter_model.safetensors").is_file():
            raise ValueError(f"--adapter {adapter} is not a peft LoRA folder (adapter_config.json and "
                             "adapter_model.safetensors).")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder: choose another path.")


def export(model_dir: str | os.PathLike, outtypes=("f16",), adapter_dir: str | os.PathLike | None = None,
           adapter_outtype: str = "f32", out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """A Hugging Face model folder to GGUF files (one per outtype) and, optionally, its peft adapter to a
    GGUF LoRA; all in one converter process, each file cached by a hash of its inputs.

    Args:
        model_dir: a `save_pretrained` folder with safetensors and tokenizer (the base, or a merged model).
        outtypes: any of OUTTYPES.
        adapter_dir: a peft LoRA folder trained on `model_dir` (written as the `"lora"` entry).
        adapter_outtype: the adapter's tensor type (f32 keeps peft's fp32 LoRA matrices as they are).
        out_dir: where to write; default `export_cache()/gguf`.

    Returns:
        {outtype: path} for the model files, plus {"lora": path} for the adapter.
    """
    for outtype in outtypes:
        _check_outtype(outtype)
    check_export_inputs(model_dir, adapter_dir, out_dir)
    folder = Path(out_dir or export_cache() / "gguf")
    key = _hash_folder(model_dir)
    jobs, paths = [], {}
    for outtype in outtypes:
        _check_outtype(outtype)
        paths[outtype] = folder / f"model-{key}-{outtype}.gguf"
        jobs.append({"script": "convert_hf_to_gguf.py", "args": [str(model_dir), "--outtype", outtype],
                     "model_dir": model_dir, "out": paths[outtype]})
    if adapter_dir is not None:
        _check_outtype(adapter_outtype)
        paths["lora"] = folder / f"lora-{_hash_folder(adapter_dir)}-{key[:6]}-{adapter_outtype}.gguf"
        jobs.append({"script": "convert_lora_to_gguf.py", "model_dir": model_dir, "out": paths["lora"],
                     "args": [str(adapter_dir), "--base", str(model_dir), "--outtype", adapter_outtype]})
    _run_converters(jobs)
    return paths


def gguf_metadata(path: str | os.PathLike, keys=("general.architecture", "general.file_type",
                                                  "tokenizer.ggml.model", "tokenizer.ggml.pre")) -> dict:
    """A few metadata fields of a GGUF file, read with the vendored gguf-py."""
    gguf_py = str(fetch_converters(download=False) / "gguf-py")
    if gguf_py not in sys.path:
        sys.path.append(gguf_py)
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key in keys:
        f = reader.fields.get(key)
        if f is not None:
            out[key] = f.contents()
    out["tensors"] = len(reader.tensors)
    return out


# --------------------------------------------------------------------------- the llama.cpp runtime


def runtime_dir() -> Path:
    """Where the pinned node-llama-cpp is installed (npm ci from the shipped lock file)."""
    return export_cache() / f"node-llama-cpp-{NODE_LLAMA_CPP_VERSION}"


def install_runtime(install: bool = True) -> Path:
    """Install node-llama-cpp and its prebuilt Linux x86-64 CPU build from npm, pinned by lock file.

    `--ignore-scripts` skips its postinstall step (which may download or compile llama.cpp); the
    prebuilt binaries come as the npm package `@node-llama-cpp/linux-x64`. `--omit=optional` keeps the
    CUDA/Vulkan/other-platform builds out. Nothing outside the npm registry is fetched.
    """
    out = runtime_dir()
    here = Path(__file__).resolve().parents[1] / "llama_runtime"
    stamp = out / ".complete"
    wanted = hashlib.sha256(b"".join((here / f).read_bytes() for f in _RUNTIME_FILES[:2])).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        shutil.copyfile(here / _RUNTIME_FILES[2], out / _RUNTIME_FILES[2])  # the script itself: always current
        return out
    if not install:
        raise ExportToolsMissing(f"the llama.cpp runtime is not in {out}: run `make gguf-tools` (needs npm).")
    check_node()
    if shutil.which("npm") is None:
        raise ExportToolsMissing(f"npm is not installed (it comes with Node.js from NodeSource or nodejs.org): {NODE_HELP}.")
    out.mkdir(parents=True, exist_ok=True)
    for f in _RUNTIME_FILES:
        shutil.copyfile(here / f, out / f)
    # `npm install` (not `ci`): the lock file lists only this platform's optional builds, which `ci` rejects
    subprocess.run(["npm", "install", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=out, check=True, env={**os.environ, "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true"})
    stamp.write_text(wanted)
    return out


#: node-llama-cpp's prebuilt Linux build runs on Node.js 20 or newer ("engines" in llama_runtime/package-lock.json).
MIN_NODE_MAJOR = 20
#: What to do about a missing or old Node.js. Colab runs as root (no sudo); NodeSource's package includes npm.
NODE_HELP = ("install Node.js 22 LTS: on Colab run `!curl -fsSL https://deb.nodesource.com/setup_22.x | bash - && "
             "apt-get install -y nodejs` (NodeSource; on Debian/Ubuntu the same with sudo), on a laptop get the "
             "installer from https://nodejs.org, then rerun this cell")


def check_node() -> str:
    """The installed Node.js version ("v20.11.1"); `ExportToolsMissing` with one line if it is missing or older
    than `MIN_NODE_MAJOR` (node-llama-cpp, notebook 06's llama.cpp, needs it)."""
    node = shutil.which("node")
    if node is None:
        raise ExportToolsMissing(f"Node.js is not installed; notebook 06's llama.cpp check needs it: {NODE_HELP}.")
    try:
        printed = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ExportToolsMissing(f"`node --version` failed ({type(err).__name__}): {NODE_HELP}.") from None
    version = printed.splitlines()[0] if printed else ""
    match = re.match(r"v?(\d+)\.", version)
    if match is None:
        raise ExportToolsMissing(f"`{node} --version` printed {version or 'nothing'!r}, not a Node.js version "
                                 f"(node-llama-cpp needs {MIN_NODE_MAJOR} or newer): {NODE_HELP}.")
    if int(match.group(1)) < MIN_NODE_MAJOR:
        raise ExportToolsMissing(f"Node.js {version} ({node}) is too old for node-llama-cpp, which needs "
                                 f"{MIN_NODE_MAJOR} or newer: {NODE_HELP}.")
    return version


def setup_tools() -> dict:
    """Fetch the converters and install the runtime (cached); return the pinned versions.

    Raises:
        ExportToolsMissing: with one line saying what to install (Node.js 20+, npm).
    """
    fetch_converters()
    check_node()
    install_runtime()
    return {"llama-cpp-python (converters)": LLAMA_CPP_PYTHON_VERSION, "gguf-py (vendored)": GGUF_VERSION,
            "node-llama-cpp (runtime)": NODE_LLAMA_CPP_VERSION}


@dataclass
class LlamaRun:
    """What llama.cpp returned for one token sequence."""

    logits: np.ndarray  # (steps, vocab): next-token logits after the prompt and after each generated token
    generated: list[int]  # greedy tokens


@dataclass
class LlamaResult:
    """One call of the runtime: several sequences on one model (+ adapter)."""

    runs: list[LlamaRun]
    tokenized: list[list[int]] = field(default_factory=list)  # llama.cpp's own tokenization of `texts`
    bos: int | None = None
    eos: int | None = None
    add_bos: bool = False  # whether llama.cpp prepends BOS when it tokenizes a prompt


@dataclass
class LlamaJob:
    """One model file (+ adapter) and the token sequences to run through it."""

    model: str | os.PathLike  # GGUF model file
    token_lists: list[list[int]]  # prompts as token ids (no BOS/EOS added by llama.cpp)
    n_generate: int = 0  # greedy tokens to generate after each prompt
    lora: str | os.PathLike | None = None  # GGUF LoRA adapter
    lora_scale: float = 1.0
    texts: tuple[str, ...] = ()  # strings for llama.cpp to tokenize itself (special tokens parsed)


def llama_cpp_eval_many(jobs: list[LlamaJob], n_vocab: int, threads: int = 1) -> list[LlamaResult]:
    """Run llama.cpp on several jobs in one node process: logits per step, greedy tokens, tokenizations."""
    rt = install_runtime(install=False)
    request = {"n_vocab": n_vocab, "threads": threads, "jobs": [
        {"model": str(j.model), "lora": str(j.lora) if j.lora else None, "lora_scale": j.lora_scale,
         "texts": list(j.texts), "runs": [{"tokens": list(map(int, t)), "n_generate": j.n_generate}
                                          for t in j.token_lists]} for j in jobs]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(request, f)
    try:
        done = subprocess.run(["node", str(rt / "llama_eval.mjs"), f.name], cwd=rt, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode:
        raise RuntimeError(f"llama.cpp (node-llama-cpp) failed:\n{done.stderr[-3000:]}")
    results = []
    for reply in json.loads(done.stdout)["jobs"]:
        runs = [LlamaRun(np.array(r["logits"], dtype=np.float64), r["generated"]) for r in reply["runs"]]
        results.append(LlamaResult(runs, reply["tokenized"], reply["bos"], reply["eos"], reply["add_bos"]))
    return results


def llama_cpp_eval(model_gguf, token_lists, n_vocab: int, *, n_generate: int = 0, lora_gguf=None,
                   lora_scale: float = 1.0, texts=(), threads: int = 1) -> LlamaResult:
    """Run llama.cpp on token sequences of one model (+ adapter); see `llama_cpp_eval_many`."""
    job = LlamaJob(model_gguf, token_lists, n_generate, lora_gguf, lora_scale, tuple(texts))
    return llama_cpp_eval_many([job], n_vocab, threads)[0]


# --------------------------------------------------------------------------- PyTorch side and comparison


def torch_eval(model, token_lists, n_generate: int = 0) -> list[LlamaRun]:
    """The same as `llama_cpp_eval` with a transformers/peft model: logits per step and greedy tokens."""
    import torch

    runs = []
    model.eval()
    for tokens in token_lists:
        device = next(model.parameters()).device
        ids = torch.tensor([list(tokens)], device=device)
        steps, generated = [], []
        with torch.no_grad():
            for k in range(max(n_generate, 1)):
                logits = model(input_ids=ids).logits[0, -1].double().cpu()
                steps.append(logits.numpy())
                if k >= n_generate:
                    break
                token = int(logits.argmax())
                generated.append(token)
                if k + 1 == n_generate:
                    break
                ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
        runs.append(LlamaRun(np.stack(steps), generated))
    return runs


@dataclass
class Agreement:
    """llama.cpp against PyTorch on the same prompts."""

    max_abs_logit_diff: float  # over every prompt, step and vocabulary entry (reported; CPU-dependent)
    top5_same: float  # share of steps whose top-5 token sets are equal
    greedy_same: float  # share of prompts whose greedy generations are identical token by token
    first_divergence: list[int | None]  # per prompt: index of the first differing greedy token
    max_prob_diff: float = 0.0  # largest |p - q| of a next-token probability, over every step and token

    def within(self, tolerance: float) -> bool:
        """Same greedy tokens, and next-token probabilities within `tolerance`."""
        return self.greedy_same == 1.0 and self.max_prob_diff <= tolerance


def compare(reference: list[LlamaRun], other: list[LlamaRun]) -> Agreement:
    """Compare logits step by step (on the reference's tokens while both agree) and greedy tokens."""
    diffs, prob_diffs, top5, same, first = [], [], [], [], []
    for ref, oth in zip(reference, other, strict=True):
        mismatch = [i for i, (x, y) in enumerate(zip(ref.generated, oth.generated, strict=False)) if x != y]
        first.append(mismatch[0] if mismatch else None)
        same.append(not mismatch and len(ref.generated) == len(oth.generated))
        # step k's logits follow prompt + generated[:k]: comparable while both generated the same tokens
        n = min(len(ref.logits), len(oth.logits), mismatch[0] + 1 if mismatch else len(ref.logits))
        for a, b in zip(ref.logits[:n], oth.logits[:n], strict=True):
            diffs.append(float(np.max(np.abs(a - b))))
            prob_diffs.append(float(np.max(np.abs(_softmax(a) - _softmax(b)))))
            top5.append(set(np.argsort(-a)[:5]) == set(np.argsort(-b)[:5]))
    return Agreement(max(diffs), float(np.mean(top5)), float(np.mean(same)), first, max(prob_diffs))


def _softmax(logits) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    weights = np.exp(shifted)
    return weights / weights.sum()


def adapter_to_export(profile, notebook_03_adapter, hw=None):
    """(adapter folder, one line saying where it came from) for notebook 06 on a GPU profile.

    Notebook 03's adapter when that notebook ran in this runtime (or its folder was copied to
    `notebook_03_adapter`); otherwise (each Colab notebook is a new runtime) 06 trains its own, and
    prints one line saying so first: notebook 05's text-to-SQL recipe, a short QLoRA run of 03's task
    with the profile's batch (`own_adapter_run`), preflighted at full size against the GPU memory free
    then (`adapters.train_specialist`, which stops with `preflight.WontFitError` if it cannot fit) and
    cached like 05's specialists.
    """
    from lora_lab.experiments import adapters

    if (Path(notebook_03_adapter) / "adapter_config.json").exists():
        return Path(notebook_03_adapter), f"adapter: notebook 03's, from {notebook_03_adapter}"
    recipe = adapters.default_recipes(profile)[profile.task]
    steps = profile.capped_steps(recipe.max_steps)
    print(f"No adapter from notebook 03 in {Path(notebook_03_adapter).resolve()} (03 did not run in this runtime), "
          f"so this notebook trains its own: {steps} QLoRA steps of batch {profile.batch_size}x{profile.grad_accum} "
          f"on the same '{recipe.task}' task (notebook 05's recipe). To export 03's adapter instead, run notebook 03 "
          "in this runtime first, or copy its adapter folder to that path.")
    run = adapters.train_specialist(profile, recipe, hw=hw)
    how = "reused from the cache" if run.cached else f"trained here in {run.train_seconds:.0f} s"
    return Path(run.adapter_dir), f"adapter: this notebook's own {steps}-step '{recipe.task}' adapter, {how}"


def base_model_dir(profile) -> Path:
    """The local folder of `profile`'s 16-bit base model: downloaded from the Hub (weights, config, tokenizer),
    or in a rehearsal the stand-in built on this machine."""
    from lora_lab.standins import tiny

    local = tiny.resolve_model_path(profile.model_id)
    if Path(local).is_dir():
        return Path(local)
    from huggingface_hub import snapshot_download

    from lora_lab.runtime import hub

    with hub.hub_errors(profile.model_id, "model"):  # no Hub: one line saying what to do
        return Path(snapshot_download(profile.model_id, allow_patterns=["*.json", "*.safetensors", "*.jinja"]))


def own_adapter_run(profile):
    """The `gpu_runs.PlannedRun` of the adapter notebook 06 trains when 03's is absent (`adapter_to_export`):
    notebook 05's run of the profile's task, the same estimate, under 06's name (`tooling.course.t4_plan`)."""
    import dataclasses

    from lora_lab.estimation import gpu_runs
    from lora_lab.experiments import adapters

    run = gpu_runs.specialist_run(profile, adapters.default_recipes(profile)[profile.task])
    return dataclasses.replace(run, notebook="06", run="own adapter")


def merge_dtype(profile):
    """The dtype a merged model is built and saved in: the decision is the profile's, not this machine's.

    fp16 on a GPU profile: a T4 (compute capability 7.5) computes in fp16, and fp32 (what the non-quantized
    weights are after `prepare_model_for_kbit_training`) would double a 3 GB model on the GPU and on disk; the
    t4 rehearsal keeps that decision on the CPU. fp32 on the CPU profiles, the dtype they train and compare in.
    """
    import torch

    return getattr(torch, MERGE_DTYPES.get(profile.name, "float32"))


#: The dtype each profile merges in, by profile name (so the t4 rehearsal keeps t4's); others merge in fp32.
MERGE_DTYPES = {"t4": "float16"}


def check_merge_fits(model_dir, dtype, out_dir) -> int:
    """Bytes the merged model takes in `dtype` (parameters x bytes each), checked before merging.

    Needs `MERGE_MARGIN` times that on the GPU (when CUDA is here: the merged copy is built beside the
    adapted model, whose memory is already taken) and on the disk under `out_dir`.

    Raises:
        preflight.WontFitError: one line saying what is short and what to free or change.
    """
    import torch
    from transformers import AutoConfig

    from lora_lab.estimation import vram
    from lora_lab.estimation.preflight import WontFitError

    bytes_each = torch.finfo(dtype).bits // 8
    params = vram.load_arch(AutoConfig.from_pretrained(model_dir)).total_params
    need = int(params * bytes_each * MERGE_MARGIN)
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        if free < need:
            raise WontFitError(f"The {str(dtype).removeprefix('torch.')} merge needs about {need / 2**30:.1f} GiB of "
                               f"GPU memory and {free / 2**30:.1f} GiB is free: restart the runtime (Runtime > "
                               "Restart session) and run this notebook from the top, which frees what earlier "
                               "cells hold.")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(out_dir).free
    if free_disk < need:
        raise WontFitError(f"Saving the merged model needs about {need / 2**30:.1f} GiB on disk and {out_dir} has "
                           f"{free_disk / 2**30:.1f} GiB free: delete old runs (runs/, build/) or pick another folder.")
    return int(params * bytes_each)


#: Room above the merged weights themselves (15%): the one adapted weight merged at a time in fp32, and buffers.
MERGE_MARGIN = 1.15


# --------------------------------------------------------------------------- Ollama


@dataclass
class ChatParts:
    """A chat template cut into the literal text around each message, read by rendering it."""

    prefix: dict[str, str]  # text before a message's content, per role
    suffix: dict[str, str]  # text after it
    generation_prompt: str  # what `add_generation_prompt=True` appends
    default_system: str  # what the template inserts when no system message is given ('' if nothing)

    def render(self, messages, add_generation_prompt=True) -> str:
        """Rebuild a conversation from the parts (checked against `apply_chat_template`)."""
        text = "" if messages and messages[0]["role"] == "system" else self.default_system
        text += "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")


_MARK = "\u2063{}\u2063"


def chat_parts(tokenizer) -> ChatParts:
    """Cut the tokenizer's chat template into per-role prefix/suffix by rendering marked messages."""
    def render(messages, gen):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    user = _MARK.format("U")
    plain = render([{"role": "user", "content": user}], False)
    with_gen = render([{"role": "user", "content": user}], True)
    generation_prompt = with_gen[len(plain):]
    before_user, after_user = plain.split(user)
    prefix, suffix = {}, {}
    system = _MARK.format("S")
    sys_text = render([{"role": "system", "content": system}, {"role": "user", "content": user}], False)
    s_before, rest = sys_text.split(system)
    s_after = rest[: rest.index(user)]
    # the user prefix is what follows the system block; anything before it without a system is a default
    user_prefix = s_after[len(s_after) - len(before_user):] if s_after.endswith(before_user) else before_user
    default_system = before_user[: len(before_user) - len(user_prefix)]
    prefix["system"], suffix["system"] = s_before, s_after[: len(s_after) - len(user_prefix)]
    prefix["user"], suffix["user"] = user_prefix, after_user
    assistant = _MARK.format("A")
    conv = render([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], False)
    a_before, a_after = conv[len(plain):].split(assistant)
    prefix["assistant"], suffix["assistant"] = a_before, a_after
    return ChatParts(prefix, suffix, generation_prompt, default_system)


def stop_tokens(tokenizer, parts: ChatParts | None = None) -> list[str]:
    """Strings that end an assistant turn: the EOS token and the special tokens closing a message."""
    parts = parts or chat_parts(tokenizer)
    special = set(tokenizer.all_special_tokens) | {str(t) for t in tokenizer.get_added_vocab()}
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    for text in (parts.suffix["assistant"], parts.prefix["user"]):
        for tok in sorted(special, key=len, reverse=True):
            if tok and tok in text and tok not in stops:
                stops.append(tok)
    return [s for s in stops if s != tokenizer.pad_token]


def _go_literal(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile(tokenizer, model_gguf: str, adapter_gguf: str | None = None, *, temperature: float = 0.0) -> str:
    """An Ollama Modelfile: FROM the GGUF base, ADAPTER the GGUF LoRA, the tokenizer's chat template
    translated to Ollama's Go template, and its stop tokens."""
    parts = chat_parts(tokenizer)
    lines = [f"FROM {model_gguf}"]
    if adapter_gguf:
        lines.append(f"ADAPTER {adapter_gguf}")
    go = "{{- if not .System }}" + _go_literal(parts.default_system) + "{{ end }}" if parts.default_system else ""
    go += "{{- range .Messages }}"
    for i, role in enumerate(("system", "user", "assistant")):
        go += ("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}'
        go += _go_literal(parts.prefix[role]) + "{{ .Content }}" + _go_literal(parts.suffix[role])
    go += "{{ end }}{{ end }}" + _go_literal(parts.generation_prompt)
    lines.append(f'TEMPLATE """{go}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer, parts)]
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """`python -m lora_lab.experiments.export tools` installs the tools; `... gguf MODEL_DIR [--adapter DIR]` converts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lora_lab.experiments.export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="fetch the converters and install the llama.cpp runtime (cached)")
    gguf = sub.add_parser("gguf", help="convert a model folder (and a peft adapter) to GGUF")
    gguf.add_argument("model_dir", help="a save_pretrained folder: the base, or a merged model")
    gguf.add_argument("--outtype", nargs="+", default=["f16"], choices=OUTTYPES)
    gguf.add_argument("--adapter", default=None, help="a peft LoRA folder trained on model_dir")
    gguf.add_argument("--out-dir", default=None, help=f"default {export_cache() / 'gguf'}")
    args = parser.parse_args(argv)
    if args.command == "tools":
        for name, version in setup_tools().items():
            print(f"{name}: {version}")
        print(f"cached in {export_cache()}")
        return 0
    try:
        check_export_inputs(args.model_dir, args.adapter, args.out_dir)  # before any download
        fetch_converters()
        for name, path in export(args.model_dir, args.outtype, args.adapter, out_dir=args.out_dir).items():
            print(f"{name}: {path}")
    except (ValueError, ExportToolsMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # the converter itself failed: its own last line says why
        lines = [line for line in str(err).splitlines() if line.strip()]
        print(f"error: {lines[0]}{' ' + lines[-1] if len(lines) > 1 else ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
