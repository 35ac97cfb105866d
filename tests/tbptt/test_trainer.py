from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tbptt.model import detach
from tbptt.train import build_trainer
from tbptt.trainer import StopRun, scaled_lr


def test_tiny_lstm_learns_the_count_corpus(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optim.lr=0.02", "trainer.max_tokens=12000", "trainer.eval_every_tokens=4000")
    result = build_trainer(cfg, tmp_path, []).fit()
    assert result.completed and result.tokens >= 12000
    assert result.final_val_loss < 0.05  # "1 2 3 " is deterministic: near-zero loss


def test_state_is_carried_across_windows_but_detached(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg("model=gru"), tmp_path, [])
    seen, forward = [], trainer.model.forward

    def recording_forward(x, hidden):
        seen.append(hidden)
        out, new_hidden = forward(x, hidden)
        seen.append(new_hidden)
        return out, new_hidden

    trainer.model.forward = recording_forward
    for _ in range(3):
        trainer.update()
    incoming, outgoing = seen[2::2], seen[1:-1:2]
    for given, previous in zip(incoming, outgoing, strict=True):
        assert given.grad_fn is None and given.is_leaf  # the graph was cut...
        assert torch.equal(given, previous.detach())  # ...but the value carried over


def test_gradients_equal_a_one_window_reference(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg("clip=none", "model.dropout=0.0"), tmp_path, [])
    trainer.update()
    reference = copy.deepcopy(trainer.model)
    start = detach(trainer.hidden)
    i, k = trainer.state.position, trainer.schedule.next().k1
    x, y = trainer.corpus.train[i : i + k], trainer.corpus.train[i + 1 : i + k + 1]
    logits, _ = reference(x, start)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    trainer.update()
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_one_optimizer_lives_for_the_whole_run(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg(), tmp_path, [])
    optimizer = trainer.optimizer
    trainer.fit()
    assert trainer.optimizer is optimizer
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {trainer.state.updates}  # Adam's moments were never reset


def test_metric_tables_and_result_are_written(tiny_cfg, tmp_path):
    result = build_trainer(tiny_cfg("clip=norm", "clip.max_norm=0.01"), tmp_path, []).fit()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    evals = pd.read_parquet(tmp_path / "evals.parquet")
    assert len(steps) == result.updates and steps["tokens"].is_monotonic_increasing
    assert {"loss", "grad_norm", "grad_norm_clipped", "clipped", "lr", "elapsed_s"} <= set(steps)
    assert steps["clipped"].all() and (steps["grad_norm_clipped"] <= 0.0101).all()
    assert (steps["grad_norm"] > steps["grad_norm_clipped"]).all()
    assert evals["tokens"].tolist() == [256, 512, 768, 1024]
    assert evals["val_bpc"].tolist() == pytest.approx(
        (evals["val_loss"] / 0.693147).tolist(), 1e-5
    )
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["best_val_loss"] == pytest.approx(evals["val_loss"].min())


def test_non_finite_loss_stops_the_run_and_keeps_its_metrics(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg(), tmp_path, [])

    def poison(point) -> None:
        trainer.model.decoder.bias.data.fill_(float("inf"))

    trainer.on_eval = [poison]
    result = trainer.fit()
    assert not result.completed
    assert result.stop_reason == "non-finite loss at token 256"
    assert len(pd.read_parquet(tmp_path / "steps.parquet")) == result.updates == 8


def test_a_callback_can_stop_the_run_with_a_reason(tiny_cfg, tmp_path):
    def stop(point) -> None:
        raise StopRun(f"pruned at token {point.tokens}")

    result = build_trainer(tiny_cfg(), tmp_path, [stop]).fit()
    assert result.stop_reason == "pruned at token 256" and result.tokens == 256


def test_scaled_lr_restores_the_learning_rate():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with scaled_lr(optimizer, 0.5) as lr:
        assert lr == pytest.approx(0.05)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_random_schedule_records_lengths_and_restores_the_learning_rate(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        "bptt=random", "bptt.length=12", "bptt.sigma=3", "bptt.overlap=4", "optim.lr=0.01"
    )
    trainer = build_trainer(cfg, tmp_path, [])
    trainer.fit()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert steps["k1"].nunique() > 3 and (steps["k1"] >= 5).all()
    assert (steps["k2"] == steps["k1"] + 4).all()
    assert steps["lr"].tolist() == pytest.approx((0.01 * steps["k1"] / 12).tolist())
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01


def test_stored_states_stay_bounded_by_k2_not_by_the_stream(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg("bptt.k1=2", "bptt.k2=9"), tmp_path, [])
    sizes = []
    for _ in range(60):
        trainer.update()
        sizes.append(len(trainer._carried))
    assert max(sizes) == (9 - 2) // 2 + 2  # the current state + one per later span start


def test_error_clipping_clamps_the_signal_entering_each_layer(tiny_cfg, tmp_path):
    cfg = tiny_cfg("clip=none", "clip.error_clip=1e-4", "model.layers=2", "bptt.k1=4", "bptt.k2=8")
    trainer = build_trainer(cfg, tmp_path, [])
    arriving: list[float] = []

    def record(grad):  # runs after the error clip's hook, on what it returned
        if grad is not None:
            arriving.append(float(grad.abs().max()))

    trainer.model.output_hooks.append(record)
    trainer.fit()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert (steps["error_clipped"] > 0).all() and (steps["error_max"] > 1e-4).all()
    assert (steps["error_mean"] <= steps["error_max"]).all()
    assert arriving and max(arriving) <= 1e-4


def test_divergence_stops_an_absurd_learning_rate_but_not_a_sane_one(tiny_cfg, tmp_path):
    common = ("data=delayed_recall", "data.length=20000", "clip=none", "trainer.max_tokens=4096",
              "trainer.divergence_warmup_tokens=1024", "trainer.divergence_factor=3")  # fmt: skip
    absurd = build_trainer(tiny_cfg(*common, "optim.lr=30"), tmp_path / "absurd", []).fit()
    assert not absurd.completed
    assert absurd.stop_reason.startswith("diverged at token 1024")
    sane = build_trainer(tiny_cfg(*common, "optim.lr=3e-3"), tmp_path / "sane", []).fit()
    assert sane.completed and sane.tokens >= 4096


def test_same_config_and_seed_give_identical_metrics(tiny_cfg, tmp_path):
    overrides = ("bptt=random", "bptt.length=8", "model.dropout=0.1", "model.layers=2")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        build_trainer(tiny_cfg(*overrides), run_dir, []).fit()
    for table in ("steps", "evals", "grad_flow"):
        first, second = (pd.read_parquet(d / f"{table}.parquet") for d in runs)
        drop = [c for c in first if c == "elapsed_s"]
        pd.testing.assert_frame_equal(first.drop(columns=drop), second.drop(columns=drop))
