"""Truncated backpropagation through time (TBPTT) for a character language model.

Each update reads the next window of k1 characters from every stream, starting from the hidden
state the previous window ended in, and backpropagates the window's loss::

    stream:  ... | x_{t-k1+1} ... x_t | x_{t+1} ... x_{t+k1} | ...
                   window n             window n+1
                   h_{t-k1} -> h_t  ==detach==> h_t -> h_{t+k1}
                   <--- backprop --->          <--- backprop --->

The forward pass carries context indefinitely (h_t flows from window to window), but the
gradient stops at the window boundary: ``detach()`` keeps the value of h_t and cuts the
autograd graph behind it. Without it, the graph (and memory) would grow with the whole stream
and every backward pass would run through all earlier windows again.

The optimizer is created once, outside this module, and lives for the whole run: re-creating
Adam per window would reset its moment estimates and silently stall training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tbptt import checkpoint
from tbptt.clipping import Clipper
from tbptt.data import Corpus
from tbptt.errors import ConfigError
from tbptt.metrics import MetricsLog, write_json
from tbptt.model import CharRNN, Hidden, detach, hidden_norm
from tbptt.schedule import Schedule, Window

LN2 = math.log(2.0)


class StopRun(Exception):
    """Ends a run early with a recorded reason (divergence, non-finite values, a callback)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Budget:
    max_tokens: int  # characters consumed in training, summed over streams
    eval_every_tokens: int
    eval_max_tokens: int  # validation characters read per evaluation (a fixed prefix)
    eval_length: int  # window length used to walk the validation streams


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    tokens: int = 0
    updates: int = 0
    position: int = 0  # row of the training stream where the next window starts
    evals: int = 0
    last_eval_tokens: int = 0
    best_val_loss: float = math.inf
    last_val_loss: float = math.inf
    elapsed: float = 0.0
    stop_reason: str | None = None


@dataclass(frozen=True)
class RunResult:
    completed: bool  # False when the run stopped early (see stop_reason)
    stop_reason: str | None
    tokens: int
    updates: int
    best_val_loss: float
    final_val_loss: float
    wall_seconds: float

    def objective(self, kind: str = "best") -> float:
        return self.best_val_loss if kind == "best" else self.final_val_loss


EvalCallback = Callable[[int, float], None]  # (tokens, val_loss); raise StopRun to stop


@dataclass
class Trainer:
    """Trains ``model`` on ``corpus`` with TBPTT windows drawn from ``schedule``.

    Args:
        model: the language model; its parameters are what ``optimizer`` updates.
        optimizer: created once by the caller and kept for the whole run.
        clipper: gradient clipper (measures the pre-clip norm on every update).
        schedule: yields the (k1, k2) window of each update.
        corpus: batched train/val streams, already on the model's device.
        budget: token budget and evaluation cadence.
        log: metric tables of this run.
        checkpoint_path: where to write a checkpoint at every evaluation (None: never).
        on_eval: called after each evaluation with (tokens, val_loss).
        meta: extra plain data stored in checkpoints (vocabulary, model shape).

    Example:
        >>> Trainer(model, Adam(model.parameters()), NoClip(), FixedSchedule(35), corpus,
        ...         budget, MetricsLog(run_dir)).fit().best_val_loss
    """

    model: CharRNN
    optimizer: torch.optim.Optimizer
    clipper: Clipper
    schedule: Schedule
    corpus: Corpus
    budget: Budget
    log: MetricsLog
    checkpoint_path: Path | None = None
    on_eval: Sequence[EvalCallback] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = TrainState()
        self.hidden: Hidden = self.model.init_hidden(self.corpus.train.size(1))

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
        write_json(asdict(result), self.log.directory / "result.json")
        return result

    def result(self) -> RunResult:
        s = self.state
        return RunResult(
            s.stop_reason is None,
            s.stop_reason,
            s.tokens,
            s.updates,
            s.best_val_loss,
            s.last_val_loss,
            s.elapsed,
        )

    def _train(self, started: float) -> None:
        while self.state.tokens < self.budget.max_tokens:
            self._update(self.schedule.next(), started)
            if self._eval_due():
                self._evaluate(started)
        if self.state.evals == 0 or self.state.last_eval_tokens != self.state.tokens:
            self._evaluate(started)  # the run always ends on an evaluation of its final weights

    def _eval_due(self) -> bool:
        every = self.budget.eval_every_tokens
        return self.state.tokens // every > self.state.last_eval_tokens // every

    def _next_window(self, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        stream = self.corpus.train  # (T, B)
        if self.state.position + k1 + 1 > stream.size(0):
            # End of the streams: start the next pass from the top with a fresh state, since
            # the state at the end of a stream says nothing about its beginning.
            self.state.position = 0
            self.hidden = self.model.init_hidden(stream.size(1))
        i = self.state.position
        return stream[i : i + k1], stream[i + 1 : i + k1 + 1]  # (k1, B) inputs and targets

    def _update(self, window: Window, started: float) -> None:
        x, y = self._next_window(window.k1)
        self.model.train()
        # Cut the graph at the window boundary: the state's value carries over, its history
        # does not, so backprop stops here (k2 = k1 steps back) and memory stays flat.
        self.hidden = detach(self.hidden)
        logits, self.hidden = self.model(x, self.hidden)  # (k1, B, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise StopRun(f"non-finite loss at token {self.state.tokens}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.clipper(self.model.parameters())
        if not math.isfinite(clip.norm_before):
            raise StopRun(f"non-finite gradient norm at token {self.state.tokens}")
        with scaled_lr(self.optimizer, window.lr_scale) as lr:
            self.optimizer.step()
        self._advance(window, x.numel())
        self.log.add(
            "steps",
            tokens=self.state.tokens,
            update=self.state.updates,
            loss=loss_value,
            grad_norm=clip.norm_before,
            grad_norm_clipped=clip.norm_after,
            clipped=clip.clipped,
            lr=lr,
            k1=window.k1,
            k2=window.k2,
            hidden_norm=hidden_norm(self.hidden),
            elapsed_s=time.perf_counter() - started,
        )

    def _advance(self, window: Window, tokens: int) -> None:
        self.state.position += window.k1
        self.state.tokens += tokens
        self.state.updates += 1

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss (nats per character) over a fixed prefix of the val streams."""
        self.model.eval()
        val = self.corpus.val  # (T_val, B_eval)
        rows = min(val.size(0) - 1, max(1, self.budget.eval_max_tokens // val.size(1)))
        hidden = self.model.init_hidden(val.size(1))
        total, count = 0.0, 0
        for i in range(0, rows, self.budget.eval_length):
            n = min(self.budget.eval_length, rows - i)
            logits, hidden = self.model(val[i : i + n], hidden)  # (n, B_eval, V)
            target = val[i + 1 : i + n + 1]
            total += float(
                F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
            )
            count += target.numel()
        return total / count

    def _evaluate(self, started: float) -> None:
        loss = self.evaluate()
        s = self.state
        s.evals += 1
        s.last_eval_tokens = s.tokens
        s.last_val_loss = loss
        s.best_val_loss = min(s.best_val_loss, loss) if math.isfinite(loss) else s.best_val_loss
        s.elapsed = time.perf_counter() - started
        self.log.add(
            "evals", tokens=s.tokens, val_loss=loss, val_bpc=loss / LN2, elapsed_s=s.elapsed
        )
        self.log.flush()
        if self.checkpoint_path is not None:
            self.save(self.checkpoint_path)
        if not math.isfinite(loss):
            raise StopRun(f"non-finite validation loss at token {s.tokens}")
        for callback in self.on_eval:
            callback(s.tokens, loss)

    def save(self, path: Path) -> None:
        checkpoint.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "state": asdict(self.state),
                "hidden": detach(self.hidden),
                "rng": checkpoint.rng_state(),
                "meta": self.meta,
            },
            path,
        )

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: metrics after resuming equal an uninterrupted run's."""
        payload = checkpoint.load(path, key="trainer.resume")
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise ConfigError(
                f"trainer.resume: {path} was written for another model shape ({first})"
            ) from None
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.state = TrainState(**payload["state"])
        device = self.corpus.train.device
        hidden = payload["hidden"]
        self.hidden = (
            tuple(h.to(device) for h in hidden) if isinstance(hidden, tuple) else hidden.to(device)
        )
        checkpoint.set_rng_state(payload["rng"])
        self.log.restore(up_to_tokens=self.state.tokens)


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
