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
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F

from tbptt import checkpoint
from tbptt.clipping import Clipper, ClipResult, ErrorClip
from tbptt.contract import TrialResult, write_result
from tbptt.data import Corpus
from tbptt.diagnostics import grad_norms, part_names
from tbptt.evaluate import mean_loss
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN, Hidden, detach, hidden_norm
from tbptt.schedule import Schedule, Window

LN2 = math.log(2.0)
UNITS = ("tokens", "flops")
LOSS_WINDOWS = ("k1", "last")  # bptt.loss_window: the losses of the last k1 steps, or the last's
EMA_ALPHA = 0.05  # smoothing of the training loss that divergence detection watches
RATE_WINDOW_S = 2.0  # a time budget is turned into FLOPs after measuring at least this long
# ... from the later half of that time only: a run's first seconds are slower (thread pools,
# the allocator; a budgeted sweep's final run: 66 GFLOP/s over its first 5 s, 120 after), and
# their rate made the final of the default sweep end 70 s (13% of its budget) early;
# ... aiming a little short: evaluations and checkpoints to come, and drift, slow the rest;
# ending early costs a few updates, meeting the time limit mid-anneal costs its end.
TIME_PLAN_MARGIN = 0.95
DIVERGENCE_MARGIN = 0.1  # nats: near a zero loss, a factor alone would flag noise as climbing


def later_rate(marks: list[tuple[float, int]], now: float, flops: int) -> float:
    """FLOP/s over the later half of the time since the first of ``marks`` (time, FLOPs).

    Example:
        >>> marks = [(t, 66 * t if t <= 5 else 330 + 120 * (t - 5)) for t in range(20)]
        >>> later_rate(marks, 20.0, 330 + 120 * 15)  # not (330 + 1800) / 20 = 106.5
        120.0
    """
    halfway = (marks[0][0] + now) / 2
    since, start = next((m for m in marks if m[0] >= halfway), marks[0])
    if now <= since or flops <= start:
        since, start = marks[0]
    return (flops - start) / (now - since)


class StopRun(Exception):
    """Ends a run early with a recorded reason (divergence, non-finite values, a callback)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _at_least_one(key: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 1):
        raise ValueError(f"trainer.{key} must be >= 1, got {value}")


@dataclass(frozen=True, kw_only=True)
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

    Example:
        >>> budget = Budget(eval_every=1000, eval_max_tokens=None, eval_length=64, max_tokens=5000)
        >>> budget.spent(tokens=5000, flops=0, seconds=1.0), budget.fraction(2500, 0)
        (True, 0.5)
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
        for key, value in (
            ("max_tokens", self.max_tokens), ("max_flops", self.max_flops),
            (f"eval_every_{self.unit}", self.eval_every),
            ("eval_max_tokens", self.eval_max_tokens), ("eval_length", self.eval_length),
        ):  # fmt: skip
            _at_least_one(key, value)
        seconds = self.max_seconds
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"trainer.max_seconds must be > 0, got {seconds}")
        if (self.max_tokens, self.max_flops, self.max_seconds) == (None, None, None):
            raise ValueError(
                "trainer.max_tokens, trainer.max_flops and trainer.max_seconds are all null: "
                "set a budget"
            )
        if not 0 <= self.anneal < 1:
            raise ValueError(f"trainer.anneal must be in [0, 1), got {self.anneal}")
        # A config gives FLOPs as floats (1e12); the run counts them in ints.
        object.__setattr__(self, "eval_every", int(self.eval_every))
        if self.max_flops is not None:
            object.__setattr__(self, "max_flops", int(self.max_flops))

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

    def step_of(self, tokens: int, flops: int) -> int:
        """A point of the run in the budget's unit (what pruners see as the step)."""
        return flops if self.unit == "flops" else tokens


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
class Divergence:
    """Stops a run whose loss climbs: the smoothed training loss (after every update) or a
    validation loss (at every evaluation) above ``factor`` x the best seen so far, once
    ``warmup_tokens`` have been trained. Near a zero loss a factor alone would call noise a
    climb, so the loss must also exceed the best by ``DIVERGENCE_MARGIN`` nats.

    Args:
        factor: the multiple of the best loss that counts as diverged, > 1; None: never stop.
        warmup_tokens: tokens trained before the check starts (early losses are erratic).

    Example:
        >>> state = TrainState(tokens=900, loss_ema=4.0, best_loss_ema=4.0)
        >>> Divergence(factor=2.0).after_update(state, loss=9.0) is None  # smoothed: not yet
        True
        >>> Divergence(factor=2.0).after_eval(state, loss=9.0, best=4.0)
        'diverged at token 900: validation loss 9.000'
    """

    factor: float | None = None
    warmup_tokens: int = 0

    def __post_init__(self) -> None:
        if self.factor is not None and not self.factor > 1:
            raise ValueError(f"trainer.divergence_factor must be > 1 or null, got {self.factor}")

    def after_update(self, state: TrainState, loss: float) -> str | None:
        """Fold ``loss`` into the smoothed training loss in ``state``; why the run must stop
        now, or None."""
        first = math.isnan(state.loss_ema)
        ema = loss if first else state.loss_ema + EMA_ALPHA * (loss - state.loss_ema)
        state.loss_ema, state.best_loss_ema = ema, min(state.best_loss_ema, ema)
        if not self._climbed(ema, state.best_loss_ema, state.tokens):
            return None
        return (
            f"diverged at token {state.tokens}: training loss {ema:.3f} > "
            f"{self.factor} x best {state.best_loss_ema:.3f}"
        )

    def after_eval(self, state: TrainState, loss: float, best: float) -> str | None:
        """Whether validation ``loss`` climbed above the ``best`` before it."""
        if not self._climbed(loss, best, state.tokens):
            return None
        return f"diverged at token {state.tokens}: validation loss {loss:.3f}"

    def _climbed(self, loss: float, best: float, tokens: int) -> bool:
        if self.factor is None or not math.isfinite(best) or tokens < self.warmup_tokens:
            return False
        return loss > max(self.factor * best, best + DIVERGENCE_MARGIN)


@dataclass(frozen=True, kw_only=True)
class EvalPoint:
    """Where an evaluation happened and what it measured; ``step`` is in the budget's unit."""

    tokens: int
    flops: int
    step: int
    val_loss: float
    improved: bool = False  # the best validation loss so far
    final: bool = False  # the run's last evaluation: its budget is spent
    spent: float = 0.0  # the share of the token/FLOP budget spent (Budget.fraction) ...
    spent_before: float = 0.0  # ... and at the evaluation before (0 at the first)


EvalCallback = Callable[[EvalPoint], None]  # raise StopRun to stop the run


class Events(Enum):
    """Moments of an evaluation at which handlers run (``Trainer.on``), as Ignite's events."""

    MEASURED = "measured"  # the loss is in ``state``: a handler may return more evals columns
    RECORDED = "recorded"  # the evals row is on disk: handlers save (checkpoints)


Handler = Callable[["Trainer", EvalPoint], dict[str, Any] | None]


def check_loss_window(window: str) -> None:
    if window not in LOSS_WINDOWS:
        raise ValueError(f"bptt.loss_window must be 'k1' or 'last', got {window!r}")


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
        clipper: gradient clipper (reports the pre-clip norm on every update).
        schedule: yields the (k1, k2) window of each update.
        corpus: batched train/val streams, already on the model's device.
        budget: when the run stops and evaluates.
        log: metric tables of this run.
        loss_window: ``k1`` (losses of the last k1 steps) or ``last`` (the last step only).
        error_clip: clamps the backward error signal (None: off).
        divergence: when to stop a run whose loss climbs.
        on_eval: called after each evaluation that stands (finite, not diverged); raise
            ``StopRun`` to stop the run (a pruner does).
        meta: plain data stored in checkpoints (vocabulary, model shape, data, settings).

    More work at each evaluation is registered with :meth:`on` (gradient flow, checkpoints).

    Example:
        >>> from tbptt.clipping import NoClip
        >>> from tbptt.data import build_corpus, count_text
        >>> from tbptt.schedule import FixedSchedule
        >>> corpus = build_corpus(count_text(4000), source="count", val_fraction=0.1,
        ...                       batch_size=4, eval_batch_size=2, window=8)
        >>> model = CharRNN(len(corpus.vocab), hidden_size=16, layers=1)
        >>> budget = Budget(eval_every=256, eval_max_tokens=64, eval_length=8, max_tokens=512)
        >>> trainer = Trainer(model, torch.optim.Adam(model.parameters()), NoClip(),
        ...                   FixedSchedule(8), corpus, budget, MetricsLog(getfixture("tmp_path")))
        >>> trainer.fit().updates
        16
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
    on_eval: Sequence[EvalCallback] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_loss_window(self.loss_window)
        self.state = TrainState()
        self._n_eff = self.model.n_eff()
        self._parts = part_names(self.model)
        self._ahead: deque[Window] = deque()  # windows drawn from the schedule, not yet used
        self._handlers: dict[Events, list[Handler]] = {event: [] for event in Events}
        self._started: float | None = None  # perf_counter() at the start of fit(), resumes too
        self._started_at: float | None = None  # time.time() as fit() began
        self._reset_carried()
        if self.error_clip is not None:
            self.model.output_hooks.append(self.error_clip.hook)

    def on(self, event: Events, handler: Handler) -> None:
        """Run ``handler(trainer, point)`` at ``event`` of every evaluation."""
        self._handlers[event].append(handler)

    @property
    def hidden(self) -> Hidden:
        """The (detached) state at the current position: where the next new steps start."""
        return self._carried[self.state.position]

    def _reset_carried(self) -> None:
        # position -> detached state after consuming the positions before it
        self._carried: dict[int, Hidden] = {0: self.model.init_hidden(self.corpus.train.size(1))}

    def _elapsed(self) -> float:
        return math.nan if self._started is None else time.perf_counter() - self._started

    def fit(self) -> TrialResult:
        self._started = time.perf_counter() - self.state.elapsed
        self._started_at = time.time()
        try:
            self._train()
        except StopRun as stop:
            self.state.stop_reason = stop.reason
        finally:
            self.state.elapsed = self._elapsed()
            self.log.flush()  # metrics recorded so far survive any ending, crashes included
        result = self.result()
        write_result(asdict(result), self.log.directory)
        return result

    def result(self) -> TrialResult:
        """What the run has trained so far, as ``result.json`` records it."""
        s = self.state
        return TrialResult(
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
            started_at=self._started_at,
        )

    def _train(self) -> None:
        s = self.state
        # (time, FLOPs) since this call's start, until a time budget is planned: its speed, not
        # a resumed run's, measured over the later half (see RATE_WINDOW_S).
        marks = [(time.perf_counter(), s.flops)]
        while not self.budget.spent(s.tokens, s.flops, self._elapsed()):
            if self.budget.by_time:
                marks.append((time.perf_counter(), s.flops))
                if self.budget.plan_due(self._elapsed()):
                    self._plan_flops(marks)
            self.update()
            if self._eval_due():
                self._evaluate()
        if s.evals == 0 or s.last_eval_tokens != s.tokens:
            self._evaluate()  # the run always ends on an evaluation of its final weights

    def _plan_flops(self, marks: list[tuple[float, int]]) -> None:
        now, s = time.perf_counter(), self.state
        assert self.budget.max_seconds is not None
        if now - marks[0][0] < min(RATE_WINDOW_S, 0.2 * self.budget.max_seconds):
            return  # measure the speed a little first (a resumed run may be due at once)
        rate = later_rate(marks, now, s.flops)
        self.budget = self.budget.planned(s.flops, rate, self._elapsed())
        s.planned_flops, s.planned_anneal = self.budget.max_flops, self.budget.anneal

    def _eval_due(self) -> bool:
        s, every, step_of = self.state, self.budget.eval_every, self.budget.step_of
        now, last = step_of(s.tokens, s.flops), step_of(s.last_eval_tokens, s.last_eval_flops)
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
        hidden = self._carried[start]
        cuts = {a for a in self._future_starts(end) if a >= new and a > start}
        bounds = [start, *sorted(cuts), end]
        chunks = []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            if lo > start and self.error_clip is not None:
                for tensor in hidden if isinstance(hidden, tuple) else (hidden,):
                    tensor.register_hook(self.error_clip.hook)
            logits, hidden = self.model(stream[lo:hi], hidden)  # (hi - lo, B, V)
            # Stored detached: the value seeds a later span, whose backward must stop there.
            self._carried[hi] = detach(hidden)
            chunks.append(logits)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # (end - start, B, V)

    def _loss(self, logits: torch.Tensor, end: int, k1: int) -> torch.Tensor:
        stream = self.corpus.train
        if self.loss_window == "last":
            return F.cross_entropy(logits[-1], stream[end])
        return F.cross_entropy(
            logits[-k1:].flatten(0, 1), stream[end - k1 + 1 : end + 1].flatten()
        )

    def update(self) -> None:
        """One TBPTT update: k1 new steps, gradient through the last k2 (see the module doc)."""
        window = self._take_window()
        if self.state.position + window.k1 + 1 > self.corpus.train.size(0):
            # End of the streams: start the next pass from the top with a fresh state, since
            # the state at the end of a stream says nothing about its beginning.
            self.state.position = 0
            self._reset_carried()
        new = self.state.position
        end = new + window.k1
        start = max(0, end - window.k2)
        self.model.train()
        if self.error_clip is not None:
            self.error_clip.reset()
        logits = self._forward(start, new, end)
        loss = self._loss(logits, end, window.k1)
        self._step(loss, window, end - start)
        self._forget_unneeded(end)

    def _measure(self, loss: torch.Tensor, end: int) -> dict[str, float]:
        """The loss, the hidden norm at ``end`` and the gradient norms (``grad_norm_<part>``,
        and ``grad_norm`` in all), read from the device in one transfer: per-value reads cost a
        host round trip each, a few percent of a small model's update."""
        values = torch.cat([
            loss.detach().reshape(1), hidden_norm(self._carried[end]).reshape(1),
            grad_norms(self.model),
        ]).tolist()  # fmt: skip
        names = ["loss", "hidden_norm", *(f"grad_norm_{p}" for p in self._parts), "grad_norm"]
        return dict(zip(names, values, strict=True))

    def _step(self, loss: torch.Tensor, window: Window, span: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s = self.state
        measured = self._measure(loss, s.position + window.k1)
        if not math.isfinite(measured["loss"]):
            raise StopRun(f"non-finite loss at token {s.tokens}")
        clip = self.clipper(self.model.parameters(), measured.pop("grad_norm"))
        if not math.isfinite(clip.norm_before):
            raise StopRun(f"non-finite gradient norm at token {s.tokens}")
        anneal = self.budget.lr_factor(s.tokens, s.flops)
        with scaled_lr(self.optimizer, window.lr_scale * anneal) as lr:
            self.optimizer.step()
        s.position, s.updates = s.position + window.k1, s.updates + 1
        s.tokens += window.k1 * self.corpus.train.size(1)
        s.flops += update_flops(self._n_eff, self.corpus.train.size(1), span)
        self._record_step(window, measured, clip, lr)
        reason = self.divergence.after_update(s, measured["loss"])
        if reason:
            raise StopRun(reason)

    def _record_step(
        self, window: Window, measured: dict[str, float], clip: ClipResult, lr: float
    ) -> None:
        """The update's row of ``steps`` (its columns: tbptt/metrics.py)."""
        s, parts = self.state, {k: v for k, v in measured.items() if k.startswith("grad_norm_")}
        row: dict[str, Any] = dict(
            tokens=s.tokens, flops=s.flops, update=s.updates, loss=measured["loss"],
            grad_norm=clip.norm_before, grad_norm_clipped=clip.norm_after, clipped=clip.clipped,
            lr=lr, k1=window.k1, k2=window.k2, hidden_norm=measured["hidden_norm"], **parts,
        )  # fmt: skip
        if self.error_clip is not None:
            stats = self.error_clip.stats()
            row.update(
                error_clipped=stats.clipped, error_max=stats.max_abs, error_mean=stats.mean_abs
            )
        row["elapsed_s"] = self._elapsed()
        self.log.add("steps", **row)

    def _forget_unneeded(self, end: int) -> None:
        keep = self._future_starts(end) | {end}
        for pos in [p for p in self._carried if p not in keep]:
            del self._carried[pos]

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean validation loss (nats per character) over a fixed prefix of the val streams."""
        return mean_loss(
            self.model, self.corpus.val, self.budget.eval_max_tokens, self.budget.eval_length
        )

    def _evaluate(self) -> None:
        """Measure, record, save, then judge: a non-finite or diverged loss stops the run
        (after its checkpoint); an evaluation that stands goes to the ``on_eval`` callbacks."""
        loss, s = self.evaluate(), self.state
        best_before = s.best_val_loss
        point = self._advance(loss)
        row = dict(tokens=s.tokens, flops=s.flops, val_loss=loss, val_bpc=loss / LN2,
                   decay_factor=math.nan)  # fmt: skip
        for handler in self._handlers[Events.MEASURED]:
            row.update(handler(self, point) or {})
        s.elapsed = self._elapsed()
        self.log.add("evals", **row, elapsed_s=s.elapsed)
        self.log.flush()
        for handler in self._handlers[Events.RECORDED]:
            handler(self, point)
        if not math.isfinite(loss):
            raise StopRun(f"non-finite validation loss at token {s.tokens}")
        reason = self.divergence.after_eval(s, loss, best_before)
        if reason:
            raise StopRun(reason)
        for callback in self.on_eval:
            callback(point)

    def _advance(self, loss: float) -> EvalPoint:
        """Count the evaluation in ``state``; where it stands."""
        s = self.state
        before = self.budget.fraction(s.last_eval_tokens, s.last_eval_flops) if s.evals else 0.0
        s.evals += 1
        s.last_eval_tokens, s.last_eval_flops, s.last_val_loss = s.tokens, s.flops, loss
        improved = math.isfinite(loss) and loss < s.best_val_loss
        s.best_val_loss = loss if improved else s.best_val_loss
        return EvalPoint(
            tokens=s.tokens,
            flops=s.flops,
            step=self.budget.step_of(s.tokens, s.flops),
            val_loss=loss,
            improved=improved,
            final=self.budget.spent(s.tokens, s.flops, self._elapsed()),
            spent=self.budget.fraction(s.tokens, s.flops),
            spent_before=before,
        )

    # -- what a checkpoint holds (tbptt/checkpoint.py writes and reads it) -------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ahead": [(w.k1, w.k2, w.lr_scale) for w in self._ahead],
            "state": asdict(self.state),
            "states": self._carried,  # (the key older checkpoints have)
            "rng": checkpoint.rng_state(),
            "meta": self.meta,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from ``payload`` (``state_dict``): what follows equals an uninterrupted
        run. A payload that does not fit this trainer raises ValueError or RuntimeError."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self._ahead = deque(Window(*w) for w in payload["ahead"])
        self.state = TrainState(**payload["state"])
        if self.state.planned_flops is not None and self.budget.by_time:
            anneal = self.state.planned_anneal or 0.0
            self.budget = replace(self.budget, max_flops=self.state.planned_flops, anneal=anneal)
        device = self.corpus.train.device
        self._carried = {pos: _to(h, device) for pos, h in payload["states"].items()}
        checkpoint.set_rng_state(payload["rng"])


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
