"""Figures of a sweep: each function draws one question's picture of a ``SweepResults`` as a PNG.

Every function takes the results, the PNG's path and options, saves the figure and returns the
path. One that cannot be drawn from the data at hand (no evaluations, no ``clip`` parameter)
raises ``ValueError`` saying what is missing; ``analysis.report`` turns that into a note.

The figures are built with matplotlib's object API (``Figure`` rendered by Agg, never pyplot):
no global state and no GUI backend, so they work the same in scripts, tests and notebooks.

Objective of a trial that did not complete: Optuna records no value for a pruned trial, so the
figures that compare trials use the best validation loss it reached before it was stopped, drawn
hollow: it is an optimistic stand-in measured on less compute, not a comparable value.

A multi-objective study has no one objective: the figures that plot it raise ``ValueError``, and
``pareto`` draws its trade-off instead (its front: ``front``, by Optuna's rule).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from optuna.trial import create_trial

from analysis.load import SweepResults, memory_study, single_objective

STATE_COLORS = {
    "complete": "tab:blue",
    "pruned": "tab:orange",
    "fail": "tab:red",
    "running": "tab:gray",
    "waiting": "tab:olive",
}
END_MARKERS = {"pruned": "x", "fail": "X", "running": ">"}  # last evaluation
TRIAL_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:cyan")
TOKENS = "training tokens (characters)"
VAL_LOSS = "validation loss (nats/char)"
OBJECTIVE = "objective: validation loss (nats/char)"
DPI = 100


# -- shared helpers -------------------------------------------------------------------------


def minimizes(results: SweepResults) -> bool:
    """The objective is a validation loss, minimized unless the study says otherwise. A
    multi-objective study has no one objective: the validation losses that stand in for its
    unfinished trials' are minimized."""
    return results.multi_objective or results.directions[0] == "minimize"


def objectives(results: SweepResults) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value`` and ``objective``: the value, or for a
    trial that did not complete, the best validation loss it reached (NaN when none). A
    multi-objective study has no ``value``: every trial's objective is that validation loss."""
    frame = results.trials[["number", "state", "value"]].copy()
    frame["state"] = frame["state"].astype(str)
    evals = results.evals
    if evals.empty or "val_loss" not in evals:
        reached = pd.Series(dtype=float)
    else:
        finite = evals[np.isfinite(evals["val_loss"])]
        reached = finite.groupby("trial")["val_loss"].agg("min" if minimizes(results) else "max")
    frame["objective"] = frame["value"].fillna(frame["number"].map(reached)).astype(float)
    return frame.reset_index(drop=True)


def ranked(results: SweepResults) -> pd.DataFrame:
    """Complete trials with a value, best first (none in a multi-objective study: see
    ``front``)."""
    frame = objectives(results)
    frame = frame[(frame["state"] == "complete") & frame["value"].notna()]
    return frame.sort_values("value", ascending=minimizes(results), kind="stable")


def front(results: SweepResults) -> pd.DataFrame:
    """A multi-objective study's Pareto front: the rows of the complete trials that no other
    dominates (Optuna's rule, ``Study.best_trials``), best first on the first objective."""
    if not results.multi_objective:
        raise ValueError(
            f"{results.path} has one objective: a Pareto front needs several "
            "(hydra.sweeper.direction: [minimize, maximize], say)"
        )
    columns = results.objective_columns()
    trials = results.trials
    done = trials[trials["state"] == "complete"].dropna(subset=columns)
    values = done[columns].to_numpy(float)
    study = memory_study(results.directions, [create_trial(values=list(v)) for v in values])
    on = sorted(t.number for t in study.best_trials)  # positions in `done`
    first = results.directions[0] == "minimize"
    return done.iloc[on].sort_values(columns[0], ascending=first, kind="stable")


def pick_trials(results: SweepResults, available: Iterable[int], n_best: int = 3) -> list[int]:
    """The ``n_best`` best complete trials (a multi-objective study: of its Pareto front) and
    the worst pruned one, among ``available``; when none of those has data, the first
    ``n_best`` available trials."""
    available = set(int(n) for n in available)
    leaders = front(results) if results.multi_objective else ranked(results)
    best = [int(n) for n in leaders["number"] if n in available][:n_best]
    frame = objectives(results)
    pruned = frame[(frame["state"] == "pruned") & frame["number"].isin(available)]
    pruned = pruned.sort_values("objective", ascending=not minimizes(results), na_position="last")
    chosen = best + [int(n) for n in pruned["number"][:1]]
    return chosen or sorted(available)[:n_best]


def clip_threshold(results: SweepResults, number: int) -> float | None:
    """``clip.max_norm`` of a trial that clipped by norm (None for other clip modes): the swept
    value, else the one in the job's composed config (the mode's default)."""
    row = results.trials.set_index("number").loc[number]
    mode = row.get("param.clip")
    if isinstance(mode, str) and mode != "norm":
        return None
    swept = row.get("param.clip.max_norm")
    if swept is not None and pd.notna(swept):
        return float(swept)
    return _job_max_norm(row.get("job_dir"))


def _job_max_norm(job_dir: object) -> float | None:
    # The composed config has clip.max_norm exactly when the job's clip mode was `norm`.
    if not isinstance(job_dir, str) or not job_dir:
        return None
    path = Path(job_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    clip = (yaml.safe_load(path.read_text()) or {}).get("clip") or {}
    value = clip.get("max_norm")
    return float(value) if value is not None else None


def _require(frame: pd.DataFrame, table: str, columns: Sequence[str]) -> pd.DataFrame:
    if frame is None or frame.empty:
        raise ValueError(f"{table}.parquet has no rows")
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{table}.parquet lacks column(s) {', '.join(missing)}")
    return frame


def _axes(ncols: int = 1, width: float = 8.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, 5.0), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _state_handles(states: Iterable[str], hollow: bool = False) -> list[Line2D]:
    counts = pd.Series(list(states)).value_counts()
    handles = []
    for state, color in STATE_COLORS.items():
        if state in counts:
            face = "none" if hollow and state != "complete" else color
            handles.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    marker="o",
                    markerfacecolor=face,
                    linestyle="",
                    label=f"{state} ({counts[state]})",
                )
            )
    return handles


def _trial_label(results: SweepResults, number: int) -> str:
    row = objectives(results).set_index("number").loc[number]
    value = f", {row['value']:.4g}" if pd.notna(row["value"]) else ""
    return f"trial {number} ({row['state']}{value})"


# -- the figures ----------------------------------------------------------------------------


def val_curves(results: SweepResults, path: Path | str, *, log_y: bool = False) -> Path:
    """Validation loss of every trial against training tokens, coloured by state; a trial that
    did not complete ends in a marker at its last evaluation; the best trial is drawn in black."""
    evals = _require(results.evals, "evals", ["trial", "tokens", "val_loss"])
    evals = evals[np.isfinite(evals["val_loss"])]
    if evals.empty:
        raise ValueError("evals.parquet has no finite validation loss")
    states = objectives(results).set_index("number")["state"]
    fig, (ax,) = _axes()
    ceiling = _loss_ceiling(evals)
    for number, curve in evals.sort_values("tokens").groupby("trial"):
        state = states.get(number, "unknown")
        color = STATE_COLORS.get(state, "black")
        loss = curve["val_loss"].clip(upper=ceiling)
        ax.plot(curve["tokens"], loss, color=color, alpha=0.6, lw=1.2)
        if state in END_MARKERS:
            marker = END_MARKERS[state]
            ax.plot(curve["tokens"].iloc[-1], loss.iloc[-1], marker, color=color, ms=9, mew=2)
    handles = _end_handles(states[states.index.isin(evals["trial"])])
    handles += _draw_best(ax, results, evals)
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=TOKENS, ylabel=VAL_LOSS, title="Validation loss of every trial")
    ax.legend(handles=handles, title="trial state", fontsize="small")
    return _save(fig, path)


def _end_handles(shown: pd.Series) -> list[Line2D]:
    handles = _state_handles(shown)
    for state, marker in END_MARKERS.items():
        if (shown == state).any():
            label = "still running" if state == "running" else f"{state}: stopped here"
            handles.append(Line2D([], [], color="black", marker=marker, ls="", label=label))
    return handles


def _draw_best(ax: Axes, results: SweepResults, evals: pd.DataFrame) -> list[Line2D]:
    best = ranked(results)["number"]
    if best.empty or best.iloc[0] not in set(evals["trial"]):
        return []
    curve = evals[evals["trial"] == best.iloc[0]]
    (line,) = ax.plot(curve["tokens"], curve["val_loss"], color="black", lw=2.2)
    line.set_label(f"best: trial {best.iloc[0]}")
    return [line]


def _loss_ceiling(evals: pd.DataFrame) -> float:
    # A diverged run's loss would flatten every other curve; an untrained model's loss (the
    # first evaluation) is the natural top of the scale. Losses above it are drawn at it.
    first = evals.sort_values("tokens").groupby("trial")["val_loss"].first()
    return float(first.max() * 1.5) if len(first) else math.inf


def grad_norms(
    results: SweepResults, path: Path | str, *, trials: Sequence[int] | None = None
) -> Path:
    """Total gradient norm before clipping at every update (log scale) of chosen trials (default:
    the best 3 and the worst pruned), with each norm-clipping threshold dashed."""
    steps = _require(results.steps, "steps", ["trial", "tokens", "grad_norm"])
    chosen = list(trials) if trials is not None else pick_trials(results, steps["trial"].unique())
    missing = sorted(set(chosen) - set(steps["trial"]))
    if missing:
        raise ValueError(f"steps.parquet has no rows for trial(s) {missing}")
    fig, (ax,) = _axes()
    for i, number in enumerate(chosen):
        color = TRIAL_COLORS[i % len(TRIAL_COLORS)]
        rows = steps[(steps["trial"] == number) & (steps["grad_norm"] > 0)].sort_values("tokens")
        ax.plot(
            rows["tokens"],
            rows["grad_norm"],
            color=color,
            lw=0.9,
            alpha=0.85,
            label=_trial_label(results, number),
        )
        threshold = clip_threshold(results, number)
        if threshold is not None:
            ax.axhline(
                threshold,
                color=color,
                ls="--",
                lw=1.2,
                label=f"trial {number}: clip max_norm = {threshold:g}",
            )
    ax.set_yscale("log")
    ax.set(
        xlabel=TOKENS,
        ylabel="gradient L2 norm before clipping (log scale)",
        title="Gradient norm during training: vanishing or exploding?",
    )
    ax.legend(fontsize="small")
    return _save(fig, path)


def _swept_or_realized(results: SweepResults, keys: Sequence[str], step_column: str) -> pd.Series:
    # The swept parameter when there is one, else what the trainer realized per update
    # (the median over a trial's updates); empty when it does not vary across trials.
    for key in keys:
        if f"param.{key}" in results.trials:
            values = results.trials.set_index("number")[f"param.{key}"]
            return pd.to_numeric(values, errors="coerce").dropna()
    steps = results.steps
    if steps.empty or step_column not in steps:
        return pd.Series(dtype=float)
    values = steps.groupby("trial")[step_column].median()
    return values if values.nunique() > 1 else pd.Series(dtype=float)


def objective_vs_params(results: SweepResults, path: Path | str) -> Path:
    """Objective against the learning rate (log x) and against the BPTT length, by state; a
    quantity that does not vary across trials gets no panel, and the title says so."""
    single_objective(results, "the objective-vs-parameters figure")
    candidates = {
        "learning rate": _swept_or_realized(results, ["optim.lr"], "lr"),
        "BPTT length": _swept_or_realized(results, ["bptt.length", "bptt.k1"], "k1"),
    }
    panels = {name: x for name, x in candidates.items() if not x.empty}
    if not panels:
        raise ValueError("neither the learning rate nor the BPTT length varies across trials")
    frame = objectives(results).dropna(subset=["objective"]).set_index("number")
    if frame.empty:
        raise ValueError("no trial has an objective or a validation loss")
    fig, axes = _axes(len(panels), width=6.0)
    for ax, (name, x) in zip(axes, panels.items(), strict=True):
        joined = frame.join(x.rename("x"), how="inner")
        _scatter_by_state(ax, joined["x"], joined)
        if name == "learning rate":
            ax.set_xscale("log")
        xlabel = "learning rate (log scale)" if name == "learning rate" else "k1 (time steps)"
        ax.set(xlabel=xlabel, ylabel=OBJECTIVE, title=f"Objective vs {name}")
    absent = [name for name in candidates if name not in panels]
    if absent:
        fig.suptitle(f"({' and '.join(absent)}: the same in every trial, not drawn)", size=9)
    axes[0].legend(
        handles=_state_handles(frame["state"], hollow=True),
        fontsize="small",
        title="hollow: best val loss so far",
    )
    return _save(fig, path)


def _scatter_by_state(ax: Axes, x: pd.Series, frame: pd.DataFrame) -> None:
    for state, color in STATE_COLORS.items():
        mask = frame["state"] == state
        if mask.any():
            face = color if state == "complete" else "none"
            ax.scatter(
                x[mask],
                frame.loc[mask, "objective"],
                s=36,
                edgecolors=color,
                facecolors=face,
                linewidths=1.4,
            )


def clip_modes(results: SweepResults, path: Path | str) -> Path:
    """Objective per clipping mode: a box over the complete trials, every trial as a dot."""
    single_objective(results, "the clip-mode figure")
    if "param.clip" not in results.trials:
        raise ValueError("clip is not a swept parameter (trials.parquet has no param.clip)")
    frame = objectives(results).set_index("number")
    frame["mode"] = results.trials.set_index("number")["param.clip"].astype("string")
    frame = frame.dropna(subset=["objective", "mode"])
    if frame.empty:
        raise ValueError("no trial with a clip mode has an objective or a validation loss")
    modes = sorted(frame["mode"].unique())
    fig, (ax,) = _axes(width=7.0)
    complete = [
        frame.loc[(frame["mode"] == m) & (frame["state"] == "complete"), "objective"]
        for m in modes
    ]
    boxed = [i for i, values in enumerate(complete) if len(values)]
    if boxed:
        ax.boxplot([complete[i] for i in boxed], positions=boxed, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same sweep draws the same picture
    x = frame["mode"].map({m: i for i, m in enumerate(modes)}).astype(float)
    _scatter_by_state(ax, x + rng.uniform(-0.15, 0.15, len(x)), frame)
    ax.set_xticks(range(len(modes)), modes)
    ax.set(
        xlabel="clip mode (param.clip)",
        ylabel=OBJECTIVE,
        title="Does clipping help? Objective per clip mode",
    )
    ax.legend(
        handles=_state_handles(frame["state"], hollow=True),
        fontsize="small",
        title="box: complete trials",
    )
    return _save(fig, path)


def param_importances(results: SweepResults) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA, its default) of the study; ValueError saying
    why when they cannot be computed."""
    study = results.study
    if study is None:
        raise ValueError("no Optuna study (a plain Hydra multirun has none)")
    single_objective(results, "importance")
    if not results.params():
        raise ValueError("no swept parameters")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        raise ValueError(f"importances need at least 2 complete trials, got {len(complete)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample warnings; the figure says n
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"optuna could not compute importances: {err}") from None


def importances(results: SweepResults, path: Path | str) -> Path:
    """Horizontal bars of parameter importances, or a figure that says why there are none."""
    fig, (ax,) = _axes(width=7.0)
    try:
        scores = param_importances(results)
    except ValueError as why:
        ax.text(
            0.5,
            0.5,
            f"No parameter importances:\n{why}",
            ha="center",
            va="center",
            wrap=True,
            fontsize=12,
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        ax.set_title("Parameter importances")
        return _save(fig, path)
    names = list(scores)[::-1]  # most important on top
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    n = len(ranked(results))
    ax.set(
        xlabel="importance (normalized to sum to 1; Optuna's PED-ANOVA)",
        ylabel="parameter",
        title=f"Parameter importances ({n} complete trials)",
    )
    return _save(fig, path)


def grad_flow(
    results: SweepResults, path: Path | str, *, trials: Sequence[int] | None = None
) -> Path:
    """||dL_t/dh_{t-j}|| against the lag j (log scale) at each chosen trial's last measurement,
    with the fitted geometric decay c * f**j dotted and f in the legend."""
    flow = _require(results.grad_flow, "grad_flow", ["trial", "tokens", "lag", "grad_norm"])
    chosen = list(trials) if trials is not None else pick_trials(results, flow["trial"].unique())
    missing = sorted(set(chosen) - set(flow["trial"]))
    if missing:
        raise ValueError(f"grad_flow.parquet has no rows for trial(s) {missing}")
    last = flow[flow["tokens"] == flow.groupby("trial")["tokens"].transform("max")]
    fig, (ax,) = _axes()
    for i, number in enumerate(chosen):
        color = TRIAL_COLORS[i % len(TRIAL_COLORS)]
        rows = last[(last["trial"] == number) & (last["grad_norm"] > 0)].sort_values("lag")
        factor = float(rows["decay_factor"].iloc[0]) if "decay_factor" in rows else math.nan
        ax.plot(
            rows["lag"],
            rows["grad_norm"],
            "o-",
            color=color,
            ms=3,
            lw=1.2,
            label=f"{_trial_label(results, number)}: decay factor {factor:.3g}/step",
        )
        _plot_fit(ax, rows, factor, color)
    ax.set_yscale("log")
    ax.set(
        xlabel="lag j (time steps back from the loss)",
        ylabel="||dL_t / dh_{t-j}|| (log scale)",
        title="Gradient flow through time at the last measurement",
    )
    ax.legend(fontsize="small", title="dotted: fitted c * factor^j")
    return _save(fig, path)


def _plot_fit(ax: Axes, rows: pd.DataFrame, factor: float, color: str) -> None:
    # The trainer fits norm_j ~ c * f**j over j >= 1; recover c by least squares given f.
    fit = rows[rows["lag"] >= 1]
    if not math.isfinite(factor) or factor <= 0 or fit.empty:
        return
    lags = fit["lag"].to_numpy(float)
    log_c = float(np.mean(np.log(fit["grad_norm"].to_numpy(float)) - lags * math.log(factor)))
    ax.plot(lags, np.exp(log_c) * factor**lags, ":", color=color, lw=1.5)


def _spans(results: SweepResults) -> pd.DataFrame:
    """Per started trial: worker, state, start and duration in seconds since the first start.
    A trial without an end (running, or killed) ends at its last recorded update."""
    trials = _require(results.trials, "trials", ["number", "state", "datetime_start"])
    trials = trials.dropna(subset=["datetime_start"])
    if trials.empty:
        raise ValueError("no trial has a start time (trials.parquet datetime_start)")
    start = pd.to_datetime(trials["datetime_start"])
    end = pd.to_datetime(trials.get("datetime_complete", pd.Series(pd.NaT, index=trials.index)))
    if "elapsed_s" in results.steps:
        progress = trials["number"].map(results.steps.groupby("trial")["elapsed_s"].max())
        end = end.fillna(start + pd.to_timedelta(progress, unit="s"))
    origin = start.min()
    left = (start - origin).dt.total_seconds()
    workers = trials.get("worker", pd.Series(None, index=trials.index))
    return pd.DataFrame(
        {
            "number": trials["number"],
            "state": trials["state"].astype(str),
            "worker": workers.astype("string").fillna("unknown"),
            "left": left,
            "width": ((end.fillna(start) - origin).dt.total_seconds() - left).clip(lower=0),
        }
    )


def timeline(results: SweepResults, path: Path | str) -> Path:
    """One row per worker, one bar per trial from its start to its end, coloured by state:
    how busy the workers were and where pruning freed one early."""
    spans = _spans(results)
    rows = {w: i for i, w in enumerate(sorted(spans["worker"].unique()))}
    y = spans["worker"].map(rows)
    left, width = spans["left"], spans["width"]
    fig, (ax,) = _axes(width=9.0)
    colors = [STATE_COLORS.get(state, "black") for state in spans["state"]]
    ax.barh(y, width, left=left, color=colors, edgecolor="white", height=0.7)
    span = float((left + width).max()) or 1.0
    for number, x, w, row in zip(spans["number"], left, width, y, strict=True):
        if w > 0.03 * span:
            ax.text(x + w / 2, row, str(number), ha="center", va="center", fontsize=8)
    busy = float(width.sum()) / (len(rows) * span)
    ax.set_yticks(list(rows.values()), list(rows))
    ax.set(
        xlabel="wall time since the first trial started (s)",
        ylabel="worker",
        title=f"Trials per worker over time (busy {busy:.0%} of worker time)",
    )
    fig.legend(
        handles=_state_handles(spans["state"]),
        loc="outside right upper",
        fontsize="small",
        title="one bar per trial",
    )
    return _save(fig, path)


LABELLED_FRONT = 30  # a front of at most this many trials has its trial numbers drawn


def pareto(results: SweepResults, path: Path | str) -> Path:
    """A multi-objective study's trade-off: every complete trial as a point in the plane of
    the first two objectives, the Pareto front highlighted and joined in order of the first.
    With three or more objectives the front is over all of them, so some of its trials may
    look dominated in this plane; the title says so."""
    best = front(results)  # ValueError for one objective
    columns, labels = results.objective_columns(), results.objective_labels()
    trials = results.trials
    done = trials[trials["state"] == "complete"].dropna(subset=columns)
    if done.empty:
        raise ValueError("no trial completed")
    fig, (ax,) = _axes(width=7.0)
    x, y = columns[0], columns[1]
    ax.scatter(done[x], done[y], s=30, color="tab:gray", alpha=0.6,
               label=f"complete trial ({len(done)})")  # fmt: skip
    _draw_front(ax, best, x, y)
    title = f"Pareto front: {len(best)} of {len(done)} complete trials"
    k = len(columns)
    if k > 2:
        title += f"\n(the first 2 of {k} objectives; the front is over all {k})"
    ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
    ax.legend(fontsize="small", title="labels: trial numbers")
    return _save(fig, path)


def _draw_front(ax: Axes, best: pd.DataFrame, x: str, y: str) -> None:
    ax.plot(best[x], best[y], "o-", color="tab:red", ms=7, lw=1.2,
            label=f"Pareto front ({len(best)})")  # fmt: skip
    if len(best) > LABELLED_FRONT:  # the numbers would cover each other
        return
    numbers = best.groupby([x, y], sort=False)["number"]  # trials at one point share a label
    for (bx, by), at in numbers:
        ax.annotate(", ".join(str(n) for n in at), (bx, by), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip


# The report's figures, in reading order: file stem -> function(results, path).
PLOTS: dict[str, Callable[[SweepResults, Path], Path]] = {
    "val_curves": val_curves,
    "objective_vs_params": objective_vs_params,
    "clip_modes": clip_modes,
    "importances": importances,
    "grad_norms": grad_norms,
    "grad_flow": grad_flow,
    "timeline": timeline,
}
