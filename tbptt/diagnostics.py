"""Gradient diagnostics: per-layer gradient norms and the gradient flow through time.

The flow profile answers "is a gradient norm of 12 exploding, is 0.05 vanishing?" with a
measurement: ||dL_t / dh_{t-j}|| for lags j = 0..k, and the per-step factor by which it shrinks
or grows (a fitted geometric decay). A factor well below 1 means the gradient vanishes within
the window, above 1 that it explodes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.utils import get_total_norm

from tbptt.model import CharRNN, Hidden, detach


def layer_grad_norms(model: CharRNN) -> dict[str, float]:
    """Total L2 gradient norm of each part: ``embed``, ``rnn0``.. ``rnnN``, ``decoder``."""
    parts = {"embed": model.embed, **{f"rnn{i}": m for i, m in enumerate(model.rnns)}}
    parts["decoder"] = model.decoder
    norms = {}
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norms[name] = float(get_total_norm(grads)) if grads else 0.0
    return norms


def _state_tensors(hidden: Hidden) -> list[torch.Tensor]:
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def gradient_flow(model: CharRNN, x: torch.Tensor, y: torch.Tensor, hidden: Hidden) -> list[float]:
    """||dL_T / dh_{T-j}|| for j = 0..T-1, unrolling ``x`` (T, B) one step at a time.

    L_T is the mean loss at the last step; h_s is the full recurrent state after step s (every
    layer, and the cell state for LSTM). The unrolled pass shares the fused modules' weights and
    uses ``torch.autograd.grad``, so parameter gradients are left untouched.
    """
    hidden = detach(hidden)
    states: list[list[torch.Tensor]] = []
    with torch.enable_grad():
        for step in range(x.size(0)):
            _, hidden = model(x[step : step + 1], hidden)
            states.append(_state_tensors(hidden))
        # The last step's logits, recomputed from the final *state* tensor (same values in eval
        # mode) so that lag 0 gets a gradient too: the fused module's output sequence and its
        # final state are distinct autograd nodes. At lag 0 only the top layer's h is reached.
        top = states[-1][0][-1]  # (B, H)
        loss = F.cross_entropy(model.decoder(top), y[-1])
        flat = [t for s in states for t in s]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    per = len(states[0])
    norms = []
    for step in range(len(states)):
        parts = [g for g in grads[step * per : (step + 1) * per] if g is not None]
        norms.append(float(get_total_norm(parts)) if parts else 0.0)
    return norms[::-1]  # index j = lag


def decay_factor(norms: list[float]) -> float:
    """Per-step factor f of a least-squares fit norm_j ~ c * f**j over lags j >= 1 (NaN if < 2)."""
    points = [(j, math.log(n)) for j, n in enumerate(norms) if j >= 1 and n > 0]
    if len(points) < 2:
        return math.nan
    mean_j = sum(j for j, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    num = sum((j - mean_j) * (v - mean_v) for j, v in points)
    den = sum((j - mean_j) ** 2 for j, _ in points)
    return math.exp(num / den)
