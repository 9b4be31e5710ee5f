"""The bisection behind budget calibration (tuning.budget.bisect_knob), on known functions."""
from __future__ import annotations

import math

import pytest

from tuning.budget import bisect_knob


def test_finds_the_target_of_a_smooth_increasing_function_within_tolerance():
    f = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    b = bisect_knob(f, 0.8, -10, 10, start=0.0, tolerance=0.01, max_evals=20)
    assert b.converged and abs(b.best_value - 0.8) <= 0.01
    assert b.evaluations[0][0] == 0.0                      # starts where the user's config is
    assert len(b.evaluations) < 20


def test_stops_at_the_first_evaluation_inside_the_tolerance():
    calls = []
    b = bisect_knob(lambda u: calls.append(u) or 0.5, 0.52, 0, 1, start=0.3, tolerance=0.05, max_evals=9)
    assert calls == [0.3] and b.converged and b.best_u == 0.3


def test_a_step_function_returns_the_closest_evaluation_when_the_target_is_unreachable():
    """Pruned fractions move in steps of 1/G: a target between two steps is missed, the closest is kept."""
    f = lambda u: 0.25 if u < 2.0 else 0.75  # noqa: E731
    b = bisect_knob(f, 0.5, -4, 8, start=0.0, tolerance=0.1, max_evals=6)
    assert not b.converged and len(b.evaluations) == 6 and b.best_value in (0.25, 0.75)
    us = [u for u, _ in b.evaluations]
    assert min(abs(u - 2.0) for u in us[1:]) < 0.5         # the bracket closed in on the step


def test_start_outside_the_range_is_clamped_and_a_noisy_function_still_improves():
    import random

    rng = random.Random(0)
    f = lambda u: min(1.0, max(0.0, u / 10 + rng.uniform(-0.02, 0.02)))  # noqa: E731
    b = bisect_knob(f, 0.3, 0.0, 10.0, start=50.0, tolerance=0.03, max_evals=8)
    assert b.evaluations[0][0] == 10.0 and abs(b.best_value - 0.3) <= 0.03


@pytest.mark.parametrize("kw,frag", [({"lo": 1.0, "hi": 1.0}, "empty range"), ({"max_evals": 0}, "max_evals")])
def test_bad_arguments(kw, frag):
    args = dict(f=lambda u: u, target=0.5, lo=0.0, hi=1.0, start=0.5, tolerance=0.1, max_evals=3) | kw
    with pytest.raises(ValueError, match=frag):
        bisect_knob(**args)


def test_interpolation_needs_fewer_evaluations_than_halving_on_a_smooth_curve():
    """The pruned fraction is smooth in logit α0: once bracketed, interpolation lands close at once."""
    f = lambda u: 1 / (1 + math.exp(-(u - 5.3)))  # noqa: E731
    b = bisect_knob(f, 0.5, -3.0, 14.0, start=0.85, tolerance=0.03, max_evals=10)
    assert b.converged and len(b.evaluations) <= 5, b.evaluations   # halving alone needs 6 here
