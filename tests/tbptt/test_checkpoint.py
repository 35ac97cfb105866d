from __future__ import annotations

import pandas as pd
import pytest
import torch

from tbptt.checkpoint import load
from tbptt.errors import ConfigError
from tbptt.train import build_trainer

# Dropout and an odd eval cadence make the equivalence sensitive to RNG state and data position.
RUN = ("model=lstm", "model.layers=2", "model.dropout=0.2", "trainer.eval_every_tokens=192")


class Crash(Exception):
    pass


def crash_after(evals: int):
    seen = []

    def callback(point) -> None:
        seen.append(point.tokens)
        if len(seen) == evals:
            raise Crash(f"simulated crash at token {point.tokens}")

    return callback


def tables(directory):
    drop = ["elapsed_s"]
    return [
        pd.read_parquet(directory / f"{t}.parquet").drop(columns=drop) for t in ("steps", "evals")
    ]


def test_resumed_run_equals_an_uninterrupted_run(tiny_cfg, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    build_trainer(tiny_cfg(*RUN), whole, []).fit()
    with pytest.raises(Crash):
        build_trainer(tiny_cfg(*RUN), broken, [crash_after(2)]).fit()
    assert len(pd.read_parquet(broken / "evals.parquet")) == 2
    build_trainer(tiny_cfg(*RUN, "trainer.resume=true"), broken, []).fit()
    for expected, resumed in zip(tables(whole), tables(broken), strict=True):
        pd.testing.assert_frame_equal(expected, resumed)


def test_resume_drops_rows_written_after_the_checkpoint(tiny_cfg, tmp_path):
    trainer = build_trainer(tiny_cfg(*RUN), tmp_path, [crash_after(1)])
    with pytest.raises(Crash):
        trainer.fit()
    for _ in range(3):  # updates after the checkpoint, then a crash before the next one
        trainer.update()
    trainer.log.flush()
    resumed = build_trainer(tiny_cfg(*RUN, "trainer.resume=true"), tmp_path, [])
    resumed.log.flush()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert steps["tokens"].max() == resumed.state.tokens == 192


def test_truncated_checkpoint_is_refused_with_its_path(tiny_cfg, tmp_path):
    build_trainer(tiny_cfg(), tmp_path, []).fit()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match="trainer.resume: not a readable checkpoint"):
        build_trainer(tiny_cfg("trainer.resume=true"), tmp_path, [])


def test_checkpoint_from_another_model_shape_is_refused(tiny_cfg, tmp_path):
    build_trainer(tiny_cfg(), tmp_path, []).fit()
    with pytest.raises(ConfigError, match=r"was written with model.hidden_size=16 \(this run: 24"):
        build_trainer(tiny_cfg("model.hidden_size=24", "trainer.resume=true"), tmp_path, [])


class Payload:
    def __reduce__(self):
        return (print, ("this ran during unpickling",))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(ConfigError, match="refused to load"):
        load(path)
    assert "this ran" not in capsys.readouterr().out


def test_missing_checkpoint_for_resume(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="trainer.resume: checkpoint not found"):
        build_trainer(tiny_cfg("trainer.resume=true"), tmp_path, [])
