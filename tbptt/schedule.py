"""BPTT window schedules: which (k1, k2) each update uses.

An update consumes k1 new characters per stream and backpropagates through at most k2 steps.
The foundation trains with k1 = k2 = ``bptt.length``; randomized schedules plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    k1: int  # characters consumed (and losses taken) per stream by this update
    k2: int  # steps the gradient flows back through; k2 >= k1
    lr_scale: float = 1.0


class FixedSchedule:
    """Every update uses the same window.

    Args:
        k1: steps between updates, >= 1.
        k2: steps backpropagated, >= k1 (defaults to k1).

    Example:
        >>> FixedSchedule(k1=35).next()
        Window(k1=35, k2=35, lr_scale=1.0)
    """

    def __init__(self, k1: int, k2: int | None = None) -> None:
        k2 = k1 if k2 is None else k2
        if k1 < 1:
            raise ValueError(f"bptt.k1 must be >= 1, got {k1}")
        if k2 < k1:
            raise ValueError(f"bptt.k2 must be >= bptt.k1, got k2={k2} < k1={k1}")
        self._window = Window(k1, k2)

    @property
    def max_k1(self) -> int:
        return self._window.k1

    @property
    def max_k2(self) -> int:
        return self._window.k2

    def next(self) -> Window:
        return self._window

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


Schedule = FixedSchedule
