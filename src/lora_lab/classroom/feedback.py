"""What a wrong number is told, the same way in quizzes and exercise checks.

- **Close** means close for this answer: within ten times its tolerance (at most 25%), or for an exact
  answer within 5%. An exact count off by one is close only when the count is large (100 or more);
  for a small count (alpha / r = 2) one off is simply wrong.
- **Units**: a percentage given where a fraction is asked (25 for 0.25), or the reverse, is named as
  such, and so is an answer off by a factor of 1,024 (GiB against MiB, MiB against bytes) or 1,000.
- The tolerance is written as it is: "within 0.2%", never a rounded "within 0%".
- **The most common mistake** of each exercise and numeric question is computed like the right answer
  (`Mistake`): an answer that equals it gets the hint written for that mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The widest band called close, relative to the answer.
NEAR = 0.25
#: An exact answer's close band, relative to it.
EXACT_NEAR = 0.05
#: An exact count this large may be called close when off by one.
LARGE_COUNT = 100


def tolerance_words(rel_tol: float) -> str:
    """'exactly' or 'within 0.2%' (as many digits as the tolerance needs)."""
    if not rel_tol:
        return "exactly"
    return f"within {100 * rel_tol:.3g}%"


def unit_slip(given: float, right: float, rel_tol: float) -> str | None:
    """The unit or scale mistake that explains `given`, if one does."""
    def near(value):
        return right and math.isclose(value, right, rel_tol=max(rel_tol, 0.01))

    if 0 < abs(right) <= 1 and near(given / 100):
        return "this looks like a percentage; give it as a fraction (0.25 for 25%)"
    if abs(right) > 1 and near(given * 100) and abs(given) <= 1:
        return "this looks like a fraction; give it as a percentage (25 for 0.25)"
    for factor, words in ((1024, "a factor of 1,024: check the unit (bytes, KiB, MiB, GiB)"),
                          (1000, "a factor of 1,000: check the unit (GB against MB, or billions)")):
        if near(given * factor) or near(given / factor):
            return f"off by {words}"
    return None


def number_verdict(given: float, right: float, rel_tol: float) -> str | None:
    """None when `given` is right; else the words for it: a unit slip, close (and which way), or too high/low."""
    if math.isclose(given, right, rel_tol=rel_tol, abs_tol=1e-12):
        return None
    slip = unit_slip(given, right, rel_tol)
    if slip:
        return f"Not yet: {slip}."
    direction = "high" if given > right else "low"
    if not rel_tol and float(right).is_integer() and abs(right) < LARGE_COUNT:
        close = False  # a small exact count: one off is simply wrong
    else:
        band = min(NEAR, 10 * rel_tol) if rel_tol else EXACT_NEAR
        close = math.isclose(given, right, rel_tol=band) or (not rel_tol and abs(given - right) <= 1)
    if close:
        return f"Close, but a little too {direction} (the answer must be right {tolerance_words(rel_tol)})."
    return f"Too {direction}."


@dataclass(frozen=True)
class Mistake:
    """The wrong answer learners most often give, computed the way they compute it, and the hint for it."""

    what: str  # the slip in a few words, e.g. "forgot gradient accumulation"
    answer: Callable[[], Any]  # the answer that slip produces, computed by the package
    hint: str  # what to reconsider, without the right answer
