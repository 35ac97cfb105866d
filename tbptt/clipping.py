"""Gradient clippers: ``none``, ``norm`` and ``value``, one small strategy class each.

Every clipper reports the total gradient norm *before* clipping (the number that tells whether
gradients explode) and whether clipping acted, so sweeps can relate both to the loss. The
trainer passes in the L2 norm it has measured already (with the per-layer norms, in one
transfer); called without it, a clipper measures it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.nn.utils import clip_grad_value_, clip_grads_with_norm_, get_total_norm


@dataclass(frozen=True)
class ClipResult:
    norm_before: float
    norm_after: float
    clipped: bool


def _with_grads(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [p for p in params if p.grad is not None]


def _norm(params: list[torch.nn.Parameter], norm_type: float = 2.0) -> float:
    return float(get_total_norm([p.grad for p in params if p.grad is not None], norm_type))


class NoClip:
    """Leaves gradients alone; still reports their total L2 norm.

    Example:
        >>> param = torch.nn.Parameter(torch.zeros(2)); param.grad = torch.tensor([3.0, 4.0])
        >>> NoClip()([param])
        ClipResult(norm_before=5.0, norm_after=5.0, clipped=False)
    """

    def __call__(
        self, params: Iterable[torch.nn.Parameter], norm: float | None = None
    ) -> ClipResult:
        norm = _norm(_with_grads(params)) if norm is None else norm
        return ClipResult(norm, norm, False)


class NormClip:
    """Rescales all gradients together so that their total ``norm_type`` norm is <= ``max_norm``.

    Args:
        max_norm: threshold on the total norm, > 0.
        norm_type: the p of the p-norm (2.0 by default; ``inf`` for the max norm).

    Example:
        >>> param = torch.nn.Parameter(torch.zeros(2)); param.grad = torch.tensor([3.0, 4.0])
        >>> NormClip(max_norm=1.0)([param]).clipped, param.grad
        (True, tensor([0.6000, 0.8000]))
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"clip.max_norm must be > 0, got {max_norm}")
        if not (norm_type >= 1 or math.isinf(norm_type)):
            raise ValueError(f"clip.norm_type must be >= 1 or inf, got {norm_type}")
        self._max_norm = max_norm
        self._norm_type = norm_type

    def __call__(
        self, params: Iterable[torch.nn.Parameter], norm: float | None = None
    ) -> ClipResult:
        params = _with_grads(params)
        if norm is None or self._norm_type != 2.0:  # the given norm is the L2 norm
            norm = _norm(params, self._norm_type)
        if norm <= self._max_norm:
            return ClipResult(norm, norm, False)
        # Scales every gradient by max_norm / (norm + 1e-6): the norm after follows from it.
        clip_grads_with_norm_(params, self._max_norm, torch.tensor(norm))
        return ClipResult(norm, norm * self._max_norm / (norm + 1e-6), True)


class ValueClip:
    """Clamps every gradient element into ``[-clip_value, clip_value]``.

    Args:
        clip_value: the element-wise threshold, > 0.

    Example:
        >>> param = torch.nn.Parameter(torch.zeros(2)); param.grad = torch.tensor([3.0, -0.2])
        >>> ValueClip(clip_value=0.5)([param]).clipped, param.grad
        (True, tensor([ 0.5000, -0.2000]))
    """

    def __init__(self, clip_value: float) -> None:
        if not clip_value > 0:
            raise ValueError(f"clip.clip_value must be > 0, got {clip_value}")
        self._clip_value = clip_value

    def __call__(
        self, params: Iterable[torch.nn.Parameter], norm: float | None = None
    ) -> ClipResult:
        params = _with_grads(params)
        before = _norm(params) if norm is None else norm
        biggest = _norm(params, math.inf)
        if biggest <= self._clip_value:
            return ClipResult(before, before, False)
        clip_grad_value_(params, self._clip_value)
        return ClipResult(before, _norm(params), True)


Clipper = NoClip | NormClip | ValueClip


@dataclass(frozen=True)
class Clipping:
    """What the ``clip`` group configures: a gradient clipper, and error clipping (or None)."""

    grad: Clipper
    error: ErrorClip | None = None


@dataclass(frozen=True)
class ErrorClipStats:
    clipped: int  # elements of the backward signal that were clamped in this update
    max_abs: float  # largest |error| seen, before clamping
    mean_abs: float  # mean |error| over every hooked element, before clamping


class ErrorClip:
    """Clamps the backward error signal into ``[-threshold, threshold]`` (error clipping).

    Unlike gradient clipping, which rescales parameter gradients after the backward pass, this
    acts *during* it, on dL/d(output) of every recurrent layer and on dL/dh of the state carried
    between chunks of a window, in the manner of PaddlePaddle's ``error_clipping_threshold``.
    With fused RNN modules the clamp applies where the signal enters each layer's sequence, not
    between time steps inside the fused kernel. ``stats()`` reports what it clamped since
    ``reset()``, like Paddle's clipping log.

    Args:
        threshold: the clamp, > 0.

    Example:
        >>> clip = ErrorClip(1.0)
        >>> x = torch.tensor([0.5, 3.0], requires_grad=True); y = x * 1.0
        >>> _ = y.register_hook(clip.hook); (y * torch.tensor([-4.0, 0.5])).sum().backward()
        >>> x.grad, clip.stats()
        (tensor([-1.0000,  0.5000]), ErrorClipStats(clipped=1, max_abs=4.0, mean_abs=2.25))
    """

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ValueError(f"clip.error_clip must be > 0, got {threshold}")
        self._threshold = threshold
        self.reset()

    def reset(self) -> None:
        # Tensors, summed on the device: read once per update by stats(), not per hook call.
        self._sums: list[torch.Tensor] = []  # (clipped, max, sum) of each hooked signal
        self._count = 0

    def hook(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:  # a state whose gradient is undefined (it reached no loss)
            return None
        magnitude = grad.detach().abs()
        clipped = (magnitude > self._threshold).sum()
        sums = [clipped.double(), magnitude.max().double(), magnitude.sum(dtype=torch.float64)]
        self._sums.append(torch.stack(sums))
        self._count += magnitude.numel()
        return grad.clamp(-self._threshold, self._threshold)

    def stats(self) -> ErrorClipStats:
        if not self._sums:
            return ErrorClipStats(0, 0.0, 0.0)
        sums = torch.stack(self._sums)  # (hooked signals, 3)
        clipped, biggest, total = torch.stack(
            [sums[:, 0].sum(), sums[:, 1].max(), sums[:, 2].sum()]
        ).tolist()
        return ErrorClipStats(int(clipped), biggest, total / self._count)
