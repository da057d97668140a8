"""The one rule every comparison states its verdict by: a difference counts only when it is bigger than the
seed-to-seed spread, measured with at least three seeds a side."""

import pytest

from lora_lab.lessons import verdicts


def test_a_gap_inside_the_spread_is_no_measurable_difference():
    v = verdicts.compare("r=16", [0.44, 0.64, 0.50], "r=64", [0.40, 0.45, 0.55])
    assert v.spread == pytest.approx(0.20) and v.gap == pytest.approx(0.06)
    assert not v.measurable and v.better is None
    assert v.line().startswith("No measurable difference between r=16 and r=64 in held-out loss")
    assert "0.200" in v.line()


def test_a_gap_beyond_the_spread_names_the_better_side_by_the_metric_direction():
    loss = verdicts.compare("r=1", [1.25, 1.30, 1.28], "r=64", [0.40, 0.42, 0.39])
    assert loss.measurable and loss.better == "r=64"
    assert loss.line().startswith("r=64 beats r=1 in held-out loss: 0.403 against 1.277 (means of 3 seeds)")
    match = verdicts.compare("r=1", [0.10, 0.12, 0.11], "r=64", [0.70, 0.72, 0.75], metric="exact match",
                             lower_is_better=False)
    assert match.better == "r=64"
    flipped = verdicts.compare("r=1", [0.10, 0.12, 0.11], "r=64", [0.70, 0.72, 0.75], metric="exact match")
    assert flipped.better == "r=1"  # a loss-like metric: the lower mean wins


def test_a_gap_equal_to_the_spread_is_not_enough():
    v = verdicts.compare("a", [1.0, 1.25, 1.5], "b", [1.5, 1.75, 2.0])  # exact in binary: gap 0.5, spread 0.5
    assert v.gap == v.spread == 0.5 and not v.measurable
    assert verdicts.compare("a", [1.0, 1.25, 1.5], "b", [1.75, 2.0, 2.25]).measurable  # gap 0.75 > 0.5
    edge = verdicts.compare("a", [0.0, 0.0, 0.0], "b", [1.0, 1.0, 1.0])
    assert edge.spread == 0.0 and edge.measurable  # identical seeds: any gap is measured
    same = verdicts.compare("a", [0.5, 0.5, 0.5], "b", [0.5, 0.5, 0.5])
    assert not same.measurable and "No measurable difference" in same.line()


def test_fewer_than_three_seeds_never_measures_a_difference():
    huge = verdicts.compare("QLoRA", [0.59], "LoRA", [0.10], metric="exact match", lower_is_better=False)
    assert huge.spread is None and not huge.measurable and huge.better is None
    assert huge.line().startswith("No measurable difference between QLoRA and LoRA in exact match")
    assert "1 seed(s) per side" in huge.line()
    two = verdicts.compare("a", [1.0, 1.0], "b", [5.0, 5.0, 5.0])
    assert not two.measurable


def test_an_empty_side_is_refused():
    with pytest.raises(ValueError, match="at least one value per side"):
        verdicts.compare("a", [], "b", [1.0])
