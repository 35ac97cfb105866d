"""Gradient diagnostics: per-layer gradient norms and the gradient flow through time.

The flow profile answers "is a gradient norm of 12 exploding, is 0.05 vanishing?" with a
measurement: ||dL_t / dh_{t-j}|| for lags j = 0..k, and the per-step factor by which it shrinks
or grows (a fitted geometric decay). A factor well below 1 means the gradient vanishes within
the window, above 1 that it explodes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.nn.utils import get_total_norm

from tbptt.model import CharRNN, Hidden, detach

if TYPE_CHECKING:
    from tbptt.trainer import EvalPoint, Trainer


def _parts(model: CharRNN) -> dict[str, torch.nn.Module]:
    return {"embed": model.embed, **{f"rnn{i}": m for i, m in enumerate(model.rnns)},
            "decoder": model.decoder}  # fmt: skip


def part_names(model: CharRNN) -> list[str]:
    """``embed``, ``rnn0``.. ``rnnN``, ``decoder``: the parts ``grad_norms`` measures."""
    return list(_parts(model))


def grad_norms(model: CharRNN) -> torch.Tensor:
    """(parts + 1,): the L2 gradient norm of each part (``part_names``), then of them all. A
    tensor on the model's device, so that a caller reads it with other values in one transfer."""
    norms = []
    for module in _parts(model).values():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norms.append(get_total_norm(grads) if grads else model.decoder.weight.new_zeros(()))
    parts = torch.stack(norms)
    return torch.cat([parts, torch.linalg.vector_norm(parts).reshape(1)])


def layer_grad_norms(model: CharRNN) -> dict[str, float]:
    """Total L2 gradient norm of each part: ``embed``, ``rnn0``.. ``rnnN``, ``decoder``."""
    return dict(zip(part_names(model), grad_norms(model)[:-1].tolist(), strict=True))


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


def measure_flow(model: CharRNN, val: torch.Tensor, lags: int, warm_up: int) -> list[float]:
    """``gradient_flow`` on the first validation window of ``lags`` + 1 steps after ``warm_up``
    steps of context (fewer on a short split); [] when the split is too short to unroll."""
    model.eval()
    lags = min(lags, val.size(0) - 2)
    if lags < 1:
        return []
    warm = min(warm_up, val.size(0) - lags - 2)
    hidden = model.init_hidden(val.size(1))
    if warm > 0:
        with torch.no_grad():
            _, hidden = model(val[:warm], hidden)
    x = val[warm : warm + lags + 1]  # (lags + 1, B)
    return gradient_flow(model, x, val[warm + 1 : warm + lags + 2], hidden)


FLOW_AT = (0.5,)  # GradFlow: shares of the budget after which the flow is measured


class GradFlow:
    """Evaluation handler (``Trainer.on(Events.MEASURED, GradFlow())``): the gradient flow
    through time over the schedule's nominal k2, into the ``grad_flow`` table, and its fitted
    ``decay_factor`` into the evaluation's row.

    One measurement unrolls k2 steps one at a time, forward and backward: at 1x384 it costs a
    twentieth of an evaluation interval of the default sweep, more than every other
    diagnostic together. So it is taken at the evaluations where the run first passes each
    share ``at`` of its budget, and at its last evaluation (the budget spent): the gradient's
    health halfway and at the end of the run, the end being what the report judges. A run
    stopped before half its budget (pruned at an early rung) is not measured: its early
    gradient says little of the configuration. ``at=None``: every evaluation.

    Args:
        at: shares of the token/FLOP budget (``Budget.fraction``), each in (0, 1).

    Example:
        >>> import pandas as pd
        >>> trainer.on(Events.MEASURED, GradFlow(at=None)); _ = trainer.fit()
        >>> flow = pd.read_parquet(trainer.log.path("grad_flow"))  # lags 0..k2 per evaluation
        >>> flow.groupby("tokens")["lag"].max().to_dict()
        {256: 8, 512: 8}
    """

    def __init__(self, at: tuple[float, ...] | None = FLOW_AT) -> None:
        if at is not None and not all(0 < share < 1 for share in at):
            raise ValueError(f"gradient flow shares must be in (0, 1), got {at}")
        self._at = at

    def due(self, point: EvalPoint) -> bool:
        if self._at is None or point.final:
            return True
        return any(point.spent_before < share <= point.spent for share in self._at)

    def __call__(self, trainer: Trainer, point: EvalPoint) -> dict[str, Any]:
        if not self.due(point):
            return {}
        warm_up = trainer.budget.eval_length
        norms = measure_flow(trainer.model, trainer.corpus.val, trainer.schedule.nominal.k2,
                             warm_up)  # fmt: skip
        factor = decay_factor(norms)
        for lag, norm in enumerate(norms):
            trainer.log.add("grad_flow", tokens=point.tokens, lag=lag, grad_norm=norm,
                            decay_factor=factor)  # fmt: skip
        return {"decay_factor": factor}
