from __future__ import annotations

import statistics

import pytest

from tbptt.schedule import FixedSchedule, RandomSchedule, UniformSchedule


def draws(schedule, n=4000):
    return [schedule.next() for _ in range(n)]


def test_fixed_schedule_defaults_k2_to_k1():
    assert FixedSchedule(10).next() == FixedSchedule(10, 10).next()
    assert FixedSchedule(10, 40).max_overlap == 30


def test_random_schedule_matches_the_awd_lstm_statistics():
    windows = draws(RandomSchedule(length=70, p=0.95, sigma=5, min_len=5, seed=1))
    k1s = [w.k1 for w in windows]
    halved = sum(k < 52 for k in k1s) / len(k1s)  # bases 35 and 70 are 7 sigma apart
    assert halved == pytest.approx(0.05, abs=0.015)
    full = [k for k in k1s if k >= 52]
    # int() truncates towards zero, so the mean of the full-length draws sits ~0.5 below 70.
    assert statistics.mean(full) == pytest.approx(69.5, abs=0.5)
    assert statistics.stdev(full) == pytest.approx(5, abs=0.4)
    assert all(w.k2 == w.k1 for w in windows)


def test_random_schedule_respects_min_max_and_overlap():
    windows = draws(RandomSchedule(length=20, sigma=10, min_len=8, max_len=25, overlap=5))
    assert min(w.k1 for w in windows) == 8 and max(w.k1 for w in windows) == 25
    assert all(w.k2 == w.k1 + 5 for w in windows)


def test_random_schedule_scales_the_learning_rate_by_length():
    windows = draws(RandomSchedule(length=50, seed=3), 200)
    assert all(w.lr_scale == pytest.approx(w.k1 / 50) for w in windows)
    unscaled = draws(RandomSchedule(length=50, scale_lr=False, seed=3), 200)
    assert {w.lr_scale for w in unscaled} == {1.0}


def test_uniform_schedule_covers_its_range_evenly():
    k1s = [w.k1 for w in draws(UniformSchedule(min_len=10, max_len=20, overlap=3, seed=2))]
    assert set(k1s) == set(range(10, 21))
    assert statistics.mean(k1s) == pytest.approx(15, abs=0.3)


@pytest.mark.parametrize("make", [
    lambda seed: RandomSchedule(length=40, seed=seed),
    lambda seed: UniformSchedule(min_len=5, max_len=50, seed=seed),
])  # fmt: skip
def test_randomized_schedules_are_seeded_and_resumable(make):
    first = make(7)
    head = draws(first, 10)
    state = first.state_dict()
    tail = draws(first, 10)
    assert draws(make(7), 20) == head + tail
    again = make(0)
    again.load_state_dict(state)
    assert draws(again, 10) == tail
    assert draws(make(8), 20) != head + tail


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FixedSchedule(0), "bptt.k1 must be >= 1, got 0"),
        (lambda: FixedSchedule(10, 5), r"bptt.k2 must be >= bptt.k1, got bptt.k2=5 < bptt.k1=10"),
        (lambda: RandomSchedule(length=10, p=1.5), r"bptt.p must be in \[0, 1\], got 1.5"),
        (lambda: RandomSchedule(length=10, sigma=-1), "bptt.sigma must be >= 0"),
        (lambda: RandomSchedule(length=10, overlap=-2), "bptt.overlap must be >= 0, got -2"),
        (lambda: UniformSchedule(min_len=9, max_len=3), "bptt.max_len must be >= bptt.min_len"),
    ],
)
def test_bad_schedule_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
