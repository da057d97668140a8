"""Is a difference bigger than its noise? The one rule every comparison in the course states its verdict by.

Train the same configuration with another seed and its score moves: a different random start and a
different order of examples. That movement, the seed-to-seed spread, is the smallest difference a
comparison can see. The rule here:

* run each side with at least `MIN_SEEDS` seeds;
* the spread is the larger of the two sides' ranges (highest minus lowest over its seeds);
* one side is better only when the gap between the two means is larger than that spread;
  otherwise there is no measurable difference, whichever mean happens to be lower.

With fewer seeds the spread is unknown, and no difference counts as measured.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

MIN_SEEDS = 3  # seeds per side before a spread is measured at all


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing side `a` with side `b` on one metric."""

    a: str  # the first side's name, e.g. "r=4"
    b: str  # the second side's name
    values_a: tuple[float, ...]  # the metric, one value per seed
    values_b: tuple[float, ...]
    metric: str = "held-out loss"  # what was measured, for the sentence
    lower_is_better: bool = True  # a loss: lower wins; exact match: higher wins

    @property
    def mean_a(self) -> float:
        return fmean(self.values_a)

    @property
    def mean_b(self) -> float:
        return fmean(self.values_b)

    @property
    def gap(self) -> float:
        """How far apart the two means are (always >= 0)."""
        return abs(self.mean_a - self.mean_b)

    @property
    def spread(self) -> float | None:
        """The larger seed-to-seed range of the two sides; None with fewer than MIN_SEEDS seeds on a side."""
        if min(len(self.values_a), len(self.values_b)) < MIN_SEEDS:
            return None
        return max(max(v) - min(v) for v in (self.values_a, self.values_b))

    @property
    def measurable(self) -> bool:
        return self.spread is not None and self.gap > self.spread

    @property
    def better(self) -> str | None:
        """The winning side's name, or None when the difference is not measurable."""
        if not self.measurable:
            return None
        a_lower = self.mean_a < self.mean_b
        return self.a if a_lower == self.lower_is_better else self.b

    def line(self, digits: int = 3) -> str:
        """One sentence that says what the runs showed, with the numbers it rests on."""
        n = min(len(self.values_a), len(self.values_b))
        means = f"{self.mean_a:.{digits}f} against {self.mean_b:.{digits}f}"
        if self.spread is None:
            return (f"No measurable difference between {self.a} and {self.b} in {self.metric}: {means} from "
                    f"{n} seed(s) per side, too few to measure the seed-to-seed spread ({MIN_SEEDS} needed).")
        if not self.measurable:
            return (f"No measurable difference between {self.a} and {self.b} in {self.metric}: {means} (means of "
                    f"{n} seeds) differ by {self.gap:.{digits}f}, not more than the seed-to-seed spread of "
                    f"{self.spread:.{digits}f}.")
        if self.better == self.a:
            worse, means = self.b, f"{self.mean_a:.{digits}f} against {self.mean_b:.{digits}f}"
        else:
            worse, means = self.a, f"{self.mean_b:.{digits}f} against {self.mean_a:.{digits}f}"
        return (f"{self.better} beats {worse} in {self.metric}: {means} (means of {n} seeds), a gap of "
                f"{self.gap:.{digits}f}, {self.gap / max(self.spread, 1e-12):.1f}x the seed-to-seed spread of "
                f"{self.spread:.{digits}f}.")


def compare(a: str, values_a: Sequence[float], b: str, values_b: Sequence[float], metric: str = "held-out loss",
            lower_is_better: bool = True) -> Verdict:
    """Compare two sides, each measured once per seed, by the rule in this module's docstring."""
    if not values_a or not values_b:
        raise ValueError(f"compare needs at least one value per side ({a}: {len(values_a)}, {b}: {len(values_b)})")
    return Verdict(a, b, tuple(float(v) for v in values_a), tuple(float(v) for v in values_b), metric,
                   lower_is_better)
