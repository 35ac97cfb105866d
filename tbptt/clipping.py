"""Gradient clippers: ``none``, ``norm`` and ``value``, one small strategy class each.

Every clipper measures the total gradient norm *before* clipping (the number that tells whether
gradients explode) and reports whether clipping acted, so sweeps can relate both to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_, get_total_norm


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
    """Leaves gradients alone; still measures their total L2 norm.

    Example:
        >>> NoClip()(model.parameters()).norm_before
    """

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> ClipResult:
        norm = _norm(_with_grads(params))
        return ClipResult(norm, norm, False)


class NormClip:
    """Rescales all gradients together so that their total ``norm_type`` norm is <= ``max_norm``.

    Args:
        max_norm: threshold on the total norm, > 0.
        norm_type: the p of the p-norm (2.0 by default; ``inf`` for the max norm).

    Example:
        >>> NormClip(max_norm=1.0)(model.parameters())  # ClipResult(norm_before=12.3, ...)
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"clip.max_norm must be > 0, got {max_norm}")
        if not (norm_type >= 1 or math.isinf(norm_type)):
            raise ValueError(f"clip.norm_type must be >= 1 or inf, got {norm_type}")
        self._max_norm = max_norm
        self._norm_type = norm_type

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> ClipResult:
        params = _with_grads(params)
        # clip_grad_norm_ scales by max_norm / (norm + 1e-6) only when that factor is < 1.
        norm = float(clip_grad_norm_(params, self._max_norm, self._norm_type))
        if norm <= self._max_norm:
            return ClipResult(norm, norm, False)
        return ClipResult(norm, _norm(params, self._norm_type), True)


class ValueClip:
    """Clamps every gradient element into ``[-clip_value, clip_value]``.

    Args:
        clip_value: the element-wise threshold, > 0.

    Example:
        >>> ValueClip(clip_value=0.5)(model.parameters())
    """

    def __init__(self, clip_value: float) -> None:
        if not clip_value > 0:
            raise ValueError(f"clip.clip_value must be > 0, got {clip_value}")
        self._clip_value = clip_value

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> ClipResult:
        params = _with_grads(params)
        before = _norm(params)
        biggest = _norm(params, math.inf)
        if biggest <= self._clip_value:
            return ClipResult(before, before, False)
        clip_grad_value_(params, self._clip_value)
        return ClipResult(before, _norm(params), True)


Clipper = NoClip | NormClip | ValueClip


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
        >>> clip = ErrorClip(1.0); model.output_hooks.append(clip.hook)
        >>> loss.backward(); clip.stats().clipped
    """

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ValueError(f"clip.error_clip must be > 0, got {threshold}")
        self._threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._clipped = 0
        self._max = 0.0
        self._sum = 0.0
        self._count = 0

    def hook(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:  # a state whose gradient is undefined (it reached no loss)
            return None
        magnitude = grad.detach().abs()
        self._clipped += int((magnitude > self._threshold).sum())
        self._max = max(self._max, float(magnitude.max()))
        self._sum += float(magnitude.sum())
        self._count += magnitude.numel()
        return grad.clamp(-self._threshold, self._threshold)

    def stats(self) -> ErrorClipStats:
        return ErrorClipStats(self._clipped, self._max, self._sum / max(self._count, 1))
