"""Damaged storage, table-driven: a study journal damaged in each way a crash, a bad copy or an
edit leaves it, read by the sweep's storage and by analysis.load; and shipped job directories
damaged or oversized in the study (sweeps/shipment.py). What README's "A damaged journal" and
the shipment module promise: a bad last line never took effect and is cut off (a copy kept);
anything else is refused in one line naming the file and the line, and left as it is; damaged
shipments are refused and leave nothing behind."""

from __future__ import annotations

import base64
import gzip
import io
import logging
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial

from analysis.load import load
from sweeps import shipment
from sweeps.shipment import CHUNKS_ATTR, DamagedShipment, ship, unpack
from sweeps.storage import open_storage, pop_waiting
from tbptt.errors import ConfigError
from tests.conftest import ROOT

ROOT_USER = os.geteuid() == 0
UNREADABLE = (
    "unreadable (skipped: running as root, chmod does not stop reads)"
    if ROOT_USER
    else "unreadable"
)


def record_ten_lines(sweep_dir: Path) -> Path:
    """A journal of 10 records (a study, then 3 trials of 3 records each)."""
    study = optuna.create_study(study_name="tbptt", storage=open_storage(None, sweep_dir))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return sweep_dir / "study.journal"


def after(extra: bytes) -> Callable[[bytes], bytes]:
    return lambda data: data + extra


def inside(extra: bytes) -> Callable[[bytes], bytes]:
    """``extra`` after the 3rd record, 7 records after it."""
    return lambda data: b"".join([*data.splitlines(keepends=True)[:3], extra,
                                  *data.splitlines(keepends=True)[3:]])  # fmt: skip


NOT_REPLAYABLE = "is a journal record Optuna cannot replay"
RESTORE = "which may depend on it; restore a copy of the file"
# (name, damage, outcome): "cut" (its last line cut off, a copy kept, 3 trials read, more
# written on), "intact" (3 trials, no copy), "empty" (no study), or the one-line refusal.
JOURNAL_CASES = [
    ("garbage last line", after(b"garbage\n"), "cut"),
    ("last record cut short", lambda data: data[:-25], "cut"),
    ("a partial record appended", after(b'{"op_code": 5, "trial_id"'), "cut"),
    ("JSON of another shape last", after(b"[1, 2]\n"), "cut"),
    ("JSON without an op_code last", after(b'{"trial_id": 1}\n'), "cut"),
    ("zeros where a crash left its tail", after(b"\0" * 512), "cut"),
    ("a blank last line", after(b"\n"), "cut"),
    ("Windows line endings", lambda data: data.replace(b"\n", b"\r\n"), "intact"),
    ("garbage inside", inside(b"garbage\n"), f"line 4 is not a journal record (not JSON) and 7 records follow it, {RESTORE}"),
    ("a blank line inside", inside(b"\n"), f"line 4 is not a journal record (not JSON) and 7 records follow it, {RESTORE}"),
    ("JSON of another shape inside", inside(b"null\n"), f"line 4 is not a journal record (JSON without an op_code) and 7 records follow it, {RESTORE}"),
    ("an op_code without its fields last", after(b'{"op_code": 5}\n'), f"line 11 {NOT_REPLAYABLE} (KeyError: 'trial_id')"),
    ("an unknown op_code inside", inside(b'{"op_code": 99, "worker_id": "w"}\n'), f"line 4 {NOT_REPLAYABLE} (AssertionError: Should not reach.)"),
    ("an op_code of another type inside", inside(b'{"op_code": "5", "worker_id": "w"}\n'), f"line 4 {NOT_REPLAYABLE}"),
    ("an empty file", lambda data: b"", "empty"),
    ("only a first record cut short", lambda data: data[:30], "empty"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "damage", "outcome"), JOURNAL_CASES,
                         ids=[c[0] for c in JOURNAL_CASES])  # fmt: skip
def test_a_damaged_journal_is_cut_back_to_its_records_or_refused_by_line(
    tmp_path, caplog, name, damage, outcome
):
    path = record_ten_lines(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    found = path.read_bytes()
    if outcome not in ("cut", "intact", "empty"):
        for read in (lambda: open_storage(None, tmp_path), lambda: load(tmp_path)):
            with pytest.raises(ConfigError) as refused:
                read()
            assert str(refused.value).startswith(f"{path}: ") and outcome in str(refused.value)
            assert "\n" not in str(refused.value)
        assert path.read_bytes() == found  # left as it is: restore a copy
        assert not list(tmp_path.glob("study.journal.damaged-*"))
        return
    with caplog.at_level(logging.WARNING, logger="sweeps.journal"):
        if outcome == "empty":
            with pytest.raises(ConfigError, match="study.journal holds no study"):
                load(tmp_path)
        else:
            assert list(load(tmp_path).trials["number"]) == [0, 1, 2]
    kept = list(tmp_path.glob("study.journal.damaged-*"))
    if outcome == "intact":
        assert not kept and path.read_bytes() == found
    elif found:  # cut off: the file as found is kept, once, and a warning says so
        assert [k.read_bytes() for k in kept] == [found]
        assert f"cut it off (the file as found is kept in {kept[0].name})" in caplog.text
    study = optuna.create_study(study_name="tbptt", storage=open_storage(None, tmp_path),
                                load_if_exists=True)  # fmt: skip
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # writing on works
    fresh = optuna.load_study(study_name="tbptt", storage=open_storage(None, tmp_path))
    assert len(fresh.trials) == (1 if outcome == "empty" else 4)


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("a directory in its place", lambda p: p.mkdir(), "is a directory, not a study journal"),
        pytest.param(
            UNREADABLE, lambda p: (p.write_text(""), p.chmod(0)), "cannot read it: Permission denied",
            marks=pytest.mark.skipif(ROOT_USER, reason="running as root: chmod does not stop reads"),
        ),
    ],
    ids=["a directory in its place", UNREADABLE],
)  # fmt: skip
def test_a_journal_that_is_no_file_is_refused_by_name(tmp_path, name, make, says):
    path = tmp_path / "study.journal"
    make(path)
    for read in (lambda: open_storage(None, tmp_path), lambda: load(tmp_path)):
        with pytest.raises(ConfigError, match=f"^{path}: {says}"):
            read()


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("garbage", lambda p: p.write_bytes(b"not a database " * 100), "(sqlite3.DatabaseError) file is not a database"),
        ("a directory", lambda p: p.mkdir(), "(sqlite3.OperationalError) unable to open database file"),
    ],
    ids=["garbage", "a directory"],
)  # fmt: skip
def test_a_damaged_sqlite_storage_is_refused_naming_it(tmp_path, name, make, says):
    path = tmp_path / "study.db"
    make(path)
    with pytest.raises(ConfigError) as refused:
        open_storage(f"sqlite:///{path}", tmp_path)
    assert str(refused.value) == f"hydra.sweeper.storage: cannot open sqlite:///{path}: {says}"


# -- shipped job directories -----------------------------------------------------------------


def shipped_trial(attrs: dict[str, object]) -> FrozenTrial:
    """A finished trial whose system attrs are ``attrs`` (what an agent left in the storage)."""
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = pop_waiting(study)
    assert trial is not None
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    study.tell(trial, 1.0)
    return study.trials[0]


def chunks(data: bytes, count: object = None) -> dict[str, object]:
    text = base64.b64encode(data).decode("ascii")
    return {f"{CHUNKS_ATTR}:0": text, CHUNKS_ATTR: 1 if count is None else count}


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


GOOD = tar_of((member("result.json"), b'{"tokens": 5}'))
SHIPMENT_CASES = [
    ("not base64", {f"{CHUNKS_ATTR}:0": "not base64 at all!", CHUNKS_ATTR: 1}),
    ("a chunk missing", {**chunks(GOOD), CHUNKS_ATTR: 2}),
    ("no chunk count", chunks(GOOD, count="none")),
    ("a chunk count of None", {**chunks(GOOD), CHUNKS_ATTR: None}),
    ("zero chunks", chunks(GOOD, count=0)),
    ("plain text, not gzip", chunks(b"just some text")),
    ("gzip cut in half", chunks(GOOD[: len(GOOD) // 2])),
    ("gzip of no tar", chunks(gzip.compress(b"not a tar archive" * 40))),
    ("a path out of the job", chunks(tar_of((member("../escaped.txt"), b"out")))),
    ("a link out of the job", chunks(tar_of((member("passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")))),
    ("a device", chunks(tar_of((member("dev", tarfile.CHRTYPE), b"")))),
    ("a file over the pack's limit", chunks(tar_of((member("big.bin"), b"\0" * 4096)))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "attrs"), SHIPMENT_CASES, ids=[c[0] for c in SHIPMENT_CASES])
def test_damaged_shipped_files_are_refused_and_leave_nothing_behind(
    tmp_path, monkeypatch, name, attrs
):
    monkeypatch.setattr(shipment, "MAX_FILE_BYTES", 1024)
    home = tmp_path / "sweep"
    home.mkdir()
    with pytest.raises(DamagedShipment, match=r"^trial 0: its shipped files are damaged: "):
        unpack(shipped_trial(attrs), home / "0")
    assert list(home.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_an_absolute_path_in_a_shipment_lands_inside_its_job_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    trial = shipped_trial(chunks(tar_of((member(str(outside)), b"out"))))
    assert unpack(trial, tmp_path / "sweep" / "0")  # tarfile's data filter strips the "/"
    assert not outside.exists()
    assert (tmp_path / "sweep" / "0" / str(outside).lstrip("/")).read_text() == "out"


def test_a_shipment_unpacks_once_and_never_over_a_job_directory(tmp_path):
    trial = shipped_trial(chunks(GOOD))
    assert unpack(trial, tmp_path / "0") and (tmp_path / "0" / "result.json").exists()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "mine.txt").write_text("kept")
    assert not unpack(trial, tmp_path / "1")  # a directory already there is left as it is
    assert [p.name for p in (tmp_path / "1").iterdir()] == ["mine.txt"]


def test_an_oversized_file_stays_on_the_agents_host_and_the_rest_ships(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(shipment, "MAX_FILE_BYTES", 1024)
    job = tmp_path / "agent" / "0"
    job.mkdir(parents=True)
    (job / "result.json").write_text('{"tokens": 5}')
    (job / "checkpoint.pt").write_bytes(b"\1" * 4096)
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = pop_waiting(study)
    assert trial is not None
    with caplog.at_level(logging.WARNING, logger="sweeps.shipment"):
        ship(study._storage, trial._trial_id, job)
    study.tell(trial, 1.0)
    assert "left on this host (over 0 MB): ['checkpoint.pt']" in caplog.text
    assert unpack(study.trials[0], tmp_path / "home" / "0")
    assert [p.name for p in (tmp_path / "home" / "0").iterdir()] == ["result.json"]


# -- the sweep itself on a damaged journal ----------------------------------------------------

TOY = Path(__file__).parent / "toy_app.py"
SWEEP_CASES = [
    ("a cut last line, resumed to its total", after(b'{"op_code": 4, "study_id"'), None),
    ("a bad line inside", inside(b"garbage\n"), f"line 4 is not a journal record (not JSON) and 7 records follow it, {RESTORE}"),
    ("a record Optuna cannot replay", after(b'{"op_code": 5}\n'), f"line 11 {NOT_REPLAYABLE} (KeyError: 'trial_id')"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "damage", "says"), SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_a_sweep_on_a_damaged_journal_resumes_or_stops_in_one_line(tmp_path, name, damage, says):
    path = record_ten_lines(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    found = path.read_bytes()
    cmd = [sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}",
           "x=interval(0,1)", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if says is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name="tbptt", storage=open_storage(None, tmp_path))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # 3 recorded, 1 more
        assert [k.read_bytes() for k in tmp_path.glob("study.journal.damaged-*")] == [found]
        return
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"error: {path}: ") and says in last, last
    assert path.read_bytes() == found and not list(tmp_path.glob("[0-9]*"))  # nothing ran
