"""BPTT window schedules: the (k1, k2) of every update.

An update consumes k1 new characters per stream and backpropagates through at most k2 steps
(k2 >= k1; ``overlap = k2 - k1`` steps of the previous windows are recomputed). Randomized
schedules draw the window per update from their own seeded generator, so a run is reproducible
and its checkpoint carries the generator state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    k1: int  # characters consumed (and losses taken) per stream by this update
    k2: int  # steps the gradient flows back through; k2 >= k1
    lr_scale: float = 1.0  # this update's learning rate is multiplied by it


def _check_lengths(min_len: int, max_len: int | None) -> None:
    if min_len < 1:
        raise ValueError(f"bptt.min_len must be >= 1, got {min_len}")
    if max_len is not None and max_len < min_len:
        raise ValueError(f"bptt.max_len must be >= bptt.min_len, got {max_len} < {min_len}")


class FixedSchedule:
    """Every update uses the same window.

    Args:
        k1: steps between updates, >= 1.
        k2: steps backpropagated, >= k1 (defaults to k1).

    Example:
        >>> FixedSchedule(k1=10, k2=40).next()
        Window(k1=10, k2=40, lr_scale=1.0)
    """

    def __init__(self, k1: int, k2: int | None = None) -> None:
        k2 = k1 if k2 is None else k2
        if k1 < 1:
            raise ValueError(f"bptt.k1 must be >= 1, got {k1}")
        if k2 < k1:
            raise ValueError(f"bptt.k2 must be >= bptt.k1, got bptt.k2={k2} < bptt.k1={k1}")
        self._window = Window(k1, k2)

    @property
    def max_k2(self) -> int:
        return self._window.k2

    @property
    def max_overlap(self) -> int:
        return self._window.k2 - self._window.k1

    @property
    def nominal(self) -> Window:
        return self._window

    def next(self) -> Window:
        return self._window

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _RandomLengths:
    """Shared by the randomized schedules: a seeded generator, overlap and lr rescaling."""

    def __init__(self, length: int, overlap: int, scale_lr: bool, seed: int) -> None:
        if overlap < 0:
            raise ValueError(f"bptt.overlap must be >= 0, got {overlap}")
        self._length, self._overlap, self._scale_lr = length, overlap, scale_lr
        self._rng = random.Random(seed)

    def _window(self, k1: int) -> Window:
        scale = k1 / self._length if self._scale_lr else 1.0
        return Window(k1, k1 + self._overlap, scale)

    @property
    def max_overlap(self) -> int:
        return self._overlap

    @property
    def nominal(self) -> Window:
        return Window(self._length, self._length + self._overlap)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))


class RandomSchedule(_RandomLengths):
    """AWD-LSTM's randomized BPTT length (Merity et al., 2017).

    Per update: base = length with probability ``p``, else length / 2; k1 = max(min_len,
    int(Normal(base, sigma))), capped at ``max_len``; k2 = k1 + overlap. With ``scale_lr`` the
    update's learning rate is multiplied by k1 / length, so short windows do not take outsized
    steps.

    Args:
        length: the nominal length L, >= 1.
        p: probability of the full base length, in [0, 1].
        sigma: standard deviation of the length, >= 0.
        min_len: shortest window, >= 1.
        max_len: longest window (None: no cap), >= min_len.
        overlap: k2 - k1, >= 0.
        scale_lr: rescale the learning rate by k1 / length.
        seed: seed of the schedule's own generator.

    Example:
        >>> RandomSchedule(length=70, seed=0).next()
        Window(k1=70, k2=70, lr_scale=1.0)
    """

    def __init__(
        self,
        length: int,
        p: float = 0.95,
        sigma: float = 5.0,
        min_len: int = 5,
        max_len: int | None = None,
        overlap: int = 0,
        scale_lr: bool = True,
        seed: int = 0,
    ) -> None:
        if length < 1:
            raise ValueError(f"bptt.length must be >= 1, got {length}")
        if not 0 <= p <= 1:
            raise ValueError(f"bptt.p must be in [0, 1], got {p}")
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"bptt.sigma must be >= 0 and finite, got {sigma}")
        _check_lengths(min_len, max_len)
        super().__init__(length, overlap, scale_lr, seed)
        self._p, self._sigma, self._min, self._max = p, sigma, min_len, max_len

    @property
    def max_k2(self) -> int:
        # Without max_len the Normal tail is unbounded: 6 sigma above L bounds it in practice.
        cap = self._max if self._max is not None else int(self._length + 6 * self._sigma) + 1
        return max(cap, self._min) + self._overlap

    def next(self) -> Window:
        base = self._length if self._rng.random() < self._p else self._length / 2
        k1 = max(self._min, int(self._rng.gauss(base, self._sigma)))
        if self._max is not None:
            k1 = min(k1, self._max)
        return self._window(k1)


class UniformSchedule(_RandomLengths):
    """k1 uniform in [min_len, max_len] per update; k2 = k1 + overlap.

    Args:
        min_len: shortest window, >= 1.
        max_len: longest window, >= min_len.
        overlap: k2 - k1, >= 0.
        scale_lr: rescale the learning rate by k1 / mean length.
        seed: seed of the schedule's own generator.

    Example:
        >>> UniformSchedule(min_len=20, max_len=80, seed=0).next().k1
        74
    """

    def __init__(
        self,
        min_len: int,
        max_len: int,
        overlap: int = 0,
        scale_lr: bool = False,
        seed: int = 0,
    ) -> None:
        _check_lengths(min_len, max_len)
        super().__init__(round((min_len + max_len) / 2), overlap, scale_lr, seed)
        self._min, self._max = min_len, max_len

    @property
    def max_k2(self) -> int:
        return self._max + self._overlap

    def next(self) -> Window:
        return self._window(self._rng.randint(self._min, self._max))


Schedule = FixedSchedule | RandomSchedule | UniformSchedule
