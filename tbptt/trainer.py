"""Truncated backpropagation through time, TBPTT(k1, k2), for a character language model.

Semantics (Williams & Peng's BPTT(h; h'), Sutskever's thesis 2.8.6). The streams are consumed
in order; every k1 steps an update is made from the losses of the last k1 steps, backpropagated
through at most the last k2 steps: the graph is cut at the hidden state h_{t-k2}::

    position:   t-k2            t-k1                t
                 |               |                  |
    forward:     h_{t-k2} -----> ... -------------> h_t      (current weights, fused calls)
    losses:                      [ L_{t-k1+1} .. L_t ]       (loss_window=k1; `last`: L_t only)
    backward:    <================================== |       (stops at h_{t-k2}: detached)

With k1 = k2 (``bptt.length``) each update is one fused call over its own window, starting from
the state the previous window ended in. With k2 > k1 the k2 - k1 steps before the new ones are
*recomputed* with the current weights from the stored state h_{t-k2}: a few fused calls over
chunks, never a per-time-step Python loop, and memory grows with k2, never with the stream.

Stored states: a state is kept (detached) wherever a later update's span will start. The
schedule is read ahead far enough to know those positions, so randomized window lengths work
too. The forward pass carries context indefinitely (states flow from update to update), but
``detach()`` keeps a state's value and cuts the autograd graph behind it: without it, the graph
and memory would grow with the whole stream and every backward pass would rerun all history.

The optimizer is created once, outside this module, and lives for the whole run: re-creating
Adam per window would reset its moment estimates and silently stall training.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tbptt import checkpoint
from tbptt.clipping import Clipper, ErrorClip
from tbptt.contract import objective_of, write_result
from tbptt.data import Corpus
from tbptt.diagnostics import decay_factor, gradient_flow, layer_grad_norms
from tbptt.errors import ConfigError
from tbptt.evaluate import mean_loss
from tbptt.keys import differences
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN, Hidden, detach, hidden_norm
from tbptt.schedule import Schedule, Window

LN2 = math.log(2.0)
BEST_CHECKPOINT = "best.pt"  # beside checkpoint.pt: the weights of the best validation loss
UNITS = ("tokens", "flops")
EMA_ALPHA = 0.05  # smoothing of the training loss that divergence detection watches
RATE_WINDOW_S = 2.0  # a time budget is turned into FLOPs after measuring at least this long
# ... aiming a little short: evaluations and checkpoints to come, and drift, slow the rest;
# ending early costs a few updates, meeting the time limit mid-anneal costs its end.
TIME_PLAN_MARGIN = 0.92
DIVERGENCE_MARGIN = 0.1  # nats: near a zero loss, a factor alone would flag noise as climbing


class StopRun(Exception):
    """Ends a run early with a recorded reason (divergence, non-finite values, a callback)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Budget:
    """When a run stops, when it evaluates, and how its learning rate is annealed.

    Limits (None: no limit; at least one must be set): characters consumed (``max_tokens``,
    summed over streams), training compute (``max_flops``, see :func:`update_flops`) and wall
    seconds. The first limit reached ends the run. Evaluations come every ``eval_every`` of
    ``unit`` (``tokens`` or ``flops``), which is also the unit of the steps that ``on_eval``
    callbacks (pruners) see: with ``flops``, trials of different sizes and windows compare at
    equal compute.

    ``anneal``: over the last fraction of the token/FLOP budget the learning rate decays
    linearly to 0 (0: constant). With only ``max_seconds``, the run trains at a constant rate
    for the first (1 - anneal) of its seconds, then fixes the FLOP budget that its measured
    speed reaches in the rest (:meth:`planned`) and anneals over it: a time budget that ends
    annealed, and a FLOP budget (in ``result.json``) that replays it exactly.
    """

    eval_every: int
    eval_max_tokens: int | None  # validation characters per evaluation (a fixed prefix); None: all
    eval_length: int  # window length used to walk the validation streams
    max_tokens: int | None = None
    max_flops: int | None = None
    max_seconds: float | None = None
    unit: str = "tokens"
    anneal: float = 0.0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"budget unit must be one of {UNITS}, got {self.unit!r}")
        if self.max_tokens is None and self.max_flops is None and self.max_seconds is None:
            raise ValueError("a budget needs max_tokens, max_flops or max_seconds")
        if not 0 <= self.anneal < 1:
            raise ValueError(f"trainer.anneal must be in [0, 1), got {self.anneal}")

    @property
    def by_time(self) -> bool:
        """Annealed within a time limit alone: the FLOP budget is fixed during the run."""
        limits = (self.max_tokens, self.max_flops)
        return bool(self.anneal) and self.max_seconds is not None and limits == (None, None)

    def planned(self, flops: int, rate: float, seconds: float) -> Budget:
        """The FLOP budget a run at ``rate`` FLOP/s reaches in the rest of ``max_seconds``,
        ``seconds`` in: annealed from here to its end."""
        assert self.max_seconds is not None
        end = flops + max(1, int(TIME_PLAN_MARGIN * rate * (self.max_seconds - seconds)))
        return replace(self, max_flops=end, anneal=min(0.999999, (end - flops) / end))

    def plan_due(self, seconds: float) -> bool:
        assert self.max_seconds is not None
        return seconds >= (1 - self.anneal) * self.max_seconds

    def fraction(self, tokens: int, flops: int) -> float:
        """How much of the token/FLOP budget is spent, in [0, 1] (0 without such limits)."""
        spent = [tokens / self.max_tokens] if self.max_tokens else []
        spent += [flops / self.max_flops] if self.max_flops else []
        return min(1.0, max(spent, default=0.0))

    def lr_factor(self, tokens: int, flops: int) -> float:
        if not self.anneal:
            return 1.0
        return min(1.0, (1.0 - self.fraction(tokens, flops)) / self.anneal)

    def spent(self, tokens: int, flops: int, seconds: float) -> bool:
        return (
            (self.max_tokens is not None and tokens >= self.max_tokens)
            or (self.max_flops is not None and flops >= self.max_flops)
            or (self.max_seconds is not None and seconds >= self.max_seconds)
        )


@dataclass(frozen=True)
class Divergence:
    """Stop when the smoothed training loss (or a validation loss) exceeds ``factor`` x the
    best seen, once ``warmup_tokens`` have been trained. ``factor=None`` disables it."""

    factor: float | None = None
    warmup_tokens: int = 0


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    tokens: int = 0
    flops: int = 0  # training compute so far, 6 x n_eff per character and step backpropagated
    updates: int = 0
    position: int = 0  # row of the training stream where the next window's new steps start
    evals: int = 0
    last_eval_tokens: int = 0
    last_eval_flops: int = 0
    best_val_loss: float = math.inf
    last_val_loss: float = math.inf
    loss_ema: float = math.nan
    best_loss_ema: float = math.inf
    planned_flops: int | None = None  # a time budget's FLOP budget, once fixed (Budget.planned)
    planned_anneal: float | None = None
    elapsed: float = 0.0
    stop_reason: str | None = None


@dataclass(frozen=True)
class RunResult:
    completed: bool  # False when the run stopped early (see stop_reason)
    stop_reason: str | None
    tokens: int
    flops: int
    updates: int
    best_val_loss: float
    final_val_loss: float
    wall_seconds: float
    planned_flops: int | None = None  # a time budget turned into FLOPs: replay with these
    planned_anneal: float | None = None
    vocab_size: int | None = None  # chance is ln(vocab_size) nats/char (the answers' yardstick)

    def objective(self, rule: str = "best") -> float:
        value = objective_of(rule, self.best_val_loss, self.final_val_loss)
        assert value is not None  # both losses are floats (inf before the first evaluation)
        return value


@dataclass(frozen=True)
class EvalPoint:
    """Where an evaluation happened and what it measured; ``step`` is in the budget's unit."""

    tokens: int
    flops: int
    step: int
    val_loss: float
    final: bool = False  # the run's last evaluation: its budget is spent


EvalCallback = Callable[[EvalPoint], None]  # raise StopRun to stop the run


def update_flops(n_eff: int, streams: int, span: int) -> int:
    """Training compute of one update: ``span`` = k2 steps (the k1 new ones and the recomputed
    overlap) of ``streams`` characters each, forward (2 x n_eff) and backward (4 x n_eff)."""
    return 6 * n_eff * streams * span


@dataclass
class Trainer:
    """Trains ``model`` on ``corpus`` with TBPTT(k1, k2) windows drawn from ``schedule``.

    Args:
        model: the language model; its parameters are what ``optimizer`` updates.
        optimizer: created once by the caller and kept for the whole run.
        clipper: gradient clipper (measures the pre-clip norm on every update).
        schedule: yields the (k1, k2) window of each update.
        corpus: batched train/val streams, already on the model's device.
        budget: token budget and evaluation cadence.
        log: metric tables of this run.
        loss_window: ``k1`` (losses of the last k1 steps) or ``last`` (the last step only).
        error_clip: clamps the backward error signal (None: off).
        divergence: when to stop a run whose loss climbs.
        grad_flow: measure the gradient flow through time at every evaluation.
        checkpoint_path: where to write a checkpoint at every evaluation (None: never).
        on_eval: called after each evaluation with (tokens, val_loss).
        meta: extra plain data stored in checkpoints (vocabulary, model shape).

    Example:
        >>> Trainer(model, Adam(model.parameters()), NoClip(), FixedSchedule(10, 40), corpus,
        ...         budget, MetricsLog(run_dir)).fit().best_val_loss
    """

    model: CharRNN
    optimizer: torch.optim.Optimizer
    clipper: Clipper
    schedule: Schedule
    corpus: Corpus
    budget: Budget
    log: MetricsLog
    loss_window: str = "k1"
    error_clip: ErrorClip | None = None
    divergence: Divergence = Divergence()
    grad_flow: bool = False
    checkpoint_path: Path | None = None
    on_eval: Sequence[EvalCallback] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss_window not in ("k1", "last"):
            raise ValueError(f"bptt.loss_window must be 'k1' or 'last', got {self.loss_window!r}")
        self.state = TrainState()
        self._n_eff = self.model.n_eff()
        self._ahead: deque[Window] = deque()  # windows drawn from the schedule, not yet used
        self._reset_states()
        if self.error_clip is not None:
            self.model.output_hooks.append(self.error_clip.hook)

    @property
    def hidden(self) -> Hidden:
        """The (detached) state at the current position: where the next new steps start."""
        return self._states[self.state.position]

    def _reset_states(self) -> None:
        # position -> detached state after consuming the positions before it
        self._states: dict[int, Hidden] = {0: self.model.init_hidden(self.corpus.train.size(1))}

    def fit(self) -> RunResult:
        started = time.perf_counter() - self.state.elapsed
        try:
            self._train(started)
        except StopRun as stop:
            self.state.stop_reason = stop.reason
        finally:
            self.state.elapsed = time.perf_counter() - started
            self.log.flush()  # metrics recorded so far survive any ending, crashes included
        result = self.result()
        write_result(asdict(result), self.log.directory)
        return result

    def result(self) -> RunResult:
        s = self.state
        return RunResult(
            completed=s.stop_reason is None,
            stop_reason=s.stop_reason,
            tokens=s.tokens,
            flops=s.flops,
            updates=s.updates,
            best_val_loss=s.best_val_loss,
            final_val_loss=s.last_val_loss,
            wall_seconds=s.elapsed,
            planned_flops=s.planned_flops,
            planned_anneal=s.planned_anneal,
            vocab_size=len(self.meta["vocab"]) if "vocab" in self.meta else None,
        )

    def _train(self, started: float) -> None:
        s = self.state
        mark = (time.perf_counter(), s.flops)  # this call's start: its speed, not a resumed one's
        while not self.budget.spent(s.tokens, s.flops, time.perf_counter() - started):
            if self.budget.by_time and self.budget.plan_due(time.perf_counter() - started):
                self._plan_flops(started, mark)
            self.update(started)
            if self._eval_due():
                self._evaluate(started)
        if s.evals == 0 or s.last_eval_tokens != s.tokens:
            self._evaluate(started)  # the run always ends on an evaluation of its final weights

    def _plan_flops(self, started: float, mark: tuple[float, int]) -> None:
        now, s = time.perf_counter(), self.state
        assert self.budget.max_seconds is not None
        if now - mark[0] < min(RATE_WINDOW_S, 0.2 * self.budget.max_seconds):
            return  # measure the speed a little first (a resumed run may be due at once)
        rate = (s.flops - mark[1]) / (now - mark[0])
        self.budget = self.budget.planned(s.flops, rate, now - started)
        s.planned_flops, s.planned_anneal = self.budget.max_flops, self.budget.anneal

    def step_of(self, tokens: int, flops: int) -> int:
        """A point of the run in the budget's unit (what pruners see as the step)."""
        return flops if self.budget.unit == "flops" else tokens

    def _eval_due(self) -> bool:
        s, every = self.state, self.budget.eval_every
        now = self.step_of(s.tokens, s.flops)
        last = self.step_of(s.last_eval_tokens, s.last_eval_flops)
        return now // every > last // every

    # -- one update -------------------------------------------------------------------------

    def _take_window(self) -> Window:
        return self._ahead.popleft() if self._ahead else self.schedule.next()

    def _peek(self, j: int) -> Window:
        while len(self._ahead) <= j:
            self._ahead.append(self.schedule.next())
        return self._ahead[j]

    def _future_starts(self, end: int) -> set[int]:
        """Positions before ``end`` where a later update's span will start (its h_{t-k2})."""
        starts, e, j = set(), end, 0
        # A later span starts at e_prev - (k2 - k1) >= e_prev - max_overlap, so once that bound
        # passes `end`, no later window reaches back before it.
        while e - self.schedule.max_overlap < end:
            w = self._peek(j)
            starts.add(max(0, e + w.k1 - w.k2))  # spans are cut at the top of the stream
            e, j = e + w.k1, j + 1
        return {a for a in starts if a < end}

    def _forward(self, start: int, new: int, end: int) -> torch.Tensor:
        """Run positions [start, end) in fused chunks; keep states where later spans start."""
        stream = self.corpus.train  # (T, B)
        hidden = self._states[start]
        cuts = {a for a in self._future_starts(end) if a >= new and a > start}
        bounds = [start, *sorted(cuts), end]
        chunks = []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            if lo > start and self.error_clip is not None:
                for tensor in hidden if isinstance(hidden, tuple) else (hidden,):
                    tensor.register_hook(self.error_clip.hook)
            logits, hidden = self.model(stream[lo:hi], hidden)  # (hi - lo, B, V)
            # Stored detached: the value seeds a later span, whose backward must stop there.
            self._states[hi] = detach(hidden)
            chunks.append(logits)
        return torch.cat(chunks)  # (end - start, B, V)

    def _loss(self, logits: torch.Tensor, end: int, k1: int) -> torch.Tensor:
        stream = self.corpus.train
        if self.loss_window == "last":
            return F.cross_entropy(logits[-1], stream[end])
        return F.cross_entropy(
            logits[-k1:].flatten(0, 1), stream[end - k1 + 1 : end + 1].flatten()
        )

    def update(self, started: float | None = None) -> None:
        """One TBPTT update: k1 new steps, gradient through the last k2 (see the module doc)."""
        window = self._take_window()
        if self.state.position + window.k1 + 1 > self.corpus.train.size(0):
            # End of the streams: start the next pass from the top with a fresh state, since
            # the state at the end of a stream says nothing about its beginning.
            self.state.position = 0
            self._reset_states()
        new = self.state.position
        end = new + window.k1
        start = max(0, end - window.k2)
        self.model.train()
        if self.error_clip is not None:
            self.error_clip.reset()
        logits = self._forward(start, new, end)
        loss = self._loss(logits, end, window.k1)
        self._step(loss, window, end - start, started)
        self._forget_unneeded(end)

    def _step(
        self, loss: torch.Tensor, window: Window, span: int, started: float | None
    ) -> None:
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise StopRun(f"non-finite loss at token {self.state.tokens}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        layers = layer_grad_norms(self.model)
        clip = self.clipper(self.model.parameters())
        if not math.isfinite(clip.norm_before):
            raise StopRun(f"non-finite gradient norm at token {self.state.tokens}")
        anneal = self.budget.lr_factor(self.state.tokens, self.state.flops)
        with scaled_lr(self.optimizer, window.lr_scale * anneal) as lr:
            self.optimizer.step()
        self.state.position += window.k1
        self.state.tokens += window.k1 * self.corpus.train.size(1)
        self.state.flops += update_flops(self._n_eff, self.corpus.train.size(1), span)
        self.state.updates += 1
        row: dict[str, Any] = dict(
            tokens=self.state.tokens, flops=self.state.flops, update=self.state.updates,
            loss=loss_value,
            grad_norm=clip.norm_before, grad_norm_clipped=clip.norm_after, clipped=clip.clipped,
            lr=lr, k1=window.k1, k2=window.k2, hidden_norm=hidden_norm(self.hidden),
        )  # fmt: skip
        row.update({f"grad_norm_{name}": norm for name, norm in layers.items()})
        if self.error_clip is not None:
            stats = self.error_clip.stats()
            row.update(
                error_clipped=stats.clipped, error_max=stats.max_abs, error_mean=stats.mean_abs
            )
        row["elapsed_s"] = time.perf_counter() - started if started is not None else math.nan
        self.log.add("steps", **row)
        self._watch_divergence(loss_value)

    def _forget_unneeded(self, end: int) -> None:
        keep = self._future_starts(end) | {end}
        for pos in [p for p in self._states if p not in keep]:
            del self._states[pos]

    def _watch_divergence(self, loss: float) -> None:
        s, d = self.state, self.divergence
        s.loss_ema = (
            loss if math.isnan(s.loss_ema) else s.loss_ema + EMA_ALPHA * (loss - s.loss_ema)
        )
        s.best_loss_ema = min(s.best_loss_ema, s.loss_ema)
        if d.factor is None or s.tokens < d.warmup_tokens:
            return
        if s.loss_ema > max(d.factor * s.best_loss_ema, s.best_loss_ema + DIVERGENCE_MARGIN):
            raise StopRun(
                f"diverged at token {s.tokens}: training loss {s.loss_ema:.3f} > "
                f"{d.factor} x best {s.best_loss_ema:.3f}"
            )

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean validation loss (nats per character) over a fixed prefix of the val streams."""
        return mean_loss(
            self.model, self.corpus.val, self.budget.eval_max_tokens, self.budget.eval_length
        )

    def measure_flow(self) -> list[float]:
        """||dL_t / dh_{t-j}||, j = 0..k2, on the first validation window after a warm-up."""
        self.model.eval()
        val = self.corpus.val
        lags = min(self.schedule.nominal.k2, val.size(0) - 2)
        if lags < 1:
            return []  # a validation split too short to unroll
        warm = min(self.budget.eval_length, val.size(0) - lags - 2)
        hidden = self.model.init_hidden(val.size(1))
        if warm > 0:
            with torch.no_grad():
                _, hidden = self.model(val[:warm], hidden)
        x = val[warm : warm + lags + 1]
        return gradient_flow(self.model, x, val[warm + 1 : warm + lags + 2], hidden)

    def _record_flow(self) -> float:
        if not self.grad_flow:
            return math.nan
        norms = self.measure_flow()
        factor = decay_factor(norms)
        for lag, norm in enumerate(norms):
            self.log.add(
                "grad_flow", tokens=self.state.tokens, lag=lag, grad_norm=norm,
                decay_factor=factor,
            )  # fmt: skip
        return factor

    def _val_diverged(self, loss: float) -> bool:
        factor, best = self.divergence.factor, self.state.best_val_loss
        if factor is None or not math.isfinite(best):
            return False
        limit = max(factor * best, best + DIVERGENCE_MARGIN)
        return self.state.tokens >= self.divergence.warmup_tokens and loss > limit

    def _evaluate(self, started: float) -> None:
        loss = self.evaluate()
        factor = self._record_flow()
        s = self.state
        s.evals += 1
        s.last_eval_tokens, s.last_eval_flops = s.tokens, s.flops
        s.last_val_loss = loss
        diverged = self._val_diverged(loss)
        improved = math.isfinite(loss) and loss < s.best_val_loss
        s.best_val_loss = loss if improved else s.best_val_loss
        s.elapsed = time.perf_counter() - started
        self.log.add(
            "evals", tokens=s.tokens, flops=s.flops, val_loss=loss, val_bpc=loss / LN2,
            decay_factor=factor, elapsed_s=s.elapsed,
        )  # fmt: skip
        self.log.flush()
        self._save_checkpoints(improved)
        if not math.isfinite(loss):
            raise StopRun(f"non-finite validation loss at token {s.tokens}")
        if diverged:
            raise StopRun(f"diverged at token {s.tokens}: validation loss {loss:.3f}")
        final = self.budget.spent(s.tokens, s.flops, s.elapsed)
        point = EvalPoint(s.tokens, s.flops, self.step_of(s.tokens, s.flops), loss, final)
        for callback in self.on_eval:
            callback(point)

    # -- checkpoints --------------------------------------------------------------------------

    def _save_checkpoints(self, improved: bool) -> None:
        if self.checkpoint_path is None:
            return
        self.save(self.checkpoint_path)
        if improved:  # small corpora overfit within minutes: keep the best weights, not the last
            self.save_best(self.checkpoint_path.with_name(BEST_CHECKPOINT))

    def save_best(self, path: Path) -> None:
        """The model alone (what sampling and evaluation need), and where it was taken."""
        s = self.state
        at = {"tokens": s.tokens, "flops": s.flops, "val_loss": s.last_val_loss}
        checkpoint.save({"model": self.model.state_dict(), "meta": self.meta, "at": at}, path)

    def save(self, path: Path) -> None:
        checkpoint.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ahead": [(w.k1, w.k2, w.lr_scale) for w in self._ahead],
                "state": asdict(self.state),
                "states": self._states,
                "rng": checkpoint.rng_state(),
                "meta": self.meta,
            },
            path,
        )

    def _check_resumable(self, path: Path, payload: dict[str, Any]) -> None:
        """A checkpoint to continue from, written under this run's settings (``meta``)."""
        missing = [key for key in RESUME_KEYS if key not in payload]
        if missing:
            raise ConfigError(
                f"trainer.resume: {path} holds no {missing[0]} (weights only, as best.pt): "
                "it cannot be resumed"
            )
        stored, mine = payload.get("meta", {}).get("settings"), self.meta.get("settings")
        if stored is not None and mine is not None and stored != mine:
            raise ConfigError(
                f"trainer.resume: {path} was written with {differences(stored, mine)}: resume "
                "with those settings, or train in a new run directory"
            )

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: metrics after resuming equal an uninterrupted run's."""
        payload = checkpoint.load(path, key="trainer.resume")
        self._check_resumable(path, payload)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise ConfigError(
                f"trainer.resume: {path} was written for another model shape ({first})"
            ) from None
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            self.schedule.load_state_dict(payload["schedule"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:  # an older checkpoint
            raise ConfigError(
                f"trainer.resume: {path} was written with another optimizer or schedule ({err})"
            ) from None
        self._ahead = deque(Window(*w) for w in payload["ahead"])
        self.state = TrainState(**payload["state"])
        if self.state.planned_flops is not None and self.budget.by_time:
            anneal = self.state.planned_anneal or 0.0
            self.budget = replace(self.budget, max_flops=self.state.planned_flops, anneal=anneal)
        device = self.corpus.train.device
        self._states = {pos: _to(h, device) for pos, h in payload["states"].items()}
        checkpoint.set_rng_state(payload["rng"])
        self.log.restore(up_to_tokens=self.state.tokens)


RESUME_KEYS = ("model", "optimizer", "schedule", "ahead", "state", "states", "rng")


def _to(hidden: Hidden, device: torch.device) -> Hidden:
    if isinstance(hidden, tuple):
        return (hidden[0].to(device), hidden[1].to(device))
    return hidden.to(device)


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[float]:
    """Multiply every group's learning rate by ``scale`` for one step, then restore it."""
    base = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, base, strict=True):
        group["lr"] = lr * scale
    try:
        yield optimizer.param_groups[0]["lr"]
    finally:
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr
