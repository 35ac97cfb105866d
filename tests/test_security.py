"""Security properties that hold across the code base."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal._base import BaseJournalSnapshot  # public in no module

from analysis import report, studies
from sweeps import storage
from sweeps.pool import WorkerPool
from sweeps.storage import open_storage
from sweeps.worker import PRUNER_ATTR, StudyRef, TrialRunner, sized_pruner
from tests.analysis.sweep_dirs import build_mixed_sweep
from tests.conftest import ROOT
from tests.sweeps.test_pool import drain, suicide

PACKAGES = ("tbptt", "sweeps", "analysis", "hydra_plugins")
CALL = re.compile(r"(?<![.\w])(eval|exec)\s*\(")


def test_no_eval_or_exec_of_strings_anywhere_in_the_packages():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if CALL.search(line)
    ]
    assert offenders == []


def test_checkpoints_are_loaded_with_weights_only_everywhere():
    loads = [
        line.strip()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for line in path.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert loads and all("weights_only=True" in line for line in loads)


# -- opening a sweep directory runs no code its files name ---------------------------------

EVIL = """\
from pathlib import Path

from analysis.answers import Answer

Path(__file__).with_name("evil_ran").touch()  # on import


def run(results):
    return Answer(["evil_mod.run ran"])
"""


class Mkdir:
    """Unpickled, it makes a directory: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


@pytest.fixture
def evil_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A received sweep directory whose study.yaml names ``evil_mod.run``, with ``evil_mod.py``
    beside it, in the working directory and on ``sys.path`` (as ``python -m`` puts it)."""
    build_mixed_sweep(tmp_path / "sweep")
    (tmp_path / "evil_mod.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path / "sweep"
    sys.modules.pop("evil_mod", None)


@pytest.fixture
def mixed_sweep(tmp_path: Path) -> Path:
    build_mixed_sweep(tmp_path / "sweep")
    return tmp_path / "sweep"


def record_answer(sweep_dir: Path, answer: str) -> None:
    doc = {"study_name": "tbptt", "storage": "study.journal", "question": "Q?", "answer": answer}
    (sweep_dir / "study.yaml").write_text(yaml.safe_dump(doc))


def verdict(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "answer.json").read_text())["verdict"]


def not_evil(sweep_dir: Path) -> bool:
    return "evil_mod" not in sys.modules and not (sweep_dir.parent / "evil_ran").exists()


@pytest.mark.parametrize("named", ["evil_mod.run", "os.system"])
def test_the_report_imports_no_answer_a_sweep_directory_names(evil_dir, monkeypatch, named):
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    record_answer(evil_dir, named)
    md = report.write_report(evil_dir).read_text()
    assert not_evil(evil_dir)
    assert (
        f"- The study names its verdict function `{named}`, which is not one of the verdicts of "
        "analysis.answers (bptt_length, clipping, k1_k2, k1_k2_recall, lr_range, random_bptt): "
        f"it was not imported. To use it, run `python -m analysis.report {evil_dir} --answer "
        f"{named}`." in md
    )
    assert verdict(evil_dir) == {"function": named, "imported": False}


@pytest.mark.parametrize("given", ["analysis.answers.lr_range", "evil_mod.run"])
def test_the_report_imports_the_answer_its_command_line_names(evil_dir, given):
    record_answer(evil_dir, "evil_mod.run")
    assert report.main([str(evil_dir), "--answer", given]) == 0
    assert verdict(evil_dir) == {"function": given, "imported": True}
    assert not_evil(evil_dir) == (given != "evil_mod.run")  # imported: the user's choice
    assert "was not imported" not in (evil_dir / "report.md").read_text()


@pytest.mark.parametrize(
    "given, message",
    [
        ("nomodule.fn", "error: --answer=nomodule.fn: cannot import nomodule: No module named"),
        (
            "analysis.answers.nothing",
            "error: --answer=analysis.answers.nothing: no function 'nothing' in analysis.answers",
        ),
        (".answers.lr_range", "error: --answer=.answers.lr_range: cannot import .answers: "),
    ],
)
def test_a_command_line_answer_that_cannot_be_imported_is_a_one_line_error(
    mixed_sweep, capsys, given, message
):
    assert report.main([str(mixed_sweep), "--answer", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_recorded_answer_of_analysis_answers_still_runs_unprompted(mixed_sweep):
    record_answer(mixed_sweep, "analysis.answers.lr_range")
    md = report.write_report(mixed_sweep).read_text()
    assert verdict(mixed_sweep) == {"function": "analysis.answers.lr_range", "imported": True}
    assert "## Answer" in md and "was not imported" not in md


def test_studies_answer_with_the_function_their_config_names(evil_dir, monkeypatch):
    """A study's directory already holds a study.yaml naming evil_mod.run; its report is
    answered by conf/sweep/lr_range.yaml's function, and evil_mod is never imported."""
    out = evil_dir.parent / "multirun"
    out.mkdir()
    evil_dir.rename(out / "lr_range")
    record_answer(out / "lr_range", "evil_mod.run")
    ran = subprocess.CompletedProcess([], 0)
    monkeypatch.setattr(studies.subprocess, "run", lambda *a, **k: ran)
    assert studies.main(["--out", str(out), "--only", "lr_range"]) == 0
    assert "evil_mod" not in sys.modules and not (out.parent / "evil_ran").exists()
    assert verdict(out / "lr_range") == {"function": "analysis.answers.lr_range", "imported": True}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "analysis.answers.lr_range"),
        (["hydra.sweeper.answer=mine.verdict"], "mine.verdict"),
        (["++hydra.sweeper.answer=mine.verdict"], "mine.verdict"),
        (["hydra.sweeper.answer=null"], None),
    ],
)
def test_a_studys_verdict_comes_from_its_config_and_overrides(overrides, expected):
    assert studies.verdict_of("lr_range", overrides) == expected


# -- a resumed sweep: its pruner, its workers' pickle, its storage ---------------------------

ASHA = "optuna.pruners.SuccessiveHalvingPruner"
CONFIGURED = {"_target_": ASHA, "min_resource": "auto", "reduction_factor": 3}


@pytest.mark.parametrize(
    "stored, expected",
    [
        ({"_target_": ASHA, "min_resource": 27, "reduction_factor": 3}, {"min_resource": 27}),
        ({"_target_": "os.mkdir", "path": "x"}, {}),  # another target: the config's pruner
        ({"_target_": ASHA, "min_resource": "${oc.env:HOME}"}, {}),  # not a number
        ({"_target_": ASHA, "min_resource": {"_target_": "os.mkdir"}}, {}),  # a node
        ({"_target_": ASHA, "_args_": [1], "bootstrap_count": 9}, {}),  # not the config's keys
        ("not a mapping", {}),
    ],
)
def test_a_stored_pruner_gives_numbers_for_the_configs_own_pruner(stored, expected):
    assert sized_pruner(CONFIGURED, stored) == {**CONFIGURED, **expected}


def test_a_worker_builds_no_pruner_class_the_study_names(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(None, tmp_path))
    study.set_user_attr(PRUNER_ATTR, {"_target_": "os.mkdir", "path": str(tmp_path / "ran")})
    ref = StudyRef(study_name="s", storage=None, sweep_dir=str(tmp_path), patience=1.0,
                   pruner=CONFIGURED)  # fmt: skip
    runner = TrialRunner(hydra_context=None, config=None, task_function=None,
                         singleton_state={}, study_ref=ref, threads=1)  # fmt: skip
    assert isinstance(runner.load_study().pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert not (tmp_path / "ran").exists()


def test_a_runner_pickle_put_in_the_sweep_directory_is_never_unpickled(tmp_path):
    payload, victim = tmp_path / ".runner.pkl", tmp_path / "victim"
    victim.write_bytes(b"keep")
    payload.symlink_to(victim)  # a received directory's: written through, it would clobber
    with WorkerPool(suicide, size=1, payload=payload) as pool:
        assert not payload.is_symlink() and victim.read_bytes() == b"keep"
        assert [e.result for e in drain(pool, ["a"])] == ["a"]
        payload.write_bytes(pickle.dumps(Mkdir(tmp_path / "ran")))  # read by the next worker
        events = drain(pool, ["die", "after"])
    assert not (tmp_path / "ran").exists()
    refused = f"{payload}: changed since this sweep wrote it; not unpickled"
    assert [(e.job, e.reason) for e in events] == [("die", None), ("after", refused)]


class SnapshotBackend(BaseJournalBackend, BaseJournalSnapshot):
    """A Redis journal whose snapshot key holds a pickle that runs code."""

    def __init__(self, marker: Path) -> None:
        self.logs: list[dict[str, Any]] = []
        self.marker = marker

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs += logs

    def load_snapshot(self) -> bytes | None:
        return pickle.dumps(Mkdir(self.marker))

    def save_snapshot(self, snapshot: bytes) -> None:
        pass


def test_a_redis_journals_pickled_snapshot_is_never_loaded(tmp_path, monkeypatch):
    JournalStorage(SnapshotBackend(tmp_path / "optuna"))  # Optuna alone unpickles it
    assert (tmp_path / "optuna").exists()
    monkeypatch.setattr(
        storage, "JournalRedisBackend", lambda _: SnapshotBackend(tmp_path / "ran")
    )
    opened = storage.open_storage("redis://127.0.0.1:6379/0", tmp_path)
    optuna.create_study(study_name="s", storage=opened)
    assert not (tmp_path / "ran").exists()


# -- continuations the storage holds: only budgets, never code or other files -------------


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        ({"extra": ["trainer.max_flops=1000", "trainer.resume=true"]}, None),
        ({"extra": ["trainer.max_seconds=1.5e+02", "trainer.anneal=0.95"]}, None),
        ({"extra": ["optim._target_=os.system"]}, "'optim._target_=os.system', which no sweep"),
        ({"extra": ["trainer.max_flops=${oc.env:HOME}"]}, "which no sweep writes"),
        ({"extra": ["+hydra.job.chdir=true"]}, "which no sweep writes"),
        ({"extra": ["trainer.resume=true", "trainer.max_flops=1;rm"]}, "which no sweep writes"),
        ({"extra": [], "score_file": "../../etc/passwd"}, "score_file '../../etc/passwd'"),
    ],
)  # fmt: skip
def test_a_stored_continuation_runs_only_budget_overrides(attrs, refused):
    from sweeps.policy import TRANSFER, CountPolicy, TrialMaker
    from sweeps.space import SearchSpace
    from tbptt.errors import ConfigError

    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"phase": TRANSFER, "init_from": "/x", **attrs})
    maker = TrialMaker(study, SearchSpace(params=(), fixed=()), lambda o: None, pop_only=True)
    if refused is None:
        assert maker.make(CountPolicy.job_spec) is not None
        return
    with pytest.raises(ConfigError, match=re.escape(refused)):
        maker.make(CountPolicy.job_spec)
    (trial,) = study.trials  # failed, saying why: nothing left RUNNING
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("error: a continuation's stored")


def test_a_received_job_config_is_read_as_data_not_resolved(tmp_path, monkeypatch):
    """An interpolation in a received `.hydra/config.yaml` stays text in the report: no
    environment variable of this machine reaches it."""
    import pandas as pd

    from analysis.answers import run_setting

    monkeypatch.setenv("TBPTT_SECRET", "s3cret")
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "config.yaml").write_text(
        "clip:\n  _target_: ${oc.env:TBPTT_SECRET}\ndata:\n  delay: 8\n"
    )

    class Results:
        trials = pd.DataFrame({"job_dir": [str(tmp_path / "0")]})

    assert run_setting(Results(), "clip._target_") == "${oc.env:TBPTT_SECRET}"  # type: ignore[arg-type]
    assert run_setting(Results(), "data.delay") == 8  # type: ignore[arg-type]
    assert run_setting(Results(), "data.missing") is None  # type: ignore[arg-type]
