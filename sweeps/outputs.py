"""Sweep outputs, kept consistent while the sweep runs: a crash leaves readable tables.

``trials.parquet`` (one row per trial), ``steps.parquet`` / ``evals.parquet`` /
``grad_flow.parquet`` (every finished trial's metric tables, with a ``trial`` column) and
``best.yaml`` (the best value, its parameters and a command that reproduces it as a single run)
are rewritten atomically each time a trial finishes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeps.storage import mask_url
from tbptt.errors import ConfigError
from tbptt.metrics import atomic_write_bytes, write_parquet

METRIC_TABLES = ("steps", "evals", "grad_flow")


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    start, end = trial.datetime_start, trial.datetime_complete
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
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
    row.update({f"param.{key}": value for key, value in trial.params.items()})
    return row


def replay(trial: FrozenTrial) -> list[str]:
    """The overrides that reproduce ``trial`` as one uninterrupted run (a continuation's own
    overrides resume a checkpoint; its replay trains from scratch to the same end)."""
    return list(trial.user_attrs.get("replay", trial.user_attrs.get("overrides", [])))


def final_trial(study: optuna.Study) -> FrozenTrial | None:
    """A budgeted sweep's final model: its completed, scored final run (None: none yet)."""
    finals = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get("phase") == "final" and "test_loss" in t.user_attrs
    ]
    return finals[-1] if finals else None


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
    """Writes the sweep directory's tables; ``record`` is called as each trial finishes.

    Args:
        sweep_dir: the sweep directory.
        storage: the storage URL shown in ``best.yaml`` (passwords masked).

    Example:
        >>> outputs = SweepOutputs(sweep_dir, None); outputs.record(study, trial_number)
    """

    def __init__(self, sweep_dir: Path, storage: str | None) -> None:
        self._dir = sweep_dir
        self._storage = mask_url(storage) if storage else str(sweep_dir / "study.journal")
        self._frames: dict[str, dict[int, pd.DataFrame]] = {t: {} for t in METRIC_TABLES}

    def load_finished(self, study: optuna.Study) -> None:
        """On resume: pick up the metric tables of trials finished by earlier runs."""
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished():
                self._read_job(trial)

    def _read_job(self, trial: FrozenTrial) -> None:
        job_dir = trial.user_attrs.get("job_dir")
        for table in METRIC_TABLES:
            path = Path(job_dir) / f"{table}.parquet" if job_dir else None
            if path is not None and path.exists():
                frame = pd.read_parquet(path)
                frame.insert(0, "trial", trial.number)
                self._frames[table][trial.number] = frame

    def record(self, study: optuna.Study, number: int) -> None:
        self._read_job(study.get_trials(deepcopy=False)[number])
        self.write(study)

    def write(self, study: optuna.Study) -> None:
        write_parquet(trials_frame(study), self._dir / "trials.parquet")
        for table, frames in self._frames.items():
            if frames:
                combined = pd.concat([frames[n] for n in sorted(frames)], ignore_index=True)
                write_parquet(combined, self._dir / f"{table}.parquet")
        self._write_best(study)

    def _write_best(self, study: optuna.Study) -> None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        final = final_trial(study)
        if not complete and final is None:
            return
        best = final or study.best_trial
        overrides = replay(best)
        doc: dict[str, Any] = {
            "value": best.value,
            "trial": best.number,
            "params": dict(best.params),
            "overrides": overrides,
            "command": f"{app_command()} {command_line(overrides)}".strip(),
            "job_dir": best.user_attrs.get("job_dir"),
        }
        if final is not None:
            doc.update(final_model(final))
        doc.update(study_name=study.study_name, storage=self._storage)
        atomic_write_bytes(self._dir / "best.yaml", yaml.safe_dump(doc, sort_keys=False).encode())


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
