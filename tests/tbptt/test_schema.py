"""The tables' schema is stated once (tbptt/metrics.py COLUMNS, sweeps/outputs.py
TRIAL_COLUMNS); what writes, reads and documents them is checked against it."""

from __future__ import annotations

import re

import optuna
import pandas as pd

from sweeps.outputs import TRIAL_COLUMNS, trial_row
from tbptt.metrics import COLUMNS
from tbptt.train import build_trainer
from tests.conftest import ROOT

# Columns a run may add to ``steps`` (tbptt/metrics.py says where and when).
EXTRA = re.compile(r"grad_norm_(embed|rnn\d+|decoder)|error_(clipped|max|mean)")


def test_a_trained_run_writes_the_schemas_columns_in_order(tiny_cfg, tmp_path):
    build_trainer(tiny_cfg("clip.error_clip=1.0", "model.layers=2"), tmp_path, []).fit()
    for table, columns in COLUMNS.items():
        frame = pd.read_parquet(tmp_path / f"{table}.parquet")
        extra = [c for c in frame.columns if c not in columns]
        assert all(EXTRA.fullmatch(c) for c in extra), (table, extra)
        assert [c for c in frame.columns if c in columns] == list(columns), table
        assert {c: str(frame[c].dtype) for c in columns} == columns, table


def test_the_readme_names_every_column_of_each_run_table():
    readme = (ROOT / "README.md").read_text()
    for table, columns in COLUMNS.items():
        [row] = [line for line in readme.splitlines() if line.startswith(f"| `{table}.parquet`")]
        named = set(re.findall(r"`([a-z_0-9]+)`", row))
        assert set(columns) <= named, (table, set(columns) - named)


def test_a_trials_row_has_the_schemas_columns_then_its_parameters():
    study = optuna.create_study()
    study.optimize(lambda trial: trial.suggest_float("optim.lr", 1e-4, 1e-1), n_trials=1)
    row = trial_row(study.trials[0])
    assert list(row) == [*TRIAL_COLUMNS, "param.optim.lr"]
