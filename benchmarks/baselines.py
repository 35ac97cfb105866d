"""Hand-written PyTorch baselines, the yardsticks our Trainer is measured against.

Each is a generator: one ``next()`` makes one update, so that benchmarks can alternate single
updates of two implementations and compare them under the same machine load.

- :func:`fused_updates`: the minimal TBPTT loop with k1 = k2 (one fused 2-layer ``nn.LSTM``
  call per window, detach, backward, ``clip_grad_norm_``, Adam), as in PyTorch's
  ``word_language_model`` example.
- :func:`recompute_updates`: k1 < k2 by plain recomputation: each update reruns the fused LSTM
  over the last k2 steps from a stored state, loss on the last k1.
- :class:`PerStepTBPTT`: the per-step implementation posted by albanD in the PyTorch forum
  thread "Implementing Truncated Backpropagation Through Time", extended to LSTM (h, c) states.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_

from benchmarks.workloads import LR, MAX_NORM, ModelSpec

State = tuple[torch.Tensor, torch.Tensor]  # LSTM (h, c), each (layers, B, H)


class FusedLM(nn.Module):
    """Embedding -> one fused multi-layer ``nn.LSTM`` -> linear decoder."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab, spec.embed)
        self.lstm = nn.LSTM(spec.embed, spec.hidden, spec.layers)
        self.decoder = nn.Linear(spec.hidden, spec.vocab)

    def init_hidden(self, batch: int) -> State:
        h = torch.zeros(self.spec.layers, batch, self.spec.hidden)  # (L, B, H)
        return h, torch.zeros_like(h)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, state = self.lstm(self.embed(x), state)  # (T, B, H)
        return self.decoder(out), state  # (T, B, V)


def new_model(spec: ModelSpec) -> tuple[FusedLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = FusedLM(spec)
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def detach(state: State) -> State:
    return state[0].detach(), state[1].detach()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer.step()


def fused_updates(
    model: nn.Module, optimizer: torch.optim.Optimizer, stream: torch.Tensor, k: int
) -> Iterator[None]:
    """TBPTT(k, k) over ``stream`` (T, B): one model call per window, one update per ``next``.

    ``model`` is a :class:`FusedLM`, or our ``CharRNN`` (both ``model(x, state) -> (logits,
    state)``), which tells the model's layout apart from the trainer around it.
    """
    state = model.init_hidden(stream.size(1))
    for i in range(0, stream.size(0) - k, k):
        # Keep the state's values (context flows on) but cut the graph behind them, or every
        # backward pass would run through the whole stream so far.
        state = detach(state)
        logits, state = model(stream[i : i + k], state)  # (k, B, V)
        targets = stream[i + 1 : i + k + 1]  # (k, B)
        _step(model, optimizer, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
        yield


def _span(
    model: nn.Module, stream: torch.Tensor, states: dict[int, State], bounds: list[int]
) -> torch.Tensor:
    """Fused calls over rows [bounds[0], bounds[-1]), storing the detached state at each inner
    bound: a later span starts there, and its backward must stop there."""
    state, chunks = states[bounds[0]], []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        logits, state = model(stream[lo:hi], state)  # (hi - lo, B, V)
        states[hi] = detach(state)
        chunks.append(logits)
    return torch.cat(chunks)  # (span, B, V)


def recompute_updates(
    model: nn.Module, optimizer: torch.optim.Optimizer, stream: torch.Tensor, k1: int, k2: int
) -> Iterator[None]:
    """TBPTT(k1, k2) by recomputation: rerun the last k2 steps from the state stored there."""
    states = {0: model.init_hidden(stream.size(1))}
    for end in range(k1, stream.size(0) - 1, k1):
        start, cut = max(0, end - k2), max(0, end + k1 - k2)  # this span's and the next's start
        bounds = [start, cut, end] if start < cut < end else [start, end]
        logits = _span(model, stream, states, bounds)
        targets = stream[end - k1 + 1 : end + 1]  # (k1, B)
        _step(model, optimizer, F.cross_entropy(logits[-k1:].flatten(0, 1), targets.flatten()))
        states = {cut: states[cut]}  # the only state a later span needs
        yield


class PerStepTBPTT:
    """albanD's per-step TBPTT (PyTorch forum, "Implementing Truncated Backpropagation Through
    Time"), written out for LSTM (h, c) states.

    One step at a time: each step starts from a detached copy of the previous step's new state
    that requires grad (a leaf), and a list keeps the last k2 (leaf, new_state) pairs. Every k1
    steps the loss is backpropagated into the leaves, then chained back one step at a time: the
    gradient that reached step s's leaf is pushed through step s-1's graph with
    ``new_state.backward(grad)``, k2 - 1 times. With k1 < k2 the graphs are kept
    (``retain_graph``) because the next update walks through part of them again.

    Two departures from the post, so that it computes what ours does: the loss covers the last
    k1 steps (our ``loss_window=k1``; the post takes the last step's only), and each leaf's
    ``.grad`` is cleared before an update (the post lets it accumulate across overlapping
    updates, which chains stale gradient back). Kept as posted: an optimizer step between two
    updates modifies weights saved in the retained graphs, so with k1 < k2 the next chained
    backward raises "modified by an inplace operation".

    Args:
        model: the fused model, called on one step at a time.
        k1, k2: steps between updates, steps backpropagated.
        optimizer: stepped after each update; None: gradients only (clipped, never applied).

    Example:
        >>> for _ in islice(PerStepTBPTT(model, 10, 40).updates(stream), 5): pass
    """

    def __init__(
        self, model: FusedLM, k1: int, k2: int, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        if not 1 <= k1 <= k2:
            raise ValueError(f"need 1 <= k1 <= k2, got k1={k1}, k2={k2}")
        self._model, self._k1, self._k2, self._optimizer = model, k1, k2, optimizer
        self._retain = k1 < k2
        self._states: list[tuple[State | None, State]] = []

    def updates(self, stream: torch.Tensor) -> Iterator[None]:
        self._states = [(None, self._model.init_hidden(stream.size(1)))]
        outputs: list[torch.Tensor] = []
        for j in range(stream.size(0) - 1):
            # A fresh leaf per step: its .grad is where the chained backward picks up.
            leaf = tuple(t.detach().requires_grad_() for t in self._states[-1][1])
            logits, new = self._model(stream[j : j + 1], leaf)  # (1, B, V)
            self._states.append((leaf, new))  # type: ignore[arg-type]
            outputs.append(logits[0])
            del self._states[: -self._k2]  # forget what is older than k2 steps
            if (j + 1) % self._k1 == 0:
                targets = stream[j + 2 - self._k1 : j + 2]  # (k1, B)
                self._update(torch.stack(outputs), targets)
                outputs = []
                yield

    def _update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # logits (k1, B, V)
        for leaf, _ in self._states:
            for t in leaf or ():
                t.grad = None
        self._model.zero_grad(set_to_none=True)
        # Kept: the chain below walks back through the graphs this loss went through.
        loss.backward(retain_graph=True)
        for i in range(self._k2 - 1):
            if self._states[-i - 2][0] is None:
                break  # reached the initial state: nothing behind it
            grads = [t.grad for t in self._states[-i - 1][0]]  # type: ignore[union-attr]
            torch.autograd.backward(
                list(self._states[-i - 2][1]), grads, retain_graph=self._retain
            )
        clip_grad_norm_(self._model.parameters(), MAX_NORM)
        if self._optimizer is not None:
            self._optimizer.step()


def per_step_raises_inplace(
    spec: ModelSpec, stream: torch.Tensor, k1: int, k2: int, optimizer: str = "adam"
) -> bool:
    """Whether the per-step implementation fails once ``optimizer`` (``adam``, or ``sgd0``:
    SGD with lr=0, a step that changes no value) steps between two updates."""
    model, adam = new_model(spec)
    step = adam if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=0.0)
    try:
        for _ in islice(PerStepTBPTT(model, k1, k2, step).updates(stream), 2):
            pass
    except RuntimeError as err:
        if "modified by an inplace operation" in str(err):
            return True
        raise
    return False
