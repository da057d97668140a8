"""One clear line when the Hugging Face Hub cannot give us a model or dataset, and what to do about it.

The `t4` profile downloads its model and dataset from the Hub. When that fails, transformers and
datasets raise an `OSError`/`ConnectionError` several causes deep; a learner on Colab sees a page of
traceback. `hub_errors(repo_id, kind)` wraps a download and turns the failures people meet
into a `HubUnavailable` whose one-line message says what happened and what to change:

- gated (HTTP 401/403): the repository needs its licence accepted and a token (Llama, Gemma, ...);
- not found (404): a misspelt id, or a private repository without a token;
- rate-limited (429): wait, or use a token for a higher limit;
- a server error (5xx): the Hub's trouble, not yours;
- unreachable: no network, the Hub down, or `HF_HUB_OFFLINE` set, and nothing in the local cache.

Anything else is re-raised unchanged. The causes are recognised by the exception classes of
huggingface_hub (and, for datasets, the messages it writes), walked along `__cause__`/`__context__`.
"""

from __future__ import annotations

import contextlib
import functools
import os

#: Class names, anywhere in the exception chain, that mean each failure.
_GATED = {"GatedRepoError"}
_NOT_FOUND = {"RepositoryNotFoundError", "DatasetNotFoundError", "RevisionNotFoundError", "EntryNotFoundError"}
_UNREACHABLE = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "ReadTimeout",
                "ConnectError", "TimeoutException", "Timeout", "MaxRetryError", "NameResolutionError"}


#: Seconds `reachable` waits for the Hub to answer before calling it unreachable.
REACH_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=1)
def reachable() -> bool:
    """Whether the Hub can be reached from here, asked once per process: False at once when HF_HUB_OFFLINE is
    set, else whether a TCP connection to its host opens within `REACH_TIMEOUT_S` (instead of the ~30 s of
    retries a download makes before it gives up)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=REACH_TIMEOUT_S).close()
    except OSError:
        return False
    return True


class HubUnavailable(OSError):
    """The Hub could not provide a model or dataset; the message says why and what to do."""


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for e in _chain(err) for cls in type(e).__mro__}


#: How to switch a notebook to the cpu profile: the profile is read by the first cells, so it goes first.
CPU_PROFILE_HOWTO = ("in a notebook: a new first cell `%env LORA_LAB_PROFILE=cpu`, then Runtime > Restart session "
                     "and run all; in a shell: LORA_LAB_PROFILE=cpu")


def http_status(err: BaseException) -> int | None:
    """The HTTP status code of the first response found along the exception chain, if any."""
    for e in _chain(err):
        code = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def explain(err: BaseException, repo_id: str, kind: str = "model") -> str | None:
    """The one-line message for a Hub failure loading `repo_id` (a `kind`: "model" or "dataset"), else None."""
    names = _names(err)
    if "OSError" not in names:  # every Hub failure is an OSError (ConnectionError, FileNotFoundError, ...)
        return None
    text = " ".join(str(e) for e in _chain(err)).lower()
    status = http_status(err)
    page = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    token = ("add your Hugging Face token (on Colab: the key icon, Secrets, a secret named HF_TOKEN with notebook "
             "access; elsewhere `hf auth login`)")
    if status == 429 or ("429" in text and "too many requests" in text):
        return (f"The Hugging Face Hub is limiting requests from this machine (HTTP 429, too many requests) while "
                f"loading the {kind} {repo_id}: wait a few minutes and rerun; a token raises the limit ({token}).")
    if status is not None and 500 <= status < 600:
        return (f"The Hugging Face Hub answered with a server error (HTTP {status}) while loading the {kind} "
                f"{repo_id}: it is having trouble, not you. Check https://status.huggingface.co, wait and rerun; "
                f"without the Hub, run the cpu profile ({CPU_PROFILE_HOWTO}).")
    if names & _GATED or "gated" in text or status in (401, 403):
        return (f"The {kind} {repo_id} is gated on the Hugging Face Hub: accept its terms at {page} with your account, "
                f"{token}, restart the runtime and rerun; or pick a {kind} that is not gated.")
    if names & _UNREACHABLE or "offline" in text or "couldn't connect" in text or "couldn't reach" in text:
        offline = " HF_HUB_OFFLINE is set, so nothing is downloaded." if os.environ.get("HF_HUB_OFFLINE") else ""
        return (f"Could not download the {kind} {repo_id} from the Hugging Face Hub, and it is not in the local "
                f"cache.{offline} Check the network (on Colab: Runtime > Restart session, then rerun) and "
                f"https://status.huggingface.co; without the Hub, run the cpu profile, which downloads nothing "
                f"({CPU_PROFILE_HOWTO}).")
    if names & _NOT_FOUND or status == 404 or "not found" in text or "does not exist" in text or "doesn't exist" in text:
        return (f"The Hugging Face Hub has no {kind} {repo_id}, or it is private: check the id at {page} (for a "
                f"local folder: its path); for a private {kind}, {token}.")
    return None


@contextlib.contextmanager
def hub_errors(repo_id: str, kind: str = "model"):
    """Turn a Hub failure inside the block into a `HubUnavailable` with a one-line message (see `explain`).

    Example:
        with hub_errors("Qwen/Qwen2.5-1.5B-Instruct"):
            tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-1.5B-Instruct")
    """
    if os.path.exists(str(repo_id)):  # a local folder or file: nothing is downloaded
        yield
        return
    try:
        yield
    except HubUnavailable:
        raise
    except Exception as err:
        message = explain(err, repo_id, kind)
        if message is None:
            raise
        raise HubUnavailable(message) from None
