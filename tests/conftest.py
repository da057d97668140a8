"""Shared fixtures: the cpu profile's tiny model, built once per machine and cached.

Also: a deprecated API called by the package itself fails the test that reached it (see
`_fail_on_our_deprecated_calls`), while deprecations raised between third-party libraries stay
ordinary warnings.
"""

import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PACKAGE_DIR = str(Path(__file__).resolve().parents[1] / "src" / "lora_lab")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_warn = warnings.warn


def _is_ours(frame) -> bool:
    import lora_lab

    name = frame.f_code.co_filename if frame else ""
    return name.startswith(PACKAGE_DIR) or name.startswith(str(Path(lora_lab.__file__).parent))


def _fail_on_our_deprecated_calls(message, category=None, stacklevel=1, source=None, **kwargs):
    """`warnings.warn`, except that a deprecation warned about a call made by lora_lab raises instead.

    Libraries warn inside the deprecated function (stacklevel 1: its caller is the culprit) or
    point at their caller (stacklevel 2): either frame in lora_lab means the package called an API
    that is going away. `filterwarnings` by module cannot see this (the warning is attributed to
    the library), hence the hook.
    """
    category = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(category, DEPRECATIONS):
        frame = sys._getframe(1)
        for _ in range(stacklevel - 1):
            frame = frame.f_back if frame else None
        caller = frame.f_back if frame else None
        culprit = next((f for f in (frame, caller) if f is not None and _is_ours(f)), None)
        if culprit is not None:
            raise category(f"{message} [called from {culprit.f_code.co_filename}:{culprit.f_lineno}: use the "
                           "current API]")
    return _warn(message, category, stacklevel + 1, source, **kwargs)


warnings.warn = _fail_on_our_deprecated_calls


def pytest_configure(config):
    """Library messages the package silences for learners (lora_lab.runtime.quiet) are not test failures either."""
    from lora_lab.runtime import quiet

    for category, message, _why in quiet.LIBRARY_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@pytest.fixture(scope="session")
def tiny_model_path():
    """Folder of the cpu profile's tiny base model (built on first use, then reused)."""
    from lora_lab.standins import tiny

    return tiny.ensure_tiny_model()
