"""Magnitude schedules (noisefast.schedules.constant / linear / polynomial / cosine / interval)."""
import math

import pytest

from noisefast import schedules as S


def test_constant():
    assert S.constant(0.3)(0) == 0.3 and S.constant(0.3)(10**9) == 0.3
    assert S.constant()(5) == 1.0


@pytest.mark.parametrize("start,end", [(1.0, 0.0), (0.0, 2.0), (0.5, 0.5)])
def test_linear_endpoints_and_midpoint(start, end):
    sched = S.linear(start, end, total_steps=100)
    assert sched(0) == start
    assert sched(100) == pytest.approx(end, abs=1e-15)
    assert sched(10**6) == pytest.approx(end, abs=1e-15)  # clamped after total_steps
    assert sched(50) == pytest.approx((start + end) / 2)
    assert sched(25) == pytest.approx(start + 0.25 * (end - start))


def test_polynomial_matches_formula_and_power_one_is_linear():
    sched = S.polynomial(2.0, 0.5, total_steps=40, power=3.0)
    for step in (0, 1, 13, 39, 40, 41):
        progress = min(step, 40) / 40
        assert sched(step) == pytest.approx(0.5 + 1.5 * (1 - progress) ** 3, rel=1e-15)
    lin, poly1 = S.linear(1.0, 0.0, 7), S.polynomial(1.0, 0.0, 7, power=1.0)
    assert lin.values(range(9)) == pytest.approx(poly1.values(range(9)), abs=1e-15)


def test_cosine_matches_formula():
    sched = S.cosine(1.0, 0.1, total_steps=30)
    for step in (0, 7, 15, 29, 30, 100):
        progress = min(step, 30) / 30
        assert sched(step) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-15)
    assert sched(15) == pytest.approx(0.55)


def test_ramps_are_monotone():
    for cls in (S.linear, S.cosine, S.polynomial):
        falling = cls(1.0, 0.0, total_steps=50).values(range(60))
        rising = cls(0.0, 1.0, total_steps=50).values(range(60))
        assert all(a >= b for a, b in zip(falling, falling[1:]))
        assert all(a <= b for a, b in zip(rising, rising[1:]))


def test_interval_on_and_off_steps():
    sched = S.interval(0.7, every=10, duration=3, start=5)
    on = [s for s in range(40) if sched(s) > 0]
    assert on == [5, 6, 7, 15, 16, 17, 25, 26, 27, 35, 36, 37]
    assert all(sched(s) == 0.7 for s in on)
    assert sched.active(16) and not sched.active(18) and not sched.active(4)
    every_step = S.interval(1.0, every=1)
    assert every_step.values(range(5)) == [1.0] * 5


def test_interval_wraps_another_schedule_and_has_off_value():
    inner = S.linear(1.0, 0.0, total_steps=100)
    sched = S.interval(inner, every=20, duration=5, off=0.1)
    assert sched(42) == pytest.approx(inner(42))
    assert sched(45) == 0.1
    assert "linear" in repr(sched)


@pytest.mark.parametrize("make,match", [
    (lambda: S.constant(-1.0), "value"),
    (lambda: S.constant(float("nan")), "value"),
    (lambda: S.constant("1"), "value"),
    (lambda: S.linear(1.0, -0.5, 10), "end"),
    (lambda: S.linear(1.0, 0.0, 0), "total_steps"),
    (lambda: S.linear(1.0, 0.0, 2.5), "total_steps"),
    (lambda: S.polynomial(1.0, 0.0, 10, power=0.0), "power"),
    (lambda: S.cosine(-1.0, 0.0, 10), "start"),
    (lambda: S.interval(1.0, every=0), "every"),
    (lambda: S.interval(1.0, every=5, duration=6), "duration"),
    (lambda: S.interval(1.0, every=5, start=-1), "start"),
    (lambda: S.interval(1.0, every=5, off=-0.1), "off"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_bad_step(step):
    with pytest.raises((TypeError, ValueError), match="step"):
        S.linear(1.0, 0.0, 10)(step)


def test_reprs_round_trip_the_arguments():
    assert repr(S.linear(1.0, 0.0, 10)) == "linear(start=1.0, end=0.0, total_steps=10)"
    assert repr(S.polynomial(1.0, 0.0, 10, power=2.0)) == \
        "polynomial(start=1.0, end=0.0, total_steps=10, power=2.0)"
    assert repr(S.constant(0.5)) == "constant(0.5)"
