"""``analysis.load``: Optuna sweep directories and Hydra multiruns as four tidy tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from analysis.load import METRIC_COLUMNS, STATES, TRIAL_COLUMNS, SweepResults, load
from sweeps.outputs import trials_frame
from tbptt.errors import ConfigError
from tbptt.metrics import write_parquet
from tests.analysis.sweep_dirs import (
    build_large_sweep,
    build_mixed_sweep,
    create_study,
    job_files,
    start,
    write_job,
)
from tests.conftest import ROOT, TINY

# The one schema (tbptt/metrics.py, sweeps/outputs.py), as analysis.load gives it.
TRIAL_DTYPES = {k: "category" if k == "state" else v for k, v in TRIAL_COLUMNS.items()}
METRIC_DTYPES = METRIC_COLUMNS
MIXED_PARAM_DTYPES = {
    "param.optim.lr": "float64", "param.clip": "string", "param.clip.max_norm": "float64",
    "param.bptt.length": "Int64",
}  # fmt: skip


@pytest.fixture
def mixed_sweep(tmp_path: Path) -> Path:
    build_mixed_sweep(tmp_path / "sweep")
    return tmp_path / "sweep"


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real basic-sweeper multirun of the training app: 2 lrs x 2 clip modes, tiny sizes."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "mr"
    cmd = [sys.executable, "-m", "tbptt.train", "-m", *TINY, "trainer.checkpoint=false",
           "optim.lr=1e-3,3e-3", "clip=none,norm", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def dtypes(frame: pd.DataFrame, columns: dict[str, str]) -> dict[str, str]:
    return {c: str(frame[c].dtype) for c in columns}


def assert_schema(results: SweepResults) -> None:
    assert dtypes(results.trials, TRIAL_DTYPES) == TRIAL_DTYPES
    assert list(results.trials["state"].cat.categories) == STATES
    params = [f"param.{p}" for p in results.params()]
    assert list(results.trials.columns) == [*list(TRIAL_DTYPES)[:5], *params,
                                            *list(TRIAL_DTYPES)[5:]]  # fmt: skip
    for table, columns in METRIC_DTYPES.items():
        frame = getattr(results, table)
        assert list(frame.columns)[: len(columns)] == list(columns)
        assert dtypes(frame, columns) == columns


# -- Optuna sweeps --------------------------------------------------------------------------


def test_an_optuna_sweep_has_one_row_per_trial_in_every_state(mixed_sweep):
    results = load(mixed_sweep)
    trials = results.trials
    assert results.kind == "optuna" and results.path == mixed_sweep
    assert list(trials["number"]) == [0, 1, 2, 3, 4, 5]
    assert list(trials["state"]) == ["complete", "pruned", "pruned", "fail", "running", "waiting"]
    assert trials["value"].tolist()[0] == 1.25 and trials["value"][1:].isna().all()
    assert trials["stop_reason"].tolist() == [
        pd.NA, "pruned at token 128",
        "diverged at token 64: training loss 9.000 > 3.0 x best 2.000",
        "ValueError: boom", pd.NA, pd.NA,
    ]  # fmt: skip
    assert trials["stopped_at"].tolist() == [pd.NA, 128, 64, pd.NA, pd.NA, pd.NA]
    # result.json's tokens where the run ended; the last step's where it crashed or still runs
    assert trials["tokens"].tolist() == [192, 128, 64, 32, 96, pd.NA]
    assert trials["retry_of"].tolist() == [pd.NA] * 5 + [3]


def test_a_running_trial_is_found_by_number_and_its_partial_tables_load(mixed_sweep):
    results = load(mixed_sweep)
    running = results.trials.set_index("number").loc[4]
    assert running["job_dir"] == str(mixed_sweep / "4")
    assert running["overrides"].endswith("clip=norm clip.max_norm=0.5 bptt.length=12")
    assert pd.isna(running["datetime_complete"]) and pd.notna(running["datetime_start"])
    assert results.steps.groupby("trial").size().to_dict() == {0: 6, 1: 4, 2: 2, 3: 1, 4: 3}
    assert results.evals.groupby("trial").size().to_dict() == {0: 3, 1: 2, 2: 1, 4: 1}
    assert results.grad_flow.groupby("trial")["lag"].max().to_dict() == {0: 4, 1: 4, 2: 4, 4: 4}


def test_swept_keys_are_typed_columns_missing_where_not_sampled(mixed_sweep):
    results = load(mixed_sweep)
    trials = results.trials
    assert results.params() == ["optim.lr", "clip", "clip.max_norm", "bptt.length"]
    assert dtypes(trials, MIXED_PARAM_DTYPES) == MIXED_PARAM_DTYPES
    assert trials["param.clip"].tolist() == ["norm", "none", "norm", "none", "norm", pd.NA]
    assert trials["param.clip.max_norm"].isna().tolist() == [False, True, False, True, False, True]
    assert trials["param.bptt.length"].tolist() == [8, 4, 16, 8, 12, pd.NA]


def test_every_table_has_its_documented_columns_and_dtypes(mixed_sweep):
    results = load(mixed_sweep)
    assert_schema(results)
    error_max = results.steps.groupby("trial")["error_max"].count()
    assert error_max.to_dict() == {0: 6, 1: 0, 2: 0, 3: 0, 4: 0}  # NaN where a run lacks it
    assert isinstance(results.study, optuna.Study) and len(results.study.trials) == 6


def test_trials_parquet_stands_in_for_a_study_in_remote_storage(mixed_sweep):
    from_journal = load(mixed_sweep)
    write_parquet(trials_frame(from_journal.study), mixed_sweep / "trials.parquet")
    (mixed_sweep / "study.journal").unlink()
    results = load(mixed_sweep)
    assert results.kind == "optuna" and results.study is None
    assert_schema(results)
    # An int key that some trial lacks went through pandas as float64 in trials.parquet.
    same = results.trials.drop(columns="param.bptt.length")
    pd.testing.assert_frame_equal(same, from_journal.trials.drop(columns="param.bptt.length"))
    pd.testing.assert_frame_equal(results.steps, from_journal.steps)


def test_job_dirs_of_the_sweep_level_tables_stand_in_for_missing_job_dirs(mixed_sweep):
    everything = load(mixed_sweep)
    write_parquet(trials_frame(everything.study), mixed_sweep / "trials.parquet")
    write_parquet(everything.steps, mixed_sweep / "steps.parquet")
    (mixed_sweep / "study.journal").unlink()
    shutil.rmtree(mixed_sweep / "1")  # on another machine of a shared study
    results = load(mixed_sweep)
    pd.testing.assert_frame_equal(results.steps, everything.steps)
    assert results.evals.groupby("trial").size().to_dict() == {0: 3, 2: 1, 4: 1}


def test_a_moved_sweep_directory_still_finds_its_job_dirs(mixed_sweep, tmp_path):
    moved = shutil.move(mixed_sweep, tmp_path / "elsewhere")
    results = load(moved)
    assert results.trials["job_dir"][0] == str(tmp_path / "elsewhere" / "0")
    assert results.steps.groupby("trial").size().to_dict() == {0: 6, 1: 4, 2: 2, 3: 1, 4: 3}


@pytest.mark.parametrize("with_trial", [False, True])
def test_a_sweep_without_metrics_has_empty_tables_with_their_columns(tmp_path, with_trial):
    study = create_study(tmp_path)
    if with_trial:
        start(study, {"optim.lr": 1e-3, "clip": "none"})  # asked, its job not started yet
    results = load(tmp_path)
    assert len(results.trials) == int(with_trial)
    assert_schema(results)
    assert results.steps.empty and results.evals.empty and results.grad_flow.empty


def test_a_journal_with_several_studies_needs_a_study_name(mixed_sweep):
    create_study(mixed_sweep, name="other")
    with pytest.raises(ConfigError, match=r"holds 2 studies .*study_name="):
        load(mixed_sweep)
    assert len(load(mixed_sweep, study_name="tbptt").trials) == 6
    assert load(mixed_sweep, study_name="other").trials.empty


def test_five_hundred_trials_load_whole(tmp_path):
    build_large_sweep(tmp_path, 500)
    results = load(tmp_path)
    assert len(results.trials) == 500 and (results.trials["state"] == "complete").all()
    assert len(results.steps) == 500 * 8 and results.steps["trial"].nunique() == 500
    assert len(results.evals) == 500 * 4 and len(results.grad_flow) == 500 * 4 * 5
    assert results.trials["param.bptt.length"].dtype == "Int64"


# -- Hydra multiruns ------------------------------------------------------------------------


def test_a_basic_sweeper_multirun_loads_its_jobs_and_typed_params(multirun):
    results = load(multirun)
    trials = results.trials
    assert results.kind == "multirun" and results.study is None
    assert results.params() == ["optim.lr", "clip"]
    assert trials["param.optim.lr"].tolist() == [1e-3, 1e-3, 3e-3, 3e-3]
    assert trials["param.clip"].tolist() == ["none", "norm", "none", "norm"]
    assert (trials["state"] == "complete").all() and (trials["tokens"] == 1024).all()
    best = [json.loads((multirun / str(n) / "result.json").read_text()) for n in range(4)]
    assert trials["value"].tolist() == [r["best_val_loss"] for r in best]
    assert trials["overrides"][3].endswith("optim.lr=0.003 clip=norm")
    assert results.steps.groupby("trial").size().to_dict() == {n: 32 for n in range(4)}
    assert_schema(results)


def test_multirun_jobs_that_stopped_crashed_or_still_run(multirun, tmp_path):
    copy = Path(shutil.copytree(multirun, tmp_path / "mr"))
    result = json.loads((copy / "1" / "result.json").read_text())
    result.update(completed=False, stop_reason="diverged at token 512: validation loss 9.0")
    (copy / "1" / "result.json").write_text(json.dumps(result))
    (copy / "2" / "result.json").unlink()  # wrote its tables just now: running
    (copy / "3" / "result.json").unlink()
    old = time.time() - 3600
    for path in [*(copy / "3").rglob("*"), copy / "3"]:
        os.utime(path, (old, old))  # silent for an hour: it died
    trials = load(copy).trials
    assert trials["state"].tolist() == ["complete", "pruned", "running", "fail"]
    assert trials["stopped_at"].tolist() == [pd.NA, 512, pd.NA, pd.NA]
    assert trials["value"].notna().tolist() == [True, False, False, False]
    assert trials["tokens"].tolist() == [1024, 1024, 1024, 1024]  # the last step's, if no result


def test_multirun_value_follows_trainer_objective(multirun, tmp_path):
    copy = Path(shutil.copytree(multirun, tmp_path / "mr"))
    config = (copy / "0" / ".hydra" / "config.yaml").read_text()
    assert "objective: best" in config
    (copy / "0" / ".hydra" / "config.yaml").write_text(
        config.replace("objective: best", "objective: final")
    )
    result = json.loads((copy / "0" / "result.json").read_text())
    result["final_val_loss"] = 7.5
    (copy / "0" / "result.json").write_text(json.dumps(result))
    assert load(copy).trials["value"][0] == 7.5


# -- what is not a sweep --------------------------------------------------------------------


@pytest.mark.parametrize("make", ["missing", "empty dir", "single run", "a file"])
def test_a_path_that_is_no_sweep_is_a_config_error_naming_it(tmp_path, make):
    path = tmp_path / "results"
    if make == "empty dir":
        path.mkdir()
    elif make == "single run":
        write_job(path, job_files(2), {"completed": True})
        (path / ".hydra" / "overrides.yaml").write_text("- optim.lr=0.001\n")
    elif make == "a file":
        path.write_text("not a sweep")
    with pytest.raises(ConfigError, match="is neither a sweep directory") as err:
        load(path)
    assert str(path) in str(err.value)
