"""TBPTT(k1, k2) gradients equal a brute-force float64 reference, update after update.

The reference is Williams & Peng's BPTT(h; h') written out by hand: one time step at a time,
straight from the cell equations and the layer weights, so it shares no code with the fused
forward that the trainer runs. For the update that starts at row p of the training stream::

    row:    0 ............ a ................ p .............. p+k1
            zero state     |<------------- k2 steps ---------->|
            (last reset)   |                  |<--- losses --->|   loss_window="k1"
                           |                                  ^    loss_window="last"
            constant       |  gradient flows back to a, no further

    a = max(0, p + k1 - k2)

The state reaching row a is a constant: ``detach()`` there is what makes the truncation. The
optimizer is SGD with lr = 0, so the weights never move and the state at row a equals a no-grad
unroll with those weights from the last reset (row 0, zero state), whatever the trainer did in
between.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbptt.clipping import NoClip
from tbptt.data import Corpus, Vocab
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN
from tbptt.schedule import FixedSchedule
from tbptt.trainer import Budget, Trainer

VOCAB, EMBED, HIDDEN, BATCH, ROWS = 5, 3, 4, 2, 24
TOL = 1e-10  # relative error allowed between the trainer's grads and the reference's

# (k1, k2): every shape of truncation, each run long enough to wrap the stream once.
SHAPES = [
    pytest.param(1, 1, id="k1=1,k2=1"),
    pytest.param(1, 4, id="k1=1,k2=4"),
    pytest.param(4, 4, id="k1=k2=4"),
    pytest.param(3, 6, id="k2=2k1=6"),
    pytest.param(3, 7, id="k1=3,k2=7"),
    pytest.param(4, 10, id="k1=4,k2=10"),
    pytest.param(5, ROWS + 6, id="k1=5,k2>rows"),
]
CELLS = ["rnn_tanh", "gru", "lstm"]
WINDOWS = ["k1", "last"]

State = list  # one entry per layer: h (B, H), or (h, c) for lstm
Grads = dict[str, torch.Tensor]


# --- The reference: cell equations as in the torch.nn.RNN / GRU / LSTM docs --------------------


def rnn_tanh_step(x, h, w_ih, w_hh, b_ih, b_hh):
    return torch.tanh(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))  # (B, H)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)  # gates ordered r, z, n
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h  # (B, H)


def lstm_step(x, hc, w_ih, w_hh, b_ih, b_hh):
    h, c = hc
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H), ordered i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c  # (B, H) each


STEPS: dict[str, Callable] = {"rnn_tanh": rnn_tanh_step, "gru": gru_step, "lstm": lstm_step}


def layer_weights(rnn: nn.Module) -> tuple[torch.Tensor, ...]:
    return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0


def detach_state(state: State) -> State:
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]


class Reference:
    """Brute-force TBPTT(k1, k2) gradients of a float64 copy of the model.

    Args:
        model: a copy of the trained model, taken before training (its weights never change).
        train: the (T, B) training stream.

    Example (``build`` below makes both)::

        Reference(copy.deepcopy(model), train).grads(p=6, k1=3, cut=7, window="k1")
    """

    def __init__(self, model: CharRNN, train: torch.Tensor) -> None:
        self._model, self._train = model, train
        self._step_fn = STEPS[model.cell]
        with torch.no_grad():  # the states before each row, from the reset: constants
            state = self._zero_state()
            self._before = [state]  # _before[s]: state after consuming rows < s
            for s in range(train.size(0)):
                state = self._step(state, train[s])[1]
                self._before.append(state)

    def _zero_state(self) -> State:
        h = torch.zeros(self._train.size(1), HIDDEN, dtype=torch.float64)  # (B, H)
        return [(h, h) if self._model.cell == "lstm" else h for _ in self._model.rnns]

    def _step(self, state: State, x: torch.Tensor) -> tuple[torch.Tensor, State]:
        inp = F.embedding(x, self._model.embed.weight)  # (B, E)
        new = []
        for rnn, s in zip(self._model.rnns, state, strict=True):
            new.append(self._step_fn(inp, s, *layer_weights(rnn)))
            inp = new[-1][0] if isinstance(new[-1], tuple) else new[-1]  # (B, H)
        return F.linear(inp, self._model.decoder.weight, self._model.decoder.bias), new

    def grads(self, p: int, k1: int, cut: int, window: str) -> Grads:
        """Gradient of the update reading rows [p, p+k1), backpropagated ``cut`` steps."""
        a = max(0, p + k1 - cut)
        start = min(a, p)  # a wrong (too short) cut may fall inside the loss window
        state, losses = self._before[start], []
        for s in range(start, p + k1):
            if s == a:
                state = detach_state(state)  # the truncation: no gradient flows behind row a
            logits, state = self._step(state, self._train[s])  # (B, V)
            if s >= p:
                losses.append(F.cross_entropy(logits, self._train[s + 1], reduction="none"))
        loss = torch.stack(losses).mean() if window == "k1" else losses[-1].mean()
        names, params = zip(*self._model.named_parameters(), strict=True)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return {
            n: torch.zeros_like(q) if g is None else g
            for n, q, g in zip(names, params, grads, strict=True)
        }


# --- Helpers ----------------------------------------------------------------------------------


def positions(k1: int, updates: int, rows: int = ROWS) -> list[int]:
    """Start row of each update, as the trainer's contract defines it (wrap to 0 at the end)."""
    p, starts = 0, []
    for _ in range(updates):
        if p + k1 + 1 > rows:
            p = 0
        starts.append(p)
        p += k1
    return starts


def updates_to_wrap(k1: int, rows: int = ROWS) -> int:
    return (rows - 1) // k1 + 2  # one full pass, then two updates after the restart


def build(cell: str, layers: int, k1: int, k2: int, window: str, tmp_path):
    torch.manual_seed(0)
    model = CharRNN(VOCAB, cell=cell, embed_size=EMBED, hidden_size=HIDDEN, layers=layers)
    model.double()
    train = torch.randint(0, VOCAB, (ROWS, BATCH))  # (T, B)
    corpus = Corpus(
        vocab=Vocab("abcde"), train=train, val=torch.randint(0, VOCAB, (8, 2)), source="test"
    )
    reference = Reference(copy.deepcopy(model), train)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),  # weights stay fixed: see the module doc
        NoClip(),
        FixedSchedule(k1, k2),
        corpus,
        Budget(max_tokens=10**9, eval_every=10**9, eval_max_tokens=8, eval_length=4),
        MetricsLog(tmp_path),
        loss_window=window,
    )
    return trainer, reference


def trainer_grads(model: nn.Module) -> Grads:
    return {
        n: torch.zeros_like(q) if q.grad is None else q.grad.clone()
        for n, q in model.named_parameters()
    }


def relative_errors(got: Grads, expected: Grads) -> dict[str, float]:
    """``|g - r| / |r|`` per parameter; an all-zero reference must be matched exactly."""
    assert got.keys() == expected.keys()
    tiny = torch.finfo(torch.float64).tiny
    return {
        n: float((got[n] - r).norm() / max(float(r.norm()), tiny)) for n, r in expected.items()
    }


def total_relative_error(got: Grads, expected: Grads) -> float:
    g = torch.cat([t.flatten() for t in got.values()])
    r = torch.cat([expected[n].flatten() for n in got])
    return float((g - r).norm() / r.norm())


# --- Tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("k1", "k2"), SHAPES)
def test_gradients_equal_brute_force_reference(k1, k2, cell, layers, window, tmp_path):
    trainer, reference = build(cell, layers, k1, k2, window, tmp_path)
    for n, p in enumerate(positions(k1, updates_to_wrap(k1))):
        trainer.update()
        assert trainer.state.position == p + k1, f"update {n}"
        errors = relative_errors(trainer_grads(trainer.model), reference.grads(p, k1, k2, window))
        bad = {name: e for name, e in errors.items() if not e <= TOL}
        assert not bad, f"update {n} reading rows [{p}, {p + k1}): relative errors {bad}"


# A reference with the wrong truncation or loss must disagree with the trainer: the comparison
# above is sensitive to where the gradient is cut, one step either way.
MISTAKES = [
    pytest.param(+1, "k1", id="cut-at-k2+1"),
    pytest.param(-1, "k1", id="cut-at-k2-1"),
    pytest.param(+1, "last", id="cut-at-k2+1-last-window"),
    pytest.param(0, "other", id="other-loss-window"),
]


@pytest.mark.parametrize(("shift", "wrong_window"), MISTAKES)
@pytest.mark.parametrize("cell", CELLS)
def test_a_wrong_reference_is_caught(cell, shift, wrong_window, tmp_path):
    k1, k2, window = 3, 7, "k1" if wrong_window == "other" else wrong_window
    wrong_window = "last" if wrong_window == "other" else wrong_window
    trainer, reference = build(cell, 1, k1, k2, window, tmp_path)
    caught = 0
    for p in positions(k1, updates_to_wrap(k1)):
        trainer.update()
        wrong = reference.grads(p, k1, k2 + shift, wrong_window)
        error = total_relative_error(trainer_grads(trainer.model), wrong)
        same = max(0, p + k1 - k2 - shift) == max(0, p + k1 - k2) and wrong_window == window
        if same:  # the mistake makes no difference when both cuts fall on row 0
            assert error <= TOL, f"update at row {p}"
        else:
            assert error > 1e-6, f"update at row {p}: wrong reference not caught ({error:.1e})"
            caught += 1
    assert caught >= 3


def test_wrap_restarts_from_row_zero_with_a_zero_state(tmp_path):
    # ROWS = 24, k1 = 5: windows start at rows 0, 5, 10, 15; 20 + 5 + 1 > 24, so back to 0.
    trainer, _ = build("lstm", 2, 5, 12, "k1", tmp_path)
    trainer.update()
    first = trainer_grads(trainer.model)
    seen = [trainer.state.position]
    for _ in range(4):
        trainer.update()
        seen.append(trainer.state.position)
    assert seen == [5, 10, 15, 20, 5]
    # Same rows, same weights, zero state: the restarted update repeats the first one exactly,
    # with nothing from the end of the stream leaking in (neither state nor gradient path).
    errors = relative_errors(trainer_grads(trainer.model), first)
    assert max(errors.values()) <= TOL, errors
