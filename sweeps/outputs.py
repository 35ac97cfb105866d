"""Sweep outputs, kept consistent while the sweep runs: a crash leaves readable tables, and
recording a trial costs the same in a sweep of 10 trials as in one of 10,000.

- ``steps.parquet/``, ``evals.parquet/``, ``grad_flow.parquet/``: Parquet datasets, one part
  per finished trial (``trial=42/part-0.parquet``, a hard link to the job's own file, so
  recording it copies nothing), which pandas and pyarrow read as one table with a ``trial``
  column (``pd.read_parquet("SWEEP_DIR/steps.parquet")``; pandas gives ``trial`` as a
  category). A zero-row ``schema.parquet``, which sorts first, holds every column any trial
  has (a 2-layer model has more gradient norms than a 1-layer one): readers take a dataset's
  columns from its first file.
- ``trials.parquet``: one row per trial. Rows of finished trials are built once (a finished
  trial never changes); the file is rewritten when a trial finishes, but no more often than
  keeps its cost under ``REWRITE_SHARE`` of the sweep's time (it lags a few seconds behind a
  sweep of thousands of trials), and always at the end.
- ``best.yaml``: the best value, its parameters and a command that reproduces it as a single
  run (a multi-objective study: each trial of its Pareto front so); rewritten when it changes.
- ``optimization_results.yaml``: what hydra-optuna-sweeper writes (``name``, ``best_params``,
  ``best_value``; a multi-objective study: ``solutions``, each ``params`` and ``values``), so
  scripts written against that plugin read it unchanged; beside it, ``best_trials`` numbers
  the Pareto front's trials.

Every file is replaced atomically; the study (its storage) is what they are derived from, so a
sweep that is re-run rewrites whatever a crash left behind.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeps.ledger import Ledger
from sweeps.storage import mask_url
from tbptt.errors import ConfigError
from tbptt.metrics import TABLES, atomic_path, atomic_write_bytes, write_parquet

METRIC_TABLES = TABLES  # each finished trial's tables, collected into the sweep directory
SCHEMA_FILE = "schema.parquet"  # in a table's dataset directory: every column, zero rows
REWRITE_SHARE = 0.02  # trials.parquet: its rewrites take at most this share of the time
STATES = ["complete", "pruned", "fail", "running", "waiting"]  # a trial's state, lower case
# trials.parquet's columns, in order, with the dtypes analysis.load gives them; the swept keys'
# param.<key> columns come after them.
TRIAL_COLUMNS: dict[str, Any] = {
    "number": "int64",
    "state": pd.CategoricalDtype(STATES),
    "value": "float64",
    "phase": "string",
    "parent": "Int64",
    "tokens": "Int64",
    "flops": "Int64",
    "wall_seconds": "float64",
    "full_val_loss": "float64",
    "test_loss": "float64",
    "stop_reason": "string",
    "retry_of": "Int64",
    "worker": "string",
    "datetime_start": "datetime64[ns]",
    "datetime_complete": "datetime64[ns]",
    "job_dir": "string",
    "overrides": "string",
}


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's row of trials.parquet (``TRIAL_COLUMNS``, then its parameters)."""
    attrs = trial.user_attrs
    start, end = trial.datetime_start, trial.datetime_complete
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": None,
        "phase": attrs.get("phase", "search"),
        "parent": attrs.get("parent"),
        "tokens": attrs.get("tokens"),
        "flops": attrs.get("flops"),
        "wall_seconds": attrs.get("wall_seconds"),
        "full_val_loss": attrs.get("full_val_loss"),
        "test_loss": attrs.get("test_loss"),
        "stop_reason": attrs.get("stop_reason") or attrs.get("fail_reason"),
        "retry_of": attrs.get("retry_of"),
        "worker": attrs.get("worker"),
        "datetime_start": start,
        "datetime_complete": end,
        "job_dir": attrs.get("job_dir"),
        "overrides": command_line(replay(trial)),
    }
    values = trial.values if trial.state == TrialState.COMPLETE else None
    if values is not None and len(values) == 1:
        row["value"] = values[0]
    elif values is not None:  # several objectives: value stays empty, one column for each
        row.update({f"value_{i}": value for i, value in enumerate(values)})
    row.update({f"param.{key}": value for key, value in trial.params.items()})
    return row


RESULTS_FILE = "optimization_results.yaml"  # hydra-optuna-sweeper's


def value_columns(frame: pd.DataFrame) -> list[str]:
    """A multi-objective trials.parquet's value columns, in objective order (empty: one)."""
    names = [c for c in frame.columns if c.startswith("value_") and c[6:].isdigit()]
    return sorted(names, key=lambda c: int(c[6:]))


def replay(trial: FrozenTrial | optuna.Trial) -> list[str]:
    """The overrides that reproduce ``trial`` as one uninterrupted run (a continuation's own
    overrides resume a checkpoint; its replay trains from scratch to the same end)."""
    return list(trial.user_attrs.get("replay", trial.user_attrs.get("overrides", [])))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    return pd.DataFrame([trial_row(t) for t in study.get_trials(deepcopy=False)])


def command_line(overrides: list[str]) -> str:
    return " ".join(shlex.quote(o) for o in overrides)


def app_command() -> str:
    """How this process's app was started: ``python -m tbptt.train`` or ``python app.py``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name}"
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or not script.name:
        return "python -m tbptt.train"
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return f"python {shlex.quote(str(script))}"


STUDY_FILE = "study.yaml"  # which study a sweep directory's job directories belong to


def claim_sweep_dir(
    sweep_dir: Path, study_name: str, storage: str | None, about: dict[str, Any] | None = None
) -> None:
    """Refuse a sweep directory whose job directories (``0/``, ``1/``, ...) belong to another
    study: its trials are numbered from 0 too, and would overwrite them. ``study.yaml`` names
    the owner and, in ``about``, what the report needs to know of the study (its question and
    the function that answers it); it is rewritten on every run, so an edited question shows."""
    mine = {"study_name": study_name, "storage": _storage_id(storage)}
    owner = _owner(sweep_dir)
    if owner is not None and owner != mine:
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} holds the study {owner['study_name']!r} "
            f"({owner['storage']}); this sweep's is {study_name!r} "
            f"({mine['storage']}): its trials would overwrite that one's job directories; "
            "give this study another hydra.sweep.dir"
        )
    doc = {**mine, **(about or {})}
    atomic_write_bytes(sweep_dir / STUDY_FILE, yaml.safe_dump(doc, sort_keys=False).encode())


def read_best(sweep_dir: Path) -> dict[str, Any] | None:
    """What ``best.yaml`` says (None: no such file, or not readable YAML of a mapping)."""
    return _read_yaml(sweep_dir / "best.yaml")


def read_study_file(sweep_dir: Path) -> dict[str, Any]:
    """What ``study.yaml`` says (empty for a directory without one, or an unreadable one)."""
    return _read_yaml(sweep_dir / STUDY_FILE) or {}


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _owner(sweep_dir: Path) -> dict[str, str] | None:
    """Who ``study.yaml`` names (or, from an older sweep, ``best.yaml``); None: nobody yet."""
    for name in (STUDY_FILE, "best.yaml"):
        path = sweep_dir / name
        if path.is_file():
            try:
                doc = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                raise ConfigError(f"{path}: not readable YAML; move it away") from None
            if isinstance(doc, dict) and "study_name" in doc:
                storage = doc.get("storage")
                return {"study_name": str(doc["study_name"]), "storage": _storage_id(storage)}
    return None


def _storage_id(storage: str | None) -> str:
    """The storage as ``study.yaml`` names it: the directory's own journal by its file name
    (the directory may move), any other by its URL, passwords masked."""
    if storage is None or ("://" not in storage and Path(storage).name == "study.journal"):
        return "study.journal"
    return mask_url(storage)


class SweepOutputs:
    """Writes the sweep directory's tables (see the module docstring); ``record`` is called as
    each trial finishes, ``write`` when the sweep ends or stops.

    Args:
        sweep_dir: the sweep directory.
        storage: the storage URL shown in ``best.yaml`` (passwords masked).

    Example:
        >>> study = optuna.create_study()
        >>> study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        >>> outputs = SweepOutputs(tmp_path, None)
        >>> outputs.record(study, 0); outputs.record(study, 1)
        >>> sorted(p.name for p in tmp_path.iterdir())
        ['best.yaml', 'optimization_results.yaml', 'trials.parquet']
    """

    def __init__(self, sweep_dir: Path, storage: str | None) -> None:
        self._dir = sweep_dir
        self._storage = mask_url(storage) if storage else str(sweep_dir / "study.journal")
        self._rows: dict[int, dict[str, Any]] = {}  # finished trials' rows of trials.parquet
        self._schemas: dict[str, pa.Schema] = {}  # each metric dataset's columns so far
        self._next_rewrite = 0.0  # time.monotonic() before which trials.parquet is not due
        self._best: dict[str, Any] | None = None

    def load_finished(self, study: optuna.Study) -> None:
        """On resume: the parts of trials that finished before (a crash may have left some
        unrecorded), and datasets of an older layout (one file per table) converted."""
        for table in METRIC_TABLES:
            self._convert_single_file(table, study)
        recorded = {t: self._parts(t) for t in METRIC_TABLES}
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished():
                self._record_parts(trial, recorded)

    def record(self, study: optuna.Study, number: int, ledger: Ledger | None = None) -> None:
        """Trial ``number`` has finished: its parts, and the tables when due (``ledger``: the
        sweep's, refreshed since; None: the study is read now)."""
        ledger = ledger or _read(study)
        self._record_parts(ledger.trials[number])
        self._write_trials(ledger.trials, force=False)
        self._write_best(ledger)

    def write(self, study: optuna.Study) -> None:
        """Every table as the study stands now (the sweep ends, or stops)."""
        ledger = _read(study)
        self._write_trials(ledger.trials, force=True)
        self._write_best(ledger)

    # -- the metric datasets ------------------------------------------------------------------

    def _dataset(self, table: str) -> Path:
        return self._dir / f"{table}.parquet"

    def _parts(self, table: str) -> set[int]:
        """Trials with a part in ``table``'s dataset."""
        names = os.listdir(self._dataset(table)) if self._dataset(table).is_dir() else []
        return {int(n.removeprefix("trial=")) for n in names if n.startswith("trial=")}

    def _record_parts(self, trial: FrozenTrial, skip: dict[str, set[int]] | None = None) -> None:
        job_dir = trial.user_attrs.get("job_dir")
        if not job_dir:
            return
        for table in METRIC_TABLES:
            source = Path(job_dir) / f"{table}.parquet"
            if (skip and trial.number in skip[table]) or not source.is_file():
                continue
            self._extend_schema(table, pq.read_schema(source))
            part = self._dataset(table) / f"trial={trial.number}" / "part-0.parquet"
            part.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, part)

    def _extend_schema(self, table: str, schema: pa.Schema) -> None:
        """Add the columns of ``schema`` that the dataset's schema file lacks, before a part
        that has them: a reader never meets a part with columns its dataset does not list."""
        known = self._schemas.get(table)
        if known is None:
            path = self._dataset(table) / SCHEMA_FILE
            known = pq.read_schema(path) if path.is_file() else pa.schema([])
        schema = schema.remove_metadata()
        if set(schema.names) <= set(known.names):
            self._schemas[table] = known
            return
        merged = pa.unify_schemas([known, schema], promote_options="permissive")
        self._dataset(table).mkdir(parents=True, exist_ok=True)
        with atomic_path(self._dataset(table) / SCHEMA_FILE) as tmp:
            pq.write_table(merged.empty_table(), tmp)
        self._schemas[table] = merged

    def _convert_single_file(self, table: str, study: optuna.Study) -> None:
        """An older sweep wrote each table as one file with a ``trial`` column: its rows of
        trials whose job directory is gone become parts (the others are linked anew)."""
        path = self._dataset(table)
        if not path.is_file():
            return
        frame = pd.read_parquet(path)
        path.unlink()
        trials = study.get_trials(deepcopy=False)
        job_dirs = {t.number: t.user_attrs.get("job_dir") for t in trials}
        for number, rows in frame.groupby("trial", sort=True):
            job_dir = job_dirs.get(int(number))
            if job_dir and (Path(job_dir) / f"{table}.parquet").is_file():
                continue
            part = rows.drop(columns="trial").reset_index(drop=True)
            self._extend_schema(table, pa.Schema.from_pandas(part, preserve_index=False))
            target = path / f"trial={int(number)}" / "part-0.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(part, target)

    # -- trials.parquet and best.yaml ---------------------------------------------------------

    def _write_trials(self, trials: list[FrozenTrial], force: bool) -> None:
        if not force and time.monotonic() < self._next_rewrite:
            return
        started = time.monotonic()
        write_parquet(pd.DataFrame(self._trial_rows(trials)), self._dir / "trials.parquet")
        took = time.monotonic() - started
        self._next_rewrite = started + took / REWRITE_SHARE

    def _trial_rows(self, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
        rows = []
        for trial in trials:
            row = self._rows.get(trial.number) or trial_row(trial)
            if trial.state.is_finished():  # a finished trial never changes: build it once
                self._rows[trial.number] = row
            rows.append(row)
        return rows

    def _write_best(self, ledger: Ledger) -> None:
        doc = self._front_doc(ledger) if ledger.multi_objective else self._best_doc(ledger)
        if doc is not None and doc != self._best:
            text = yaml.safe_dump(doc, sort_keys=False).encode()
            atomic_write_bytes(self._dir / "best.yaml", text)
            atomic_write_bytes(self._dir / RESULTS_FILE, _results_text(doc))
            self._best = doc

    def _best_doc(self, ledger: Ledger) -> dict[str, Any] | None:
        final = ledger.final()
        best = final or ledger.best()
        if best is None:  # no trial completed yet
            return None
        doc: dict[str, Any] = {"value": best.value, **_trial_doc(best)}
        if final is not None:
            doc.update(final_model(final))
        doc.update(study_name=ledger.study.study_name, storage=self._storage)
        return doc

    def _front_doc(self, ledger: Ledger) -> dict[str, Any] | None:
        """best.yaml of a multi-objective study: its directions and its Pareto front."""
        front = ledger.front()
        if not front:
            return None
        return {
            "directions": [d.name.lower() for d in ledger.study.directions],
            "pareto_front": [{"values": list(t.values), **_trial_doc(t)} for t in front],
            "study_name": ledger.study.study_name,
            "storage": self._storage,
        }


def _trial_doc(trial: FrozenTrial) -> dict[str, Any]:
    overrides = replay(trial)
    return {
        "trial": trial.number,
        "params": dict(trial.params),
        "overrides": overrides,
        "command": f"{app_command()} {command_line(overrides)}".strip(),
        "job_dir": trial.user_attrs.get("job_dir"),
    }


def _results_text(best: dict[str, Any]) -> bytes:
    """optimization_results.yaml, from best.yaml's document (see the module docstring)."""
    doc: dict[str, Any] = {"name": "optuna"}
    if "pareto_front" in best:
        front = best["pareto_front"]
        doc["solutions"] = [{"params": t["params"], "values": t["values"]} for t in front]
        doc["best_trials"] = [t["trial"] for t in front]
    else:
        doc.update(best_params=best["params"], best_value=best["value"])
    return yaml.safe_dump(doc, sort_keys=False).encode()


def _read(study: optuna.Study) -> Ledger:
    ledger = Ledger(study)
    ledger.refresh()
    return ledger


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s file, atomically: a hard link (the job's file never
    changes once its trial has finished: tables are replaced, not rewritten in place), or a
    copy where the two lie on different filesystems."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, tmp)


def read_part(sweep_dir: Path, table: str, number: int) -> pa.Table | None:
    """Trial ``number``'s rows of the sweep's ``table``, without a ``trial`` column (None:
    none recorded): from its part, or, in an older sweep, the single file's rows."""
    path = sweep_dir / f"{table}.parquet"
    if path.is_dir():
        part = path / f"trial={number}" / "part-0.parquet"
        return pq.read_table(part) if part.is_file() else None
    if not path.is_file():
        return None
    rows = pq.read_table(path, filters=[("trial", "=", number)])
    return rows.drop_columns(["trial"]) if rows.num_rows else None


def final_model(final: FrozenTrial) -> dict[str, Any]:
    """What best.yaml says of a budgeted sweep's final model."""
    attrs = final.user_attrs
    job_dir = Path(str(attrs.get("job_dir")))
    return {
        "final": {
            "val_loss": attrs.get("full_val_loss"),  # the whole validation split
            "test_loss": attrs.get("test_loss"),  # the held-out test split
            "checkpoint": str(job_dir / "best.pt"),
            "stopped": attrs.get("stop_reason"),  # e.g. diverged: its best weights stand
            "continues": attrs.get("parent"),
            "flops": attrs.get("flops"),
            "tokens": attrs.get("tokens"),
            "sample": f"python -m tbptt.sample checkpoint={job_dir / 'best.pt'}",
        }
    }
