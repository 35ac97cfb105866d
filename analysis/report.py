"""A sweep's report in Markdown and HTML: ``python -m analysis.report SWEEP_DIR``.

``write_report`` writes ``report.md`` (figures linked) and ``report.html`` (figures inline, one
self-contained file) into the sweep directory, and the figures as PNGs under ``report/``. It
answers, in order: what is the best configuration and how to rerun it; the ten best trials; what
each swept knob did (and how important Optuna judges it); which trials were stopped, why and at
which token; whether the gradient vanished or exploded; then the figures of ``analysis.plots``.
A figure the data cannot support (no ``clip`` parameter, no timestamps) becomes a note.

A multi-objective study (``hydra.sweeper.direction: [minimize, maximize]``) has no best trial:
its report gives the Pareto front instead (each of its trials, and a figure of every trial in
the plane of the first two objectives, ``report/pareto.png``), the knob effects per objective,
and leaves out what ranks trials by one value (the top trials, the transfer check, the figures
of the objective against the parameters, the best model's sample).

Gradient health reads the per-step decay factor f that the trainer fits to ||dL_t/dh_{t-j}|| ~
c * f**j where the flow is measured (halfway and at the end of a run: ``evals.decay_factor``),
at the trial's last measurement:

- f < 0.7: *vanishing*. The signal falls to 1% within ln(100) / -ln(f) steps (13 at f = 0.7),
  fewer than the shortest BPTT windows worth sweeping: longer dependencies are not learned, and a
  longer window buys nothing.
- f > 1.05: *exploding*. It grows 100x within ln(100) / ln(f) steps (94 at f = 1.05), inside a
  typical window: updates are dominated by a few large terms; clip by norm or lower the lr.
- otherwise *healthy*; when the 1% horizon exceeds the window k2, the truncation rather than the
  gradient limits how far back the model learns.

Every string that reaches the report passes through ``sweeps.storage.mask_url``: a storage URL
with a password (in an override, a failure message or ``best.yaml``) never appears unmasked.

Opening a sweep directory runs no code that its files name: the Answer section comes from the
function ``--answer module.function`` gives, else from the one ``study.yaml`` names only if it
is a verdict of ``analysis.answers`` (``analysis.answers.answer_of``).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from analysis.answers import Answer, StudyAnswer, answer_of, transfer_check
from analysis.load import SweepResults, load, single_objective
from analysis.names import names_section
from analysis.plots import PLOTS, front, minimizes, objectives, param_importances, pareto, ranked
from analysis.rungs import effects_view
from sweeps.outputs import read_best
from sweeps.storage import mask_url
from tbptt.errors import ConfigError, first_line
from tbptt.metrics import atomic_write_bytes

VANISHING_BELOW = 0.7
EXPLODING_ABOVE = 1.05
HORIZON_FRACTION = 0.01  # "not learned" once the gradient is below 1% of its size
TOP_N = 10
HEALTH_COLUMNS = {
    "objective": "value (pruned: best val loss)",
    "first": "factor (first measured)",
    "last": "factor (last measured)",
}
CAPTIONS = {
    "val_curves": "Validation loss of every trial (crosses: trials stopped early)",
    "objective_vs_params": "Objective vs learning rate and BPTT length",
    "clip_modes": "Objective per clip mode",
    "importances": "Parameter importances",
    "grad_norms": "Gradient norm before clipping (dashed: clip thresholds)",
    "grad_flow": "Gradient flow through time at the last measurement",
    "timeline": "Trials per worker over wall time",
}


# -- gradient health ----------------------------------------------------------------------


def horizon(factor: float) -> int:
    """Steps over which a gradient scaled by ``factor`` per step changes 100-fold."""
    return max(1, round(math.log(1 / HORIZON_FRACTION) / abs(math.log(factor))))


def gradient_health(factor: float, window: int | None = None) -> str:
    """A plain-language verdict on a per-step decay factor (thresholds: module docstring)."""
    if not math.isfinite(factor) or factor <= 0:
        return "not measured (no gradient-flow measurement)"
    if factor < VANISHING_BELOW:
        return (
            f"vanishing: the gradient shrinks ~{factor:.2f}x per step, so dependencies longer "
            f"than ~{horizon(factor)} steps are not learned"
        )
    if factor > EXPLODING_ABOVE:
        return (
            f"exploding: the gradient grows ~{factor:.2f}x per step (100x within "
            f"~{horizon(factor)} steps); clip by norm or lower the learning rate"
        )
    verdict = f"healthy: ~{factor:.2f}x per step"
    if window and (factor >= 1 or horizon(factor) > window):
        verdict += f"; the window k2 = {window}, not the gradient, limits how far back it learns"
    return verdict


def health_table(results: SweepResults) -> pd.DataFrame:
    """Per trial with a measured decay factor: the factor at its first and last measurement
    (halfway, end), its window k2 and the verdict on the last."""
    evals = results.evals
    if evals.empty or "decay_factor" not in evals:
        return pd.DataFrame()
    evals = evals.dropna(subset=["decay_factor"]).sort_values(["trial", "tokens"])
    if evals.empty:
        return pd.DataFrame()
    factors = evals.groupby("trial")["decay_factor"].agg(["first", "last"])
    window = results.steps.groupby("trial")["k2"].max() if "k2" in results.steps else None
    frame = objectives(results).set_index("number").join(factors, how="inner")
    frame.index.name = "number"  # a join on a RangeIndex (trials 0..n-1) drops the name
    frame["k2"] = frame.index.map(window) if window is not None else pd.NA
    frame["verdict"] = [
        gradient_health(f, None if pd.isna(k) else int(k))
        for f, k in zip(frame["last"], frame["k2"], strict=True)
    ]
    frame = frame.reset_index().rename(columns={"number": "trial"})
    columns = ["trial", "state", "objective", "first", "last", "k2", "verdict"]
    if results.multi_objective:  # no one objective (its values: the Pareto front's table)
        columns.remove("objective")
    return frame[columns].rename(columns=HEALTH_COLUMNS)


# -- tables -------------------------------------------------------------------------------


def top_trials(results: SweepResults, n: int = TOP_N) -> pd.DataFrame:
    """The ``n`` best complete trials: rank, trial, value, bits/char, parameters, tokens, time."""
    single_objective(results, "the top trials")
    best = ranked(results).head(n)
    trials = results.trials.set_index("number").loc[best["number"]]
    frame = pd.DataFrame({"rank": range(1, len(best) + 1), "trial": best["number"].to_numpy()})
    frame["value (nats/char)"] = best["value"].to_numpy()
    frame["bits/char"] = frame["value (nats/char)"] / math.log(2)
    for key in results.params():
        frame[key] = trials[f"param.{key}"].to_numpy()
    frame["tokens"] = trials["tokens"].to_numpy()
    frame["wall s"] = trials["wall_seconds"].to_numpy()
    if trials["phase"].isin(["candidate", "final", "transfer"]).any():  # which trained on longer
        frame.insert(2, "phase", trials["phase"].to_numpy())
    return frame


def pareto_table(results: SweepResults) -> pd.DataFrame:
    """A multi-objective study's Pareto front, best first on the first objective: trial, each
    objective's value (headed by its direction), parameters and the command that reruns it."""
    best = front(results)
    frame = pd.DataFrame({"trial": best["number"].to_numpy()})
    for column, label in zip(results.objective_columns(), results.objective_labels(),
                             strict=True):  # fmt: skip
        frame[label] = best[column].to_numpy()
    for key in results.params():
        frame[key] = best[f"param.{key}"].to_numpy()
    commands = _front_commands(results.path)
    rows = zip(frame["trial"], best["overrides"], strict=True)
    frame["command"] = [commands.get(int(n)) or _command(o) for n, o in rows]
    return frame


def _front_commands(sweep_dir: Path) -> dict[int, str]:
    """Trial -> command, as best.yaml's Pareto front gives them (they name the app)."""
    listed = (read_best(sweep_dir) or {}).get("pareto_front")
    if not isinstance(listed, list):
        return {}
    return {int(t["trial"]): str(t["command"]) for t in listed
            if isinstance(t, dict) and "trial" in t and "command" in t}  # fmt: skip


def _command(overrides: object) -> str:
    """The single run of a trial whose command no file records: tbptt.train's."""
    text = overrides if isinstance(overrides, str) else ""
    return f"python -m tbptt.train {text}".strip()


def knob_effects(results: SweepResults) -> pd.DataFrame:
    """One row per swept key: its type, the trials with a value it was sampled in, its effect on
    the objective (Spearman rank correlation, or the best and worst value's mean), the best
    trial's value and Optuna's importance. Trials with a value are the complete ones; pass
    ``analysis.rungs.effects_view(results).results`` to count pruned trials too, valued at the
    rung they reached."""
    single_objective(results, "knob effects")
    try:
        scores = param_importances(results)
    except ValueError:
        scores = {}
    valued = results.trials[results.trials["value"].notna()]
    best = valued.sort_values("value", ascending=minimizes(results), kind="stable")["number"]
    rows = []
    for key in results.params():
        done = _valued_with(results, key)
        best_value = (
            done.loc[best.iloc[0], "x"] if len(best) and best.iloc[0] in done.index else None
        )
        rows.append(
            {
                "knob": key,
                "type": "numeric" if _is_numeric(done["x"]) else "categorical",
                "trials": len(done),
                "effect": _effect(done, minimizes(results)),
                "best trial's value": best_value,
                "importance": scores.get(key),
            }
        )
    return pd.DataFrame(rows)


def _valued_with(results: SweepResults, key: str) -> pd.DataFrame:
    # Trials with a value in which `key` was sampled: x (its value) and y (the objective).
    trials = results.trials.set_index("number")
    done = trials[trials["value"].notna()]
    frame = pd.DataFrame({"x": done[f"param.{key}"], "y": done["value"]})
    return frame.dropna(subset=["x"])


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _effect(done: pd.DataFrame, minimize: bool) -> str:
    if _is_numeric(done["x"]):
        if len(done) < 3 or done["x"].nunique() < 2:
            return f"too few trials to correlate ({len(done)})"
        # Spearman: Pearson on ranks (no scipy needed).
        rho = float(done["x"].astype(float).rank().corr(done["y"].rank()))
        if not math.isfinite(rho):
            return "the objective does not vary among these trials"
        better = "lower" if (rho > 0) == minimize else "higher"
        strength = "no clear monotone effect" if abs(rho) < 0.3 else f"{better} values do better"
        return f"Spearman rho = {rho:+.2f}: {strength}"
    means = done.groupby(done["x"].astype(str))["y"].agg(["mean", "size"])
    if len(means) < 2:
        return "only one value among these trials"
    means = means.sort_values("mean", ascending=minimize)
    best, worst = means.iloc[0], means.iloc[-1]
    return (
        f"best mean: {best.name} ({best['mean']:.4g}, n={best['size']:.0f}); "
        f"worst: {worst.name} ({worst['mean']:.4g}, n={worst['size']:.0f})"
    )


def value_effects(results: SweepResults, key: str) -> pd.DataFrame:
    """Per value of a categorical key: trials, how many completed, mean and best objective (of
    the trials with a value: the complete ones, or every trial at a rung)."""
    single_objective(results, "value effects")
    trials = results.trials
    values = trials[f"param.{key}"].astype("string")
    minimize = minimizes(results)
    frame = pd.DataFrame({"value": values, "state": trials["state"].astype(str)})
    frame["objective"] = trials["value"]
    grouped = frame.dropna(subset=["value"]).groupby("value")
    table = pd.DataFrame(
        {
            "trials": grouped.size(),
            "complete": grouped["state"].agg(lambda s: int((s == "complete").sum())),
            "stopped or failed": grouped["state"].agg(lambda s: int((s != "complete").sum())),
            "mean objective": grouped["objective"].mean(),
            "best objective": grouped["objective"].agg("min" if minimize else "max"),
        }
    )
    return table.reset_index().sort_values("mean objective", ascending=minimize)


def stopped_trials(results: SweepResults) -> pd.DataFrame:
    """Trials that did not complete: why (pruned, diverged, failed, running) and at which token."""
    trials = results.trials
    frame = trials[trials["state"].astype(str) != "complete"]
    reason = frame["stop_reason"].astype("string")
    diverged = reason.str.contains(r"^(?:diverged|non-finite)", regex=True, na=False)
    state = frame["state"].astype(str)
    last_val = objectives(results).set_index("number")["objective"]
    return pd.DataFrame(
        {
            "trial": frame["number"],
            "state": state,
            "why": state.where(~diverged, "diverged").replace({"pruned": "pruned by the pruner"}),
            "at token": frame["stopped_at"].fillna(frame["tokens"]),
            "best val loss before the stop": frame["number"].map(last_val),
            "reason": reason,
        }
    )


# -- the document -------------------------------------------------------------------------


class Document:
    """Blocks rendered twice: Markdown (figures linked relative to ``base``) and HTML (figures
    inline as base64). Every string is passed through ``mask_url`` on its way in.

    Args:
        base: the directory ``report.md`` is written to.

    Example:
        >>> doc = Document(tmp_path); doc.heading("Best"); doc.code("python -m tbptt.train")
        >>> print(doc.markdown())
        ## Best
        <BLANKLINE>
        ```bash
        python -m tbptt.train
        ```
        <BLANKLINE>
    """

    def __init__(self, base: Path) -> None:
        self._base = base
        self._md: list[str] = []
        self._html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        text = mask_url(text)
        self._md.append(f"{'#' * level} {text}")
        self._html.append(f"<h{level}>{_inline(text)}</h{level}>")

    def text(self, text: str) -> None:
        text = mask_url(text)
        self._md.append(text)
        self._html.append(f"<p>{_inline(text)}</p>")

    def bullets(self, items: Iterable[str]) -> None:
        items = [mask_url(i) for i in items]
        self._md.append("\n".join(f"- {i}" for i in items))
        self._html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")

    def code(self, text: str) -> None:
        text = mask_url(text)
        self._md.append(f"```bash\n{text}\n```")
        self._html.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def table(self, frame: pd.DataFrame) -> None:
        cells = [[mask_url(_cell(v)) for v in row] for row in frame.itertuples(index=False)]
        header = [str(c) for c in frame.columns]
        self._md.append(_markdown_table(header, cells))
        self._html.append(_html_table(header, cells))

    def link(self, markdown_target: str, html_target: str, text: str) -> None:
        """A paragraph linking to ``markdown_target`` (in Markdown) or ``html_target``."""
        text = mask_url(text)
        self._md.append(f"[{text}]({markdown_target})")
        self._html.append(f'<p><a href="{html.escape(html_target)}">{_inline(text)}</a></p>')

    def image(self, path: Path, caption: str) -> None:
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        self._md.append(f"![{caption}]({path.relative_to(self._base).as_posix()})")
        self._html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def markdown(self) -> str:
        return "\n\n".join(self._md) + "\n"

    def html(self, title: str) -> str:
        body = "\n".join(self._html)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(mask_url(title))}</title><style>{_CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n"
        )


_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;"
    "padding:.8em;white-space:pre-wrap}figure{margin:1.5em 0}"
)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def _cell(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- sections -----------------------------------------------------------------------------


def _summary(doc: Document, results: SweepResults) -> None:
    states = results.trials["state"].astype(str).value_counts()
    counts = ", ".join(f"{states[s]} {s}" for s in states.index if states[s])
    doc.heading(f"Sweep report: {results.path.name}", level=1)
    doc.bullets(
        [
            f"directory: `{results.path}` ({results.kind})",
            f"{len(results.trials)} trials: {counts or 'none'}",
            _objective_line(results),
            f"swept: {', '.join(f'`{k}`' for k in results.params()) or 'nothing'}",
        ]
    )


def _objective_line(results: SweepResults) -> str:
    if not results.multi_objective:
        direction = "minimized" if minimizes(results) else "maximized"
        return f"objective: validation loss in nats/char, {direction}"
    named = ", ".join(f"`{c}` {d}d" for c, d in zip(results.objective_columns(),
                                                     results.directions, strict=True))  # fmt: skip
    return f"{len(results.directions)} objectives (a multi-objective study): {named}"


def _answer(doc: Document, study: StudyAnswer) -> None:
    if study.answer is None:
        return
    doc.heading("Answer")
    if study.question:
        doc.text(f"**Question:** {study.question}")
    doc.bullets(study.answer.findings)
    for caption, table in study.answer.tables.items():
        doc.heading(caption, level=3)
        doc.table(table)


def _transfer(doc: Document, results: SweepResults, answer: Answer | None) -> None:
    """The transfer check, unless the answer already holds it."""
    check = transfer_check(results)
    if check is None or (answer is not None and set(check.tables) <= set(answer.tables)):
        return
    doc.heading("Does the ranking hold at a longer budget?")
    doc.bullets(check.findings)
    for table in check.tables.values():
        doc.table(table)


def _best(doc: Document, results: SweepResults) -> None:
    doc.heading("Best configuration")
    best = _best_yaml(results.path)
    top = ranked(results)
    if best is None and top.empty:
        doc.text("No trial completed, so there is no best configuration yet.")
        return
    if best is None:
        number = int(top["number"].iloc[0])
        row = results.trials.set_index("number").loc[number]
        params = {k: row[f"param.{k}"] for k in results.params() if pd.notna(row[f"param.{k}"])}
        best = {"trial": number, "value": float(row["value"]), "params": params}
        best["command"] = _command(row["overrides"])
    final = best.get("final")
    if isinstance(final, dict):
        _final(doc, best, final)
    else:
        doc.text(
            f"Trial **{best['trial']}** reached **{best['value']:.4g}** nats/char "
            f"({best['value'] / math.log(2):.4g} bits/char). Reproduce it as a single run:"
        )
    doc.code(str(best["command"]))
    params = best.get("params") or {}
    if params:
        doc.table(pd.DataFrame({"parameter": list(params), "value": list(params.values())}))
    if best.get("storage"):
        doc.text(f"Study `{best.get('study_name')}` in `{best['storage']}`.")


def _final(doc: Document, best: dict, final: dict) -> None:
    """A budgeted sweep's answer: its final model, scored on the whole splits."""
    val, test = float(final.get("val_loss", math.nan)), float(final.get("test_loss", math.nan))
    reason = final.get("stopped")
    stopped = f" It stopped early ({reason}); its best weights stand." if reason else ""
    doc.text(
        f"The final model (trial **{best['trial']}**, trained on from trial "
        f"{final.get('continues')}) reached **{val:.4f}** nats/char on the whole validation "
        f"split and **{test:.4f}** nats/char ({test / math.log(2):.4f} bits/char) on the "
        f"held-out test split, after {final.get('tokens') or 0:,} characters and "
        f"{float(final.get('flops') or 0):.3g} FLOPs.{stopped} Its weights: "
        f"`{final.get('checkpoint')}`; sample from them with `{final.get('sample')}`. "
        "Reproduce it as a single run:"
    )


def _best_yaml(sweep_dir: Path) -> dict | None:
    doc = read_best(sweep_dir)
    return doc if doc is not None and "command" in doc and "value" in doc else None


def _pareto(doc: Document, results: SweepResults, figures: Path) -> None:
    """A multi-objective study's answer: its Pareto front, as a table and a figure."""
    doc.heading("Pareto front")
    table = pareto_table(results)
    if table.empty:
        doc.text("No trial completed, so there is no Pareto front yet.")
        return
    complete = int((results.trials["state"] == "complete").sum())
    doc.text(
        f"{len(table)} of {complete} complete trials are on the Pareto front: no other trial is "
        "as good on every objective and better on one. Best first on "
        f"`{results.objective_labels()[0]}`; each reruns as a single run with its command."
    )
    doc.table(table)
    doc.image(pareto(results, figures / "pareto.png"), _pareto_caption(results))
    best = read_best(results.path) or {}
    if best.get("storage"):
        doc.text(f"Study `{best.get('study_name')}` in `{best['storage']}`.")


def _pareto_caption(results: SweepResults) -> str:
    x, y, *rest = results.objective_labels()
    caption = f"Every complete trial by {x} and {y}; red, joined: the Pareto front"
    if rest:
        caption += (
            f" (the first two of {len(rest) + 2} objectives: the front is over all of them, "
            "so some of its trials look dominated here)"
        )
    return caption


def _top(doc: Document, results: SweepResults) -> None:
    top = top_trials(results)
    doc.heading(f"Top {TOP_N} trials")
    if top.empty:
        doc.text("No trial completed.")
        return
    doc.table(top)


def _knobs(doc: Document, results: SweepResults) -> None:
    doc.heading("What each knob did")
    if not results.params():
        doc.text("Nothing was swept.")
        return
    if results.multi_objective:
        _knobs_per_objective(doc, results)
        return
    if len(results.search_only().trials) < len(results.trials):
        doc.text("Search trials only: candidates, final and transfer runs are left out (they "
                 "repeat their parents' parameters at more compute).")  # fmt: skip
        results = results.search_only()
    view = effects_view(results)
    doc.text(f"Computed from {view.note}. {EFFECTS_NOTE} {_importance_note(view.results)}")
    _effect_tables(doc, view.results, level=3)


EFFECTS_NOTE = (
    "Effect on the objective: Spearman rank correlation for numeric knobs, mean objective per "
    "value for categorical ones."
)


def _knobs_per_objective(doc: Document, results: SweepResults) -> None:
    """A multi-objective study's knob effects: one set of tables per objective."""
    complete = int((results.trials["state"] == "complete").sum())
    doc.text(f"Each objective on its own, computed from the {complete} complete trials. "
             f"{EFFECTS_NOTE}")  # fmt: skip
    for label, view in zip(results.objective_labels(), results.objective_views(), strict=True):
        doc.heading(f"Objective `{label}`", level=3)
        doc.text(_importance_note(view))
        _effect_tables(doc, view, level=4)


def _importance_note(results: SweepResults) -> str:
    try:
        param_importances(results)
    except ValueError as why:
        return f"No importances: {why}."
    return "Importance: Optuna's PED-ANOVA on the same trials (sums to 1)."


def _effect_tables(doc: Document, results: SweepResults, level: int) -> None:
    """The knob effects of a single-objective ``results``, and each categorical knob's
    values."""
    effects = knob_effects(results)
    doc.table(effects)
    for key in effects.loc[effects["type"] == "categorical", "knob"]:
        doc.heading(f"`{key}` by value", level=level)
        doc.table(value_effects(results, key))


def _stopped(doc: Document, results: SweepResults) -> None:
    doc.heading("Stopped, diverged and failed trials")
    stopped = stopped_trials(results)
    if stopped.empty:
        doc.text("Every trial completed its budget.")
        return
    counts = stopped["why"].value_counts()
    doc.text(
        "; ".join(f"{n} {why}" for why, n in counts.items())
        + ". `at token`: the training tokens reached when the trial stopped."
    )
    doc.table(stopped)


def _health(doc: Document, results: SweepResults) -> None:
    doc.heading("Gradient health")
    table = health_table(results)
    if table.empty:
        doc.text("No decay factor was measured (`trainer.grad_flow=false`, or no evaluation).")
        return
    verdicts = table["verdict"].str.split(":").str[0].value_counts()
    doc.text(
        "Per-step factor f of `||dL_t/dh_{t-j}|| ~ c * f^j` at the last measurement: "
        f"f < {VANISHING_BELOW} vanishing, f > {EXPLODING_ABOVE} exploding, else healthy. "
        + ", ".join(f"{n} {v}" for v, n in verdicts.items())
        + "."
    )
    doc.table(table)


SEARCH_PLOTS = ("objective_vs_params", "clip_modes", "importances")  # knob effects: search only
ONE_OBJECTIVE_PLOTS = ("objective_vs_params", "clip_modes", "importances")


def _figures(doc: Document, results: SweepResults, figures: Path) -> None:
    doc.heading("Figures")
    plots = PLOTS
    if results.multi_objective:
        plots = {k: v for k, v in PLOTS.items() if k not in ONE_OBJECTIVE_PLOTS}
        left_out = ", ".join(f"*{CAPTIONS[k]}*" for k in ONE_OBJECTIVE_PLOTS)
        doc.text(f"{left_out}: drawn for one objective, not for a multi-objective study (its "
                 "Pareto front is drawn above).")  # fmt: skip
    for name, draw in plots.items():
        shown = results.search_only() if name in SEARCH_PLOTS else results
        try:
            path = draw(shown, figures / f"{name}.png")
        except ValueError as why:
            doc.text(f"*{CAPTIONS[name]}*: not drawn: {why}.")
            continue
        doc.image(path, CAPTIONS[name])


# -- entry points -------------------------------------------------------------------------


Section = Callable[[Document, SweepResults], None]


def write_report(
    results_or_path: SweepResults | str | Path,
    out_dir: str | Path | None = None,
    answer: str | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and ``report/*.png`` into ``out_dir`` (default: the
    sweep directory); return the path of ``report.md``. ``answer``: the verdict function
    (``module.function``, imported), else the one ``study.yaml`` names if it is one of
    ``analysis.answers.VERDICTS`` (see ``analysis.answers.answer_of``)."""
    results = (
        results_or_path if isinstance(results_or_path, SweepResults) else load(results_or_path)
    )
    out = Path(out_dir) if out_dir is not None else results.path
    out.mkdir(parents=True, exist_ok=True)
    doc = Document(out)
    study = answer_of(results, answer)
    _summary(doc, results)
    _answer(doc, study)
    if results.multi_objective:  # no best trial: the front; nothing that ranks by one value
        _pareto(doc, results, out / "report")
        sections: tuple[Section, ...] = (_knobs, _stopped, _health)
    else:
        _best(doc, results)
        _transfer(doc, results, study.answer)
        sections = (_top, _knobs, _stopped, _health, names_section)
    for section in sections:
        section(doc, results)
    _figures(doc, results, out / "report")
    (out / "report.html").write_text(doc.html(f"Sweep report: {results.path.name}"))
    report = out / "report.md"
    report.write_text(doc.markdown())
    _write_answer(out, results, study)
    return report


ANSWER_FILE = "answer.json"  # what the studies' index (analysis/studies.py) reads


def _write_answer(out: Path, results: SweepResults, study: StudyAnswer) -> None:
    states = results.trials["state"].astype(str).value_counts()
    function = mask_url(study.function) if study.function else None
    doc = {
        "study": results.path.name,
        "question": study.question,
        "verdict": {"function": function, "imported": study.imported},
        "findings": [mask_url(f) for f in study.answer.findings] if study.answer else [],
        "trials": {str(k): int(v) for k, v in states.items() if v},
        "report": "report.md",
    }
    atomic_write_bytes(out / ANSWER_FILE, json.dumps(doc, indent=2).encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write report.md, report.html and report/*.png for a sweep directory.",
    )
    parser.add_argument("sweep_dir", help="a sweep or Hydra multirun directory")
    parser.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR)")
    parser.add_argument(
        "--answer",
        default=None,
        metavar="MODULE.FUNCTION",
        help="the verdict function for the Answer section, imported (default: the one the "
        "sweep's study.yaml names, if it is one of analysis.answers'; no other is imported)",
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out, args.answer)
    except (ConfigError, OSError) as err:
        print(f"error: {mask_url(first_line(err))}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
