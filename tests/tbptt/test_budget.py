"""Compute budgets: the FLOP estimate, FLOP limits and cadence, annealing, best checkpoints and
the held-out test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tbptt import evaluate
from tbptt.evaluate import evaluate_checkpoint
from tbptt.model import CharRNN
from tbptt.train import build_trainer
from tbptt.trainer import Budget, update_flops

V, E = 10, 6  # vocabulary and embedding width of the hand counts below


@pytest.mark.parametrize(
    "cell, layers, hidden, expected",
    [
        # gates x H x (I + H) per layer (I = E for the first, H after), plus H x V
        ("lstm", 1, 4, 4 * 4 * (6 + 4) + 4 * 10),  # 200
        ("lstm", 2, 4, 4 * 4 * (6 + 4) + 4 * 4 * (4 + 4) + 4 * 10),  # 328
        ("gru", 1, 5, 3 * 5 * (6 + 5) + 5 * 10),  # 215
        ("gru", 2, 5, 3 * 5 * (6 + 5) + 3 * 5 * (5 + 5) + 5 * 10),  # 365
        ("rnn_tanh", 1, 3, 1 * 3 * (6 + 3) + 3 * 10),  # 57
        ("rnn_tanh", 2, 3, 1 * 3 * (6 + 3) + 1 * 3 * (3 + 3) + 3 * 10),  # 75
    ],
)
def test_n_eff_matches_a_hand_count(cell, layers, hidden, expected):
    model = CharRNN(V, cell, embed_size=E, hidden_size=hidden, layers=layers)
    assert model.n_eff() == expected
    # The weight matrices it counts are exactly the model's, less embedding and biases.
    matrices = sum(
        p.numel() for n, p in model.named_parameters() if "bias" not in n and "embed" not in n
    )
    assert model.n_eff() == matrices


def test_update_flops_counts_the_recomputed_overlap():
    assert update_flops(n_eff=200, streams=4, span=10) == 6 * 200 * 4 * 10
    # k1 = 10, k2 = 40: each update runs 40 steps forward and back, 4x the k1 = k2 = 10 cost
    assert update_flops(200, 4, 40) == 4 * update_flops(200, 4, 10)


def test_recorded_flops_follow_every_update_span(tiny_cfg, tmp_path):
    cfg = tiny_cfg("bptt.k1=4", "bptt.k2=10", "model=gru", "model.layers=2")
    trainer = build_trainer(cfg, tmp_path, [])
    trainer.fit()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    n_eff, streams = trainer.model.n_eff(), trainer.corpus.train.size(1)
    rows = trainer.corpus.train.size(0)
    # Spans are k2 = 10, cut at the top of a stream (the first two updates of every pass).
    ends, spans, end = [], [], 0
    for _ in range(len(steps)):
        end = 4 if end + 4 + 1 > rows else end + 4
        ends.append(end)
        spans.append(min(end, 10))
    expected = pd.Series(spans).mul(6 * n_eff * streams).cumsum()
    assert steps["flops"].tolist() == expected.tolist()
    assert trainer.state.flops == steps["flops"].iloc[-1]


def test_a_flop_budget_ends_the_run_and_sets_the_evaluation_steps(tiny_cfg, tmp_path):
    per_update = 6 * 8 * 4 * CharRNN(4, "lstm", 8, 16, 1).n_eff()  # span 8, 4 streams
    seen = []
    cfg = tiny_cfg(
        "trainer.max_tokens=null",
        f"trainer.max_flops={10 * per_update}",
        "trainer.eval_every_tokens=null",
        f"trainer.eval_every_flops={4 * per_update}",
    )
    result = build_trainer(cfg, tmp_path, [seen.append]).fit()
    assert result.updates == 10 and result.flops == 10 * per_update
    assert [p.step for p in seen] == [4 * per_update, 8 * per_update, 10 * per_update]
    assert [p.step for p in seen] == [p.flops for p in seen]
    evals = pd.read_parquet(tmp_path / "evals.parquet")
    assert evals["flops"].tolist() == [p.flops for p in seen]


def test_the_first_limit_reached_ends_the_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_tokens=256", "trainer.max_flops=1e15")
    assert build_trainer(cfg, tmp_path, []).fit().tokens == 256
    budget = Budget(eval_every=1, eval_max_tokens=None, eval_length=8, max_seconds=2.0)
    assert not budget.spent(10**9, 10**15, 1.9) and budget.spent(0, 0, 2.0)


def test_anneal_decays_the_lr_linearly_to_zero(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optim.lr=0.01", "trainer.anneal=0.5", "trainer.max_tokens=1024")
    build_trainer(cfg, tmp_path, []).fit()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    # The factor is taken before each update: full lr over the first half of the budget, then
    # (1 - spent / budget) / 0.5.
    spent = (steps["tokens"] - 32) / 1024
    expected = 0.01 * ((1 - spent) / 0.5).clip(upper=1.0)
    assert steps["lr"].tolist() == pytest.approx(expected.tolist())
    assert steps["lr"].iloc[0] == pytest.approx(0.01) and steps["lr"].iloc[-1] < 0.001


def test_best_checkpoint_holds_the_best_validation_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optim.lr=0.02", "trainer.max_tokens=4096", "trainer.eval_every_tokens=512")
    trainer = build_trainer(cfg, tmp_path, [])
    trainer.fit()
    evals = pd.read_parquet(tmp_path / "evals.parquet")
    best = evals.loc[evals["val_loss"].idxmin()]
    payload = torch.load(tmp_path / "best.pt", weights_only=True)
    assert payload["at"]["tokens"] == best["tokens"]
    assert payload["at"]["val_loss"] == pytest.approx(best["val_loss"])
    model = evaluate.load_model(payload)
    assert evaluate.mean_loss(model, trainer.corpus.val, 256, 16) == pytest.approx(
        best["val_loss"], rel=1e-5
    )


def test_training_never_sees_the_test_split(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg("data.test_fraction=0.2"), tmp_path, [])
    assert trainer.corpus.test is None
    trainer.fit()
    losses = evaluate_checkpoint(tmp_path / "best.pt")
    assert set(losses) == {"val", "test"} and all(0 < v < 5 for v in losses.values())


def test_the_splits_partition_the_corpus(tiny_cfg):
    from tbptt.train import typed

    data = typed(tiny_cfg("data.val_fraction=0.1", "data.test_fraction=0.2"))["data"]
    corpus = data.build(window=8)
    total = 20_000  # data.length of the count corpus
    assert corpus.val.numel() == pytest.approx(0.1 * total, abs=2 * 2)
    assert corpus.test.numel() == pytest.approx(0.2 * total, abs=2 * 2)
    assert corpus.train.numel() == pytest.approx(0.7 * total, abs=4)


def test_evaluate_cli_prints_the_test_loss(tiny_cfg, tmp_path):
    build_trainer(tiny_cfg(), tmp_path, []).fit()
    assert evaluate.main([f"checkpoint={tmp_path / 'best.pt'}"]).startswith("test_loss=")
    assert evaluate.main([f"checkpoint={tmp_path / 'checkpoint.pt'}", "split=val"]).startswith(
        "val_loss="
    )


def test_sampling_works_on_the_best_checkpoint(tiny_cfg, tmp_path):
    from tbptt import sample

    build_trainer(tiny_cfg("optim.lr=0.02"), tmp_path, []).fit()
    text = sample.main([f"checkpoint={tmp_path / 'best.pt'}", "length=30", "prime=1"])
    assert len(text) == 31 and set(text) <= set("123 ")


@pytest.mark.slow
def test_a_time_budget_fixes_its_flop_budget_then_anneals_and_replays_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        "trainer.max_tokens=null", "trainer.max_seconds=3", "trainer.anneal=0.5",
        "trainer.eval_every_tokens=null", "trainer.eval_every_flops=1e9",
    )  # fmt: skip
    result = build_trainer(cfg, tmp_path / "timed", []).fit()
    assert result.planned_flops is not None and 0 < result.planned_anneal < 0.6
    steps = pd.read_parquet(tmp_path / "timed" / "steps.parquet")
    # Constant, then annealed linearly to 0 at the planned FLOPs (each step's lr from the
    # FLOPs before it) ...
    peak, end, share = 2e-3, result.planned_flops, result.planned_anneal
    before = steps["flops"].shift(fill_value=0)
    planned_lr = peak * np.minimum(1.0, (1 - before / end) / share)
    assert steps["lr"].tolist() == pytest.approx(planned_lr.tolist(), rel=1e-6)
    # ... and it got most of the way down: the plan leaves 8% of the time spare, but a busy
    # machine can still stop a 3-second run by time a little before its planned FLOPs.
    assert steps["lr"].iloc[-1] < 0.5 * peak
    replay_cfg = tiny_cfg(
        "trainer.max_tokens=null", f"trainer.max_flops={result.planned_flops}",
        f"trainer.anneal={result.planned_anneal!r}", "trainer.eval_every_tokens=null",
        "trainer.eval_every_flops=1e9",
    )  # fmt: skip
    replay = build_trainer(replay_cfg, tmp_path / "replay", []).fit()
    assert replay.updates >= result.updates  # the time limit may have come first
    again = pd.read_parquet(tmp_path / "replay" / "steps.parquet").iloc[: len(steps)]
    assert again["loss"].tolist() == steps["loss"].tolist()
    assert again["lr"].tolist() == pytest.approx(steps["lr"].tolist())
