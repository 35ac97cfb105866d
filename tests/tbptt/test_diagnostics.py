"""Gradient diagnostics: the flow ||dL_t/dh_{t-j}|| through time, its decay factor, and the
per-layer gradient norms the trainer logs on every update."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbptt.diagnostics import decay_factor, gradient_flow, layer_grad_norms
from tbptt.model import CharRNN
from tbptt.train import build_trainer

VOCAB, BATCH, STEPS = 5, 4, 13


def linear_tanh_rnn(gain: float) -> CharRNN:
    """A tanh RNN whose backward pass is exactly ``gain`` x an orthogonal matrix per step.

    With zero input weights and biases and a zero initial state, every h_t is 0, so
    tanh'(0) = 1 and the step Jacobian dh_t/dh_{t-1} is W_hh itself: the gradient norm is
    multiplied by exactly ``gain`` per step, without tanh saturating the growing case.
    """
    torch.manual_seed(0)
    model = CharRNN(VOCAB, cell="rnn_tanh", embed_size=8, hidden_size=32, layers=1)
    rnn = model.rnns[0]
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(gain)
        for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(rnn, name).zero_()
    return model


def flow(model: CharRNN) -> list[float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (STEPS, BATCH), generator=g)  # (T, B)
    y = torch.randint(0, VOCAB, (STEPS, BATCH), generator=g)  # (T, B)
    return gradient_flow(model, x, y, model.init_hidden(BATCH))


def test_gradient_flow_decays_with_lag_for_small_recurrent_weights():
    norms = flow(linear_tanh_rnn(gain=0.3))
    assert len(norms) == STEPS
    assert all(later < earlier for earlier, later in zip(norms[1:], norms[2:], strict=False))
    assert decay_factor(norms) < 0.5
    assert decay_factor(norms) == pytest.approx(0.3, rel=1e-3)


def test_gradient_flow_grows_with_lag_for_large_recurrent_weights():
    norms = flow(linear_tanh_rnn(gain=3.0))
    assert all(later > earlier for earlier, later in zip(norms[1:], norms[2:], strict=False))
    assert decay_factor(norms) > 1
    assert decay_factor(norms) == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_decay_factor_recovers_a_geometric_rate(factor):
    norms = [2.5 * factor**j for j in range(10)]
    assert decay_factor(norms) == pytest.approx(factor, rel=1e-9)


@pytest.mark.parametrize(
    "norms",
    [[], [1.0], [1.0, 0.5], [1.0, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0]],
    ids=["empty", "lag0-only", "one-lag", "one-positive-lag", "all-zero-lags"],
)
def test_decay_factor_is_nan_with_fewer_than_two_usable_lags(norms):
    assert math.isnan(decay_factor(norms))


def test_gradient_flow_leaves_parameter_grads_untouched():
    model = linear_tanh_rnn(gain=1.0)
    flow(model)
    assert all(p.grad is None for p in model.parameters())


def test_layer_grad_norms_split_the_total_norm_by_layer():
    torch.manual_seed(0)
    model = CharRNN(VOCAB, cell="lstm", embed_size=8, hidden_size=16, layers=3)
    x = torch.randint(0, VOCAB, (STEPS, BATCH))  # (T, B)
    logits, _ = model(x, model.init_hidden(BATCH))  # (T, B, V)
    F.cross_entropy(logits[:-1].flatten(0, 1), x[1:].flatten()).backward()
    norms = layer_grad_norms(model)
    assert list(norms) == ["embed", "rnn0", "rnn1", "rnn2", "decoder"]
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.parameters()))
    assert math.sqrt(sum(n**2 for n in norms.values())) == pytest.approx(total, rel=1e-5)


def test_trainer_logs_the_flow_profile_halfway_and_at_the_end(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.grad_flow=true")  # 1024 tokens, an evaluation every 256
    build_trainer(cfg, tmp_path, []).fit()
    flows = pd.read_parquet(tmp_path / "grad_flow.parquet")
    evals = pd.read_parquet(tmp_path / "evals.parquet")
    assert sorted(flows["tokens"].unique()) == [512, 1024]
    for tokens, profile in flows.groupby("tokens"):
        assert profile["lag"].tolist() == list(range(cfg.bptt.length + 1)), tokens
    measured = evals.set_index("tokens")["decay_factor"].map(math.isfinite)
    assert measured.to_dict() == {256: False, 512: True, 768: False, 1024: True}


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_gradient_flow_reaches_the_final_state_at_lag_zero(cell):
    torch.manual_seed(0)
    model = CharRNN(vocab_size=5, cell=cell, embed_size=4, hidden_size=6, layers=2).eval()
    x = torch.randint(0, 5, (7, 3))
    norms = gradient_flow(model, x, x, model.init_hidden(3))
    assert len(norms) == 7 and all(n > 0 for n in norms)
