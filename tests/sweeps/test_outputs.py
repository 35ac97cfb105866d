"""The sweep directory's tables (sweeps/outputs.py): a part per finished trial, read as one
table; trials.parquet kept cheap; an older sweep's single-file tables converted."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pandas as pd
import pytest

from sweeps import outputs
from sweeps.outputs import SweepOutputs
from tbptt.metrics import write_parquet


def finished_trial(study: optuna.Study, job_dir: Path, steps: pd.DataFrame) -> int:
    """A complete trial whose job directory holds ``steps`` as its steps.parquet."""
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    job_dir.mkdir(parents=True)
    write_parquet(steps, job_dir / "steps.parquet")
    trial.set_user_attr("job_dir", str(job_dir))
    study.tell(trial, 1.0)
    return trial.number


def test_each_trial_is_one_part_and_pandas_reads_every_column(tmp_path):
    study = optuna.create_study()
    one_layer = pd.DataFrame({"tokens": [10, 20], "grad_norm_rnn0": [0.1, 0.2]})
    two_layers = pd.DataFrame({"tokens": [10], "grad_norm_rnn0": [0.3], "grad_norm_rnn1": [0.4]})
    sweep = SweepOutputs(tmp_path, None)
    for number, steps in enumerate([one_layer, two_layers]):
        sweep.record(study, finished_trial(study, tmp_path / str(number), steps))
    table = pd.read_parquet(tmp_path / "steps.parquet").sort_values(["trial", "tokens"])
    assert table["trial"].astype(int).tolist() == [0, 0, 1]
    assert table["grad_norm_rnn1"].isna().tolist() == [True, True, False]
    part = tmp_path / "steps.parquet" / "trial=1" / "part-0.parquet"
    assert os.stat(part).st_ino == os.stat(tmp_path / "1" / "steps.parquet").st_ino  # no copy


def test_trials_parquet_is_rewritten_when_due_and_always_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "REWRITE_SHARE", 1e-12)  # a rewrite is "due" once, then never
    study = optuna.create_study()
    sweep = SweepOutputs(tmp_path, None)
    steps = pd.DataFrame({"tokens": [1]})
    for number in range(3):
        sweep.record(study, finished_trial(study, tmp_path / str(number), steps))
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 1  # the first record's
    sweep.write(study)
    assert pd.read_parquet(tmp_path / "trials.parquet")["number"].tolist() == [0, 1, 2]


def test_an_older_sweeps_single_file_becomes_a_dataset_on_resume(tmp_path):
    study = optuna.create_study()
    steps = pd.DataFrame({"tokens": [5, 6]})
    for number in range(2):
        finished_trial(study, tmp_path / str(number), steps)
    old = pd.DataFrame({"trial": [0, 0, 1, 1], "tokens": [5, 6, 5, 6]})
    write_parquet(old, tmp_path / "steps.parquet")  # one file, as sweeps wrote it before
    (tmp_path / "1" / "steps.parquet").unlink()  # trial 1's job directory is elsewhere now
    SweepOutputs(tmp_path, None).load_finished(study)
    assert (tmp_path / "steps.parquet").is_dir()
    table = pd.read_parquet(tmp_path / "steps.parquet").sort_values(["trial", "tokens"])
    assert table["trial"].astype(int).tolist() == [0, 0, 1, 1]
    assert outputs.read_part(tmp_path, "steps", 1).to_pydict() == {"tokens": [5, 6]}


@pytest.mark.parametrize("layout", ["dataset", "single file"])
def test_read_part_finds_a_trials_rows_in_either_layout(tmp_path, layout):
    if layout == "dataset":
        part = tmp_path / "evals.parquet" / "trial=3" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        write_parquet(pd.DataFrame({"tokens": [7]}), part)
    else:
        old = pd.DataFrame({"trial": [2, 3], "tokens": [1, 7]})
        write_parquet(old, tmp_path / "evals.parquet")
    assert outputs.read_part(tmp_path, "evals", 3).to_pydict() == {"tokens": [7]}
    assert outputs.read_part(tmp_path, "evals", 9) is None
