"""A sweep's results as four tidy pandas tables: ``load(path)``.

``path`` is either the directory of the project's Optuna sweeper (``study.journal``, or
``trials.parquet`` when the study lives in a remote storage) or a plain Hydra multirun
directory (numbered job directories, each with ``.hydra/overrides.yaml``). A sweep that is
still running, or was interrupted, loads as it stands: run directories replace their Parquet
files atomically, so every table read is whole.

    >>> results = load(sweep_dir)  # e.g. "multirun/lr"
    >>> results.trials.groupby("param.clip", observed=True)["value"].min()
    param.clip
    none     NaN
    norm    1.25
    Name: value, dtype: float64

Tables (column order and dtypes are part of the API):

``trials``: one row per trial (Optuna) or job (multirun), ordered by ``number``.

    number              int64
    state               category: complete, pruned, fail, running, waiting
    value               float64    the objective; NaN unless complete, and always NaN in a
                                   multi-objective study (its objectives: the next columns)
    value_<i>           float64    a multi-objective study only: objective i (0, 1, ...), in the
                                   order of ``directions``; NaN unless complete
    phase               string     search, candidate or final (a budgeted sweep, see
                                   sweeps/plan.py); <NA> for multirun jobs
    parent              Int64      the trial a candidate or final run continues
    param.<key>         one per swept key, in order of first appearance; the dtype follows the
                        values: float64, Int64, string, boolean (object for a mixed choice), with
                        NaN / <NA> where the key was not sampled (``clip.max_norm`` with
                        ``clip=none``)
    tokens              Int64      tokens trained (result.json; else the last step's tokens)
    flops               Int64      training compute (result.json)
    wall_seconds        float64
    full_val_loss       float64    candidates and final: loss on the whole validation split
    test_loss           float64    final: loss on the held-out test split (its best.pt)
    stop_reason         string     "pruned at token N", "diverged at token N: ...", an exception
                                   summary for a failed trial; <NA> otherwise
    stopped_at          Int64      pruned trials: N of "at token N" in stop_reason, else the
                                   last reported step, else the last evaluation's tokens
    retry_of            Int64      Optuna: the trial this one re-runs (a worker died)
    worker              string     "host:pid" (Optuna); <NA> for multirun jobs
    datetime_start      datetime64[ns]  local time, naive (as Optuna records it)
    datetime_complete   datetime64[ns]
    job_dir             string     the job directory as found on this machine (see below)
    overrides           string     the overrides that reproduce the trial as a single run:
                                   ``python -m tbptt.train <overrides>``

``steps``: one row per trial and update: ``trial`` (int64) and every column of the run's
``steps.parquet``: tokens, flops, update, k1, k2 (int64), loss, grad_norm, grad_norm_clipped, lr,
hidden_norm, elapsed_s (float64), clipped (bool), then the per-layer ``grad_norm_<layer>`` and,
with error clipping, ``error_clipped`` / ``error_max`` / ``error_mean``. A column that some
trials lack is NaN there (so an int column such as ``error_clipped`` becomes float64).

``evals``: ``trial``, ``tokens``, ``flops`` (int64), ``val_loss``, ``val_bpc``, ``decay_factor``,
``elapsed_s`` (float64).

``grad_flow``: ``trial``, ``tokens``, ``lag`` (int64), ``grad_norm``, ``decay_factor`` (float64).

Empty tables still have these columns. Metric rows come from each trial's job directory, for
every trial that has one (running and failed trials included). A job directory is looked for
where it was recorded, then under ``path`` by its name, then as ``path/<number>`` (Hydra's
default subdir), so a sweep directory copied to another machine still finds its jobs.

Multirun jobs: the state is ``complete`` when ``result.json`` says so (and the objective is
finite), ``pruned`` when it stopped early (its ``stop_reason``), ``fail`` otherwise; a job
without ``result.json`` is ``running`` if it wrote anything in the last 10 minutes, else
``fail``. ``value`` is the best or final validation loss, as ``trainer.objective`` says in its
``.hydra/config.yaml``. The swept keys are those whose override values differ between jobs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import FrozenTrial, TrialState

from sweeps import outputs
from sweeps.outputs import (
    METRIC_TABLES,
    STATES,
    command_line,
    read_best,
    read_part,
    trial_row,
    value_columns,
)
from sweeps.storage import open_storage
from tbptt import contract
from tbptt.errors import ConfigError
from tbptt.metrics import COLUMNS

RUNNING_WINDOW_S = 600.0  # a multirun job without result.json that wrote this recently runs
# The trials table: trials.parquet's columns, and where a pruned trial stopped (derived here).
def _with_stopped_at(columns: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, dtype in columns.items():
        out[name] = dtype
        if name == "stop_reason":
            out["stopped_at"] = "Int64"
    return out


TRIAL_COLUMNS = _with_stopped_at(outputs.TRIAL_COLUMNS)
METRIC_COLUMNS = {table: {"trial": "int64", **columns} for table, columns in COLUMNS.items()}
_AT_TOKEN = r"at token (\d+)"


@dataclass(kw_only=True)
class SweepResults:
    """What a sweep produced: its trials and their metric tables (see the module docstring).

    Args:
        path: the sweep directory.
        kind: ``optuna`` (the project's sweeper) or ``multirun`` (plain Hydra multirun).
        trials, steps, evals, grad_flow: the tables.
        study: the live Optuna study (importances, plots), or None: a multirun, or a sweep
            read from ``trials.parquet`` because its study lives in a remote storage.
        directions: ``minimize`` / ``maximize``, one per objective (several: a multi-objective
            study, its objectives in the ``value_<i>`` columns). The study's when there is one;
            else ``best.yaml``'s; else each objective minimized.

    Example:
        >>> r = load(sweep_dir); r.params()
        ['optim.lr', 'clip', 'clip.max_norm', 'bptt.length']
        >>> r.directions, r.objective_columns()
        (('minimize',), ['value'])
    """

    path: Path
    kind: str
    trials: pd.DataFrame
    steps: pd.DataFrame
    evals: pd.DataFrame
    grad_flow: pd.DataFrame
    study: optuna.Study | None
    directions: tuple[str, ...] = ("minimize",)

    def __post_init__(self) -> None:
        if self.study is not None:
            self.directions = tuple(d.name.lower() for d in self.study.directions)

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    def objective_columns(self) -> list[str]:
        """The trials table's objective columns: ``value``, or ``value_0``, ``value_1``, ..."""
        if not self.multi_objective:
            return ["value"]
        return [f"value_{i}" for i in range(len(self.directions))]

    def objective_labels(self) -> list[str]:
        """Each objective column with its direction: ``value_0 (minimize)``."""
        columns = self.objective_columns()
        return [f"{c} ({d})" for c, d in zip(columns, self.directions, strict=True)]

    def objective_views(self) -> list[SweepResults]:
        """The sweep seen through each objective alone, as a single-objective sweep (``value``
        holds that objective; an in-memory study of the complete trials valued by it): what
        tables that rank by one value (knob effects, importances) read. ``[self]`` for a
        single-objective sweep."""
        if not self.multi_objective:
            return [self]
        return [self._one_objective(i) for i in range(len(self.directions))]

    def _one_objective(self, i: int) -> SweepResults:
        trials = self.trials.copy()
        trials["value"] = trials[f"value_{i}"]
        study = None
        if self.study is not None:
            complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            valued = [_valued(t, t.values[i]) for t in complete]
            study = memory_study([self.directions[i]], valued)
        return replace(self, trials=trials, study=study, directions=(self.directions[i],))

    def params(self) -> list[str]:
        """The swept parameter keys, in the order of the ``param.<key>`` columns."""
        return [c.removeprefix("param.") for c in self.trials.columns if c.startswith("param.")]

    def search_only(self) -> SweepResults:
        """The search trials alone. A budgeted sweep's candidates and final run repeat their
        parents' parameters at several times the compute: knob effects and importances that
        counted them would credit those values with the extra training."""
        keep = self.trials["phase"].isna() | (self.trials["phase"] == "search")
        if bool(keep.all()):
            return self
        numbers = set(self.trials.loc[keep, "number"])
        study = None
        if self.study is not None:  # an in-memory copy holding only those trials
            study = memory_study(
                self.directions, [t for t in self.study.get_trials() if t.number in numbers]
            )
        return replace(
            self,
            trials=self.trials[keep].reset_index(drop=True),
            steps=self.steps[self.steps["trial"].isin(numbers)],
            evals=self.evals[self.evals["trial"].isin(numbers)],
            grad_flow=self.grad_flow[self.grad_flow["trial"].isin(numbers)],
            study=study,
        )


def memory_study(directions: Sequence[str], trials: list[FrozenTrial]) -> optuna.Study:
    """An in-memory study of ``directions`` (one per objective) holding ``trials`` (what
    importances and plots read), created without Optuna's "study created" log line."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=list(directions))  # type: ignore[arg-type]
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    return study


def _valued(trial: FrozenTrial, value: float) -> FrozenTrial:
    """A complete copy of ``trial`` with the single objective ``value``."""
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=value, params=trial.params,
        distributions=trial.distributions, user_attrs=trial.user_attrs,
    )  # fmt: skip


def single_objective(results: SweepResults, what: str) -> None:
    """Raise ValueError when ``what``, which ranks trials by one value, meets a
    multi-objective study."""
    if results.multi_objective:
        raise ValueError(
            f"{what} needs one objective, and {results.path} is a multi-objective study "
            f"({', '.join(results.objective_labels())}): see its Pareto front, or take one "
            "objective from results.objective_views()"
        )


def load(path: str | Path, *, study_name: str | None = None) -> SweepResults:
    """Load the sweep in ``path``; ``study_name`` picks one study of a shared journal."""
    root = Path(path)
    if root.is_file() and root.name in ("study.journal", "trials.parquet"):
        root = root.parent
    if (root / "study.journal").exists():  # a directory in its place: the storage says so
        study = _load_study(root, study_name)
        rows = [_study_row(t) for t in study.get_trials(deepcopy=False)]
        # dtype=object keeps each value's Python type, which its column's dtype follows
        return _assemble(root, "optuna", pd.DataFrame(rows, dtype=object), study)
    if (root / "trials.parquet").is_file():
        return _assemble(root, "optuna", pd.read_parquet(root / "trials.parquet"), None)
    jobs = _multirun_jobs(root)
    if jobs:
        return _assemble(root, "multirun", _multirun_trials(jobs), None)
    raise ConfigError(
        f"{root} is neither a sweep directory (study.journal / trials.parquet) nor a Hydra "
        "multirun directory (job directories with .hydra/overrides.yaml)"
        + ("" if root.exists() else ": it does not exist")
    )


# -- Optuna sweeps --------------------------------------------------------------------------


def _load_study(root: Path, study_name: str | None) -> optuna.Study:
    storage = open_storage(None, root)
    names = optuna.get_all_study_names(storage)
    if not names:
        raise ConfigError(f"{root / 'study.journal'} holds no study (no trial was recorded)")
    if study_name is None and len(names) != 1:
        raise ConfigError(
            f"{root / 'study.journal'} holds {len(names)} studies {names}; "
            "pass study_name= to load one"
        )
    name = study_name if study_name is not None else names[0]
    if name not in names:
        raise ConfigError(f"{root / 'study.journal'} has no study {name!r}; it has {names}")
    return optuna.load_study(study_name=name, storage=storage)


def _study_row(trial: FrozenTrial) -> dict[str, Any]:
    row = trial_row(trial)  # the row trials.parquet holds, so both sources read alike
    steps = trial.intermediate_values
    row["last_step"] = max(steps) if steps and trial.state == TrialState.PRUNED else None
    return row


# -- Hydra multiruns ------------------------------------------------------------------------


def _multirun_jobs(root: Path) -> dict[int, Path]:
    """Job directories by job number: their names when numeric (Hydra's default subdir)."""
    if not root.is_dir():
        return {}
    dirs = sorted(p.parent.parent for p in root.glob("*/.hydra/overrides.yaml"))
    if all(d.name.isdigit() for d in dirs):
        return dict(sorted((int(d.name), d) for d in dirs))
    return dict(enumerate(dirs))


def _multirun_trials(jobs: dict[int, Path]) -> pd.DataFrame:
    now = time.time()
    overrides = {n: _read_yaml(d / ".hydra" / "overrides.yaml") or [] for n, d in jobs.items()}
    rows = [_job_row(n, d, overrides[n], now) for n, d in jobs.items()]
    params = _swept_params([overrides[n] for n in jobs])
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(params, dtype=object)], axis=1)


def _job_row(number: int, job: Path, overrides: list[str], now: float) -> dict[str, Any]:
    result_path = job / contract.RESULT_FILE
    result = contract.read_result(job)
    state, value, reason = _job_outcome(job, result, now)
    return {
        "number": number, "state": state, "value": value, "phase": None, "parent": None,
        "tokens": result.tokens if result else None, "flops": result.flops if result else None,
        "wall_seconds": result.wall_seconds if result else None,
        "full_val_loss": None, "test_loss": None,
        "stop_reason": reason, "retry_of": None, "worker": None,
        "datetime_start": _mtime(job / ".hydra" / "overrides.yaml"),
        "datetime_complete": _mtime(result_path), "job_dir": str(job),
        "overrides": command_line(overrides), "last_step": None,
    }  # fmt: skip


def _job_outcome(
    job: Path, result: contract.TrialResult | None, now: float
) -> tuple[str, float | None, str | None]:
    """(state, value, reason) of a multirun job, by the sweeper's rule (tbptt/contract.py)."""
    if result is None:
        running = now - _last_written(job) < RUNNING_WINDOW_S
        return ("running", None, None) if running else ("fail", None, "no result.json")
    if not result.stop_reason and not result.completed:
        return "fail", None, "result.json: not completed"
    config = _read_yaml(job / ".hydra" / "config.yaml") or {}
    rule = (config.get("trainer") or {}).get("objective", "best")
    told = contract.outcome(result.objective(rule), result)  # one objective: a float or None
    value = told.value if isinstance(told.value, float) else None
    return told.state.lower(), value, told.reason


def _swept_params(overrides: Sequence[list[str]]) -> dict[str, list[Any]]:
    """``param.<key>`` columns for the keys whose values differ between jobs."""
    parsed = _parse_overrides(overrides)
    keys = list(dict.fromkeys(k for job in parsed for k in job))
    missing = object()
    swept = [k for k in keys if len({repr(job.get(k, missing)) for job in parsed}) > 1]
    return {f"param.{k}": [job.get(k) for job in parsed] for k in swept}


def _parse_overrides(overrides: Sequence[list[str]]) -> list[dict[str, Any]]:
    # Hydra's parser is slow per call and jobs share most lines: parse each distinct line once.
    parser = OverridesParser.create()
    lines = {line for job in overrides for line in job}
    parsed = {line: parser.parse_overrides([line])[0] for line in lines}
    return [
        {
            parsed[line].get_key_element().lstrip("+"): parsed[line].value()
            for line in job
            if not parsed[line].is_delete()
        }
        for job in overrides
    ]


def _last_written(job: Path) -> float:
    """When the job last wrote a table (or started, if it wrote none yet)."""
    files = [job / "steps.parquet", job / "evals.parquet", job / ".hydra" / "overrides.yaml"]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader: 10x faster
    return yaml.load(path.read_text(), Loader=loader)


def _mtime(path: Path) -> datetime | None:
    return datetime.fromtimestamp(path.stat().st_mtime) if path.exists() else None


# -- both kinds -----------------------------------------------------------------------------


def _assemble(
    root: Path, kind: str, raw: pd.DataFrame, study: optuna.Study | None
) -> SweepResults:
    params = [c for c in raw.columns if c.startswith("param.")]
    values = value_columns(raw)
    directions = _directions(root, values) if study is None else ()  # else the study's
    raw = raw.reindex(columns=[*TRIAL_COLUMNS, *values, *params, "last_step"])
    raw = raw.sort_values("number", ignore_index=True)
    found = _job_dirs(root, raw)
    missing = set(raw["number"]) - set(found)
    tables = {t: _metric_table(t, found, root, missing) for t in METRIC_TABLES}
    found_text = raw["number"].map({n: str(d) for n, d in found.items()})
    raw["job_dir"] = found_text.where(found_text.notna(), raw["job_dir"])
    trials = _trials_table(raw, params, tables["steps"], tables["evals"])
    return SweepResults(
        path=root,
        kind=kind,
        trials=trials,
        steps=tables["steps"],
        evals=tables["evals"],
        grad_flow=tables["grad_flow"],
        study=study,
        directions=directions,
    )


def _directions(root: Path, values: list[str]) -> tuple[str, ...]:
    """Without a study: ``best.yaml``'s directions (a multi-objective sweep writes them), else
    each objective minimized."""
    objectives = max(1, len(values))
    named = (read_best(root) or {}).get("directions")
    if named is None:
        return ("minimize",) * objectives
    if not (isinstance(named, list) and len(named) == objectives
            and set(named) <= {"minimize", "maximize"}):  # fmt: skip
        raise ConfigError(
            f"{root / 'best.yaml'}: directions must be minimize or maximize for each of the "
            f"{objectives} objective(s) of trials.parquet, got {named!r}"
        )
    return tuple(named)


def _job_dirs(root: Path, raw: pd.DataFrame) -> dict[int, Path]:
    """Each trial's job directory: as recorded, else under ``root`` by name or by number."""
    found = {}
    for number, recorded in zip(raw["number"], raw["job_dir"], strict=True):
        candidates = [root / str(number)]
        if isinstance(recorded, str) and recorded:
            candidates[:0] = [Path(recorded), root / Path(recorded).name]
        job_dir = next((c for c in candidates if c.is_dir()), None)
        if job_dir is not None:
            found[int(number)] = job_dir
    return found


def _metric_table(
    table: str, job_dirs: dict[int, Path], root: Path, missing: Iterable[int]
) -> pd.DataFrame:
    """Every trial's ``table``, read from its job directory, concatenated once; the sweep's
    own dataset serves trials whose job directories are on another machine."""
    found = {n: _read_part(d / f"{table}.parquet") for n, d in job_dirs.items()}
    found |= {n: read_part(root, table, n) for n in missing}
    parts = [_numbered(part, n) for n, part in sorted(found.items()) if part is not None]
    frame = (
        pa.concat_tables(parts, promote_options="permissive").to_pandas()
        if parts
        else pd.DataFrame()
    )
    return _conform_metrics(frame, METRIC_COLUMNS[table])


def _read_part(path: Path) -> pa.Table | None:
    try:
        with pq.ParquetFile(path) as file:  # 3x faster than read_table() on small files
            return file.read(use_threads=False)
    except FileNotFoundError:
        return None


def _numbered(part: pa.Table, number: int) -> pa.Table:
    part = part.replace_schema_metadata(None)
    return part.add_column(0, "trial", pa.array(np.full(part.num_rows, number, np.int64)))


def _conform_metrics(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The documented columns first, with their dtypes (NaN where a run lacked one)."""
    if frame.empty:
        extra = {c: frame[c] for c in frame.columns if c not in columns}
        return pd.DataFrame({**{c: pd.Series(dtype=t) for c, t in columns.items()}, **extra})
    for name, dtype in columns.items():
        if name not in frame:
            frame[name] = np.nan
        elif frame[name].dtype != dtype and not frame[name].isna().any():
            frame[name] = frame[name].astype(dtype)
    rest = [c for c in frame.columns if c not in columns]
    return frame[[*columns, *rest]]


def _trials_table(
    raw: pd.DataFrame, params: list[str], steps: pd.DataFrame, evals: pd.DataFrame
) -> pd.DataFrame:
    state = raw["state"].astype("string").str.lower()
    out = pd.DataFrame(index=raw.index)
    out["number"] = raw["number"].astype("int64")
    out["state"] = pd.Categorical(state, categories=STATES)
    for name in ["value", *value_columns(raw)]:
        value = pd.to_numeric(raw[name], errors="coerce").astype("float64")
        out[name] = value.where(state == "complete")
    out["phase"] = _text(raw["phase"])
    out["parent"] = _int(raw["parent"])
    for name in params:
        out[name] = _natural(raw[name])
    last_tokens = out["number"].map(steps.groupby("trial")["tokens"].max())
    out["tokens"] = _int(raw["tokens"]).fillna(_int(last_tokens))
    out["flops"] = _int(raw["flops"])
    for name in ("wall_seconds", "full_val_loss", "test_loss"):
        out[name] = pd.to_numeric(raw[name], errors="coerce").astype("float64")
    out["stop_reason"] = _text(raw["stop_reason"])
    out["stopped_at"] = _stopped_at(out, raw["last_step"], evals)
    out["retry_of"] = _int(raw["retry_of"])
    out["worker"] = _text(raw["worker"])
    for name in ("datetime_start", "datetime_complete"):
        out[name] = pd.to_datetime(raw[name]).astype("datetime64[ns]")
    out["job_dir"] = _text(raw["job_dir"])
    out["overrides"] = _text(raw["overrides"])
    return out


def _stopped_at(out: pd.DataFrame, last_step: pd.Series, evals: pd.DataFrame) -> pd.Series:
    """Where a pruned trial stopped: its reason's "at token N", else its last report."""
    parsed = _int(out["stop_reason"].str.extract(_AT_TOKEN, expand=False))
    last_eval = _int(out["number"].map(evals.groupby("trial")["tokens"].max()))
    stopped = parsed.fillna(_int(last_step)).fillna(last_eval)
    return stopped.where(out["state"] == "pruned", pd.NA).astype("Int64")


def _int(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("Float64").round().astype("Int64")


def _text(values: pd.Series) -> pd.Series:
    text = values.astype(object).where(values.notna(), None).astype("string")
    return text.mask(text == "")


def _natural(values: pd.Series) -> pd.Series:
    """The dtype the values call for: a swept key holds one kind of value (see the docstring)."""
    present = [v for v in values if not _is_missing(v)]
    if not present:
        return values.astype("float64")
    objects = values.astype(object).where(values.notna(), None)
    if all(isinstance(v, bool | np.bool_) for v in present):
        return objects.astype("boolean")
    if any(isinstance(v, bool | np.bool_) for v in present):
        return objects
    if all(isinstance(v, Integral) for v in present):
        return objects.astype("Int64")
    if all(isinstance(v, Real) for v in present):
        return pd.to_numeric(objects, errors="coerce").astype("float64")
    if all(isinstance(v, str) for v in present):
        return objects.astype("string")
    return objects


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
