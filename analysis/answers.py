"""Each study's answer to its question, computed from its results.

A study states its question and names the function that answers it next to its config
(``conf/sweep/lr_range.yaml``: ``hydra.sweeper.question`` and ``hydra.sweeper.answer:
analysis.answers.lr_range``); the sweeper keeps both in the sweep directory's ``study.yaml``, and
the report puts what the function returns at its top (``answer_of``). A verdict function takes
the ``SweepResults`` and returns an ``Answer``: plain sentences a user can act on, each with the
numbers it rests on, and the tables behind them. Any sweep can name its own function.

A sweep directory is data, so opening one runs no code it names: of the names ``study.yaml``
records, the report calls only this module's verdicts (``VERDICTS``). Any other it leaves
unimported, saying how to run it (``python -m analysis.report DIR --answer module.function``):
the command line is where a function is chosen.

The yardsticks, in nats per character:

- *chance*: ln(V) for a vocabulary of V characters (the run's ``result.json`` records V): what a
  model that learnt nothing scores. A run that ends above it *fails*.
- A comparison of two arms ("random BPTT beats fixed") pairs their trials by seed and reports
  the mean difference with a bootstrap 95% interval over the seeds (``compare``). With fewer
  than ``MIN_SEEDS`` seeds it says so; when the interval covers 0 it says "no clear
  difference": the seeds disagree more than the arms do. With 3 seeds the interval is the range
  of the seeds' own differences, so "clear" means every seed agrees on the sign.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.load import SweepResults
from sweeps.config import answer_function
from sweeps.outputs import read_study_file
from tbptt import contract
from tbptt.errors import summary

MIN_SEEDS = 3  # a comparison over fewer seeds cannot tell an effect from the seed's spread
BOOTSTRAP_SAMPLES = 10_000
CLIMB = 0.05  # nats/char: a final loss this far above the run's best is a climb, not noise
SLOW_SHARE = 0.5  # "too slow": closed less than this share of the gap from chance to the best
DIVERGED = r"^(?:diverged|non-finite)"


@dataclass
class Answer:
    """What a study found: ``findings`` are sentences with their numbers, ``tables`` the
    evidence (caption -> table)."""

    findings: list[str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


Verdict = Callable[[SweepResults], Answer]


@dataclass(frozen=True, kw_only=True)
class StudyAnswer:
    """The study's question and its answer; ``function``: the verdict function named (None:
    none), ``imported``: whether it was imported and called."""

    question: str | None
    answer: Answer | None
    function: str | None = None
    imported: bool = False


def answer_of(results: SweepResults, answer: str | None = None) -> StudyAnswer:
    """The study's question (``study.yaml``) and its answer: from ``answer`` (``module.function``,
    given on the command line: imported, ``ConfigError`` if it cannot be), else from the function
    ``study.yaml`` names, when that is one of ``VERDICTS``; any other is not imported."""
    about = read_study_file(results.path)
    question, named = about.get("question"), about.get("answer")
    if answer is not None:
        verdict, path = answer_function(answer, key="--answer"), answer
    elif not named:
        return StudyAnswer(question=question, answer=None)
    else:
        path = str(named)
        if path not in VERDICTS:
            return StudyAnswer(
                question=question, answer=_not_imported(path, results), function=path
            )
        verdict = VERDICTS[path]
    try:
        found = verdict(results)
    except Exception as err:  # a broken verdict costs its section, not the whole report
        found = Answer([f"The answer could not be computed ({path}): {summary(err)}."])
    return StudyAnswer(question=question, answer=found, function=path, imported=True)


def _not_imported(path: str, results: SweepResults) -> Answer:
    ours = ", ".join(sorted(name.rpartition(".")[2] for name in VERDICTS))
    command = (
        f"python -m analysis.report {shlex.quote(str(results.path))} --answer {shlex.quote(path)}"
    )
    return Answer(
        [
            f"The study names its verdict function `{path}`, which is not one of the verdicts "
            f"of {__name__} ({ours}): it was not imported. To use it, run `{command}`."
        ]
    )


# -- what each trial did ------------------------------------------------------------------


def outcomes(results: SweepResults) -> pd.DataFrame:
    """One row per search trial: its swept values (by key), ``state``, ``value``, ``best`` and
    ``final`` validation loss (NaN: never evaluated), ``diverged`` and ``evals``."""
    results = results.search_only()
    trials = results.trials.set_index("number")
    frame = pd.DataFrame(index=trials.index)
    for key in results.params():
        frame[key] = trials[f"param.{key}"]
    frame["state"] = trials["state"].astype(str)
    frame["value"] = trials["value"]
    curves = results.evals.sort_values(["trial", "tokens"]).groupby("trial")["val_loss"]
    frame["best"] = curves.min().reindex(frame.index)
    frame["final"] = curves.last().reindex(frame.index)
    frame["evals"] = curves.size().reindex(frame.index).fillna(0).astype(int)
    reason = trials["stop_reason"].astype("string")
    frame["diverged"] = reason.str.contains(DIVERGED, regex=True, na=False).astype(bool)
    frame["stop_reason"] = reason
    return frame


def chance(results: SweepResults) -> float:
    """ln(V) nats/char, V from the first run that recorded its vocabulary; NaN when none did."""
    for job_dir in results.trials["job_dir"].dropna():
        result = contract.read_result(str(job_dir))
        size = result.vocab_size if result else None
        if isinstance(size, int) and size > 1:
            return math.log(size)
    return math.nan


def failed(frame: pd.DataFrame, chance_loss: float) -> pd.Series:
    """Runs that diverged, never evaluated, or ended above chance."""
    above = frame["final"] > chance_loss if math.isfinite(chance_loss) else False
    return frame["diverged"] | frame["final"].isna() | above


# -- what a verdict answers from ----------------------------------------------------------

FINISHED = ("complete", "pruned")  # a failed trial raised an error: it says nothing of the knobs


def answers_about(*keys: str) -> Callable[[Verdict], Verdict]:
    """Mark a verdict as answering a question about the swept ``keys``. It is given only the
    trials that finished (complete or pruned) and sampled every key, and the trials left out
    (running, failed, without a key) are said after its answer; a sweep with none says why
    there is nothing to answer instead (no trial, a key not swept, none finished, all failed).
    A failed trial is left out, not counted as a failure of its settings: it raised (a killed
    worker, a bug), and a retry of it with the same settings may stand beside it."""

    def mark(verdict: Verdict) -> Verdict:
        @functools.wraps(verdict)
        def answer(results: SweepResults) -> Answer:
            usable = _usable(results, keys)
            refused = _refusal(results, keys, usable)
            if refused is not None:
                return Answer([refused])
            found = verdict(_subset(results, usable))
            found.findings += _left_out(results, keys, usable)
            return found

        return answer

    return mark


def _usable(results: SweepResults, keys: Sequence[str]) -> pd.Series:
    trials = results.trials
    usable = trials["state"].astype(str).isin(FINISHED)
    for key in keys:
        column = f"param.{key}"
        usable &= trials[column].notna() if column in trials else False
    return usable.astype(bool)


def _refusal(results: SweepResults, keys: Sequence[str], usable: pd.Series) -> str | None:
    """Why there is nothing to answer from, or None."""
    trials, states = results.trials, results.trials["state"].astype(str)
    missing = [k for k in keys if f"param.{k}" not in trials or trials[f"param.{k}"].isna().all()]
    if trials.empty:
        return "No trial in this sweep yet: nothing to answer."
    if missing:
        swept = ", ".join(results.params()) or "nothing"
        return f"Nothing to answer: {', '.join(missing)} not swept (this sweep swept {swept})."
    if usable.any():
        return None
    if not states.isin([*FINISHED, "fail"]).any():
        counts = ", ".join(f"{n} {s}" for s, n in states.value_counts().items() if n)
        return f"No trial has finished yet ({counts}): nothing to answer yet."
    if states.isin(FINISHED).any():
        return f"No finished trial sampled {', '.join(keys)}: nothing to answer."
    reasons = trials.loc[states == "fail", "stop_reason"].dropna()
    first = f"; the first said: {reasons.iloc[0]}" if len(reasons) else ""
    failures = int((states == "fail").sum())
    return f"Every finished trial failed ({failures}): nothing to answer{first}."


def _left_out(results: SweepResults, keys: Sequence[str], usable: pd.Series) -> list[str]:
    left = results.trials[~usable]
    if left.empty:
        return []
    states = left["state"].astype(str)
    states = states.replace({"fail": "failed"})
    parts = [f"{n} {s}" for s, n in states[~states.isin(FINISHED)].value_counts().items() if n]
    without = int(states.isin(FINISHED).sum())
    if without:
        parts.append(f"{without} without {' or '.join(keys)}")
    numbers = listing(sorted(int(n) for n in left["number"]))
    return [f"Left out of this answer: {', '.join(parts)} (trials {numbers})."]


def _subset(results: SweepResults, usable: pd.Series) -> SweepResults:
    numbers = set(results.trials.loc[usable, "number"])

    def rows(table: pd.DataFrame) -> pd.DataFrame:
        return table[table["trial"].isin(numbers)] if "trial" in table else table

    return replace(
        results,
        trials=results.trials[usable].reset_index(drop=True),
        steps=rows(results.steps),
        evals=rows(results.evals),
        grad_flow=rows(results.grad_flow),
        study=None,  # the verdicts read the tables
    )


# -- comparisons over seeds ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Difference:
    """``b - a`` in nats/char over ``n`` seeds: its mean and bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def clear(self) -> bool:
        return self.n >= MIN_SEEDS and (self.low > 0 or self.high < 0)


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Difference:
    """Mean of ``b[i] - a[i]`` (one pair per seed) and the 2.5 / 97.5 percentiles of the mean
    over bootstrap resamples of the pairs (seeded, so a report reads the same every time)."""
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return Difference(mean=math.nan, low=math.nan, high=math.nan, n=0)
    rng = np.random.default_rng(seed)
    means = rng.choice(diffs, size=(BOOTSTRAP_SAMPLES, len(diffs))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Difference(mean=float(diffs.mean()), low=float(low), high=float(high), n=len(diffs))


def compare(frame: pd.DataFrame, arm: pd.Series, a: str, b: str, pair_on: str = "seed") -> str:
    """A sentence comparing arm ``b`` with arm ``a`` (labels of ``arm``) on ``value`` (a
    failed run counts as its final loss), paired by ``pair_on``; lower is better."""
    score = frame["value"].fillna(frame["final"])
    pair = frame[pair_on] if pair_on in frame else 0  # not swept: one pair, too few to tell
    pairs = pd.DataFrame({"arm": arm, "pair": pair, "score": score})
    table = pairs[pairs["arm"].isin([a, b])].pivot_table(
        index="pair", columns="arm", values="score", aggfunc="mean"
    )
    if a not in table or b not in table:
        return f"{b} vs {a}: not both run to a finite loss"
    table = table.dropna()
    if table.empty:
        return f"{b} vs {a}: no {pair_on} ran both to a finite loss"
    diff = paired_difference(table[a].to_numpy(), table[b].to_numpy())
    return difference_text(a, b, diff, table[a].mean(), table[b].mean())


def difference_text(a: str, b: str, diff: Difference, mean_a: float, mean_b: float) -> str:
    numbers = (
        f"{b} {mean_b:.3f} vs {a} {mean_a:.3f} nats/char, difference {diff.mean:+.3f} "
        f"[95% interval {diff.low:+.3f}, {diff.high:+.3f}] over {diff.n} seeds"
    )
    if diff.n < MIN_SEEDS:
        return f"too few seeds to tell ({diff.n} < {MIN_SEEDS}): {numbers}"
    if not diff.clear:
        return f"no clear difference: {numbers}; the seeds' spread covers the effect"
    verdict = "better" if diff.mean < 0 else "worse"
    return f"{b} is {verdict} than {a}: {numbers}"


# -- shared wording -----------------------------------------------------------------------


def number(value: object) -> str:
    """A swept value as a user would write it: 3 significant digits (0.0003, 1.29, 4.82)."""
    if isinstance(value, float | np.floating):
        return f"{float(value):.3g}"
    return str(value)


def listing(values: Iterable[object]) -> str:
    return ", ".join(number(v) for v in values)


def _range(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return number(low) if low == high else f"{number(low)}-{number(high)}"


def span(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "no evaluation"
    low, high = min(finite), max(finite)
    return f"{low:.2f}" if math.isclose(low, high, abs_tol=5e-3) else f"{low:.2f}-{high:.2f}"


def run_setting(results: SweepResults, key: str) -> object:
    """A fixed setting (``data.delay``) as the first run's saved config has it; None if absent.
    Read as plain YAML: an interpolation in a received file (``${oc.env:...}``) stays text,
    so nothing of this machine (an environment variable) reaches the report."""
    for job_dir in results.trials["job_dir"].dropna():
        path = Path(str(job_dir)) / ".hydra" / "config.yaml"
        if path.is_file():
            node: object = yaml.safe_load(path.read_text())
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            return node
    return None


# -- the transfer check (any sweep) -------------------------------------------------------


def transfer_check(results: SweepResults) -> Answer | None:
    """Did the search's ranking hold at a longer budget? Transfer runs (``hydra.sweeper.
    transfer``) or a budgeted sweep's candidates, against the search trials they continue.
    None without them, and in a multi-objective study (it ranks by one objective)."""
    if results.multi_objective:
        return None
    trials = results.trials.set_index("number")
    longer = trials[trials["phase"].isin(["transfer", "candidate"])]
    longer = longer[longer["parent"].notna()]
    if len(longer) < 2:
        return None
    candidates = (longer["phase"] == "candidate").all()
    long_loss = longer["full_val_loss"] if candidates else longer["value"]
    parents = longer["parent"].astype(int)
    table = pd.DataFrame(
        {
            "trial": parents.to_numpy(),
            "longer run": longer.index.to_numpy(),
            "short": trials.loc[parents, "value"].to_numpy(),
            "long": long_loss.to_numpy(dtype=float),
            "short tokens": trials.loc[parents, "tokens"].to_numpy(),
            "long tokens": longer["tokens"].to_numpy(),
        }
    )
    table["configuration"] = [
        " ".join(f"{k}={number(v)}" for k, v in _params(trials, p).items()) for p in parents
    ]
    table = table.sort_values("short", kind="stable").reset_index(drop=True)
    table["short rank"] = range(1, len(table) + 1)
    table["long rank"] = table["long"].rank(method="min", na_option="bottom").astype(int)
    findings = [_transfer_sentence(table, candidates), *_worse_when_longer(table)]
    return Answer(findings, {"Transfer check": table})


def _worse_when_longer(table: pd.DataFrame) -> list[str]:
    """Configurations that ended worse after more training: they climb in longer runs."""
    worse = table[table["long"] > table["short"]]
    return [
        f"{row['configuration']} ended worse after the longer training ({row['short']:.3f} -> "
        f"{row['long']:.3f} nats/char): its loss climbs in longer runs."
        for _, row in worse.iterrows()
    ]


def _params(trials: pd.DataFrame, number: int) -> dict[str, object]:
    row = trials.loc[number]
    keys = [c for c in trials.columns if c.startswith("param.")]
    return {c.removeprefix("param."): row[c] for c in keys if pd.notna(row[c])}


def _transfer_sentence(table: pd.DataFrame, candidates: bool) -> str:
    factor = float(np.nanmedian(table["long tokens"] / table["short tokens"]))
    what = "whole validation split" if candidates else "objective"
    head = (
        f"Trained on to {factor:.1f}x the search budget ({what}), the top {len(table)} "
        "configurations"
    )
    rho = float(table["short"].rank().corr(table["long"].rank())) if len(table) >= 3 else None
    corr = f" (Spearman rho = {rho:+.2f} over {len(table)})" if rho is not None else ""
    first = table.iloc[0]
    winner = table.sort_values("long", kind="stable").iloc[0]
    if winner["trial"] == first["trial"]:
        return (
            f"{head} kept their winner{corr}: {first['configuration']} "
            f"({first['short']:.3f} -> {first['long']:.3f} nats/char)."
        )
    return (
        f"{head} changed winner{corr}: {winner['configuration']} reached {winner['long']:.3f} "
        f"nats/char against {first['long']:.3f} for the search's winner "
        f"{first['configuration']}: short runs mislead here; compare at the longer budget."
    )


# -- the ready-made studies ---------------------------------------------------------------


LR_CLASSES = ("too slow", "learns", "unstable", "diverged")


def lr_classes(frame: pd.DataFrame, chance_loss: float) -> pd.Series:
    """learns / too slow / unstable / diverged per run (thresholds: the module constants)."""
    ok = ~frame["diverged"] & frame["final"].notna()
    best = frame.loc[ok, "final"].min()
    gap = chance_loss - best
    climbed = (frame["final"] - frame["best"] > CLIMB) | (frame["final"] > chance_loss)
    slow = (chance_loss - frame["final"]) < SLOW_SHARE * gap
    classes = np.select(
        [frame["diverged"] | frame["final"].isna(), climbed, slow],
        ["diverged", "unstable", "too slow"],
        default="learns",
    )
    return pd.Series(classes, index=frame.index)


@answers_about("optim.lr")
def lr_range(results: SweepResults) -> Answer:
    """Which learning rates learn, which are too slow, which climb or diverge; the best."""
    frame = outcomes(results).sort_values("optim.lr")
    chance_loss = chance(results)
    frame["class"] = lr_classes(frame, chance_loss)
    table = frame[["optim.lr", "class", "best", "final", "value", "stop_reason"]]
    findings = [_lr_sentence(frame), *_lr_best(frame, chance_loss, results)]
    extra = transfer_check(results)
    tables = {"Learning rates": table.reset_index(names="trial")}
    if extra is not None:
        findings += extra.findings
        tables.update(extra.tables)
    return Answer(findings, tables)


def _lr_sentence(frame: pd.DataFrame) -> str:
    rates, classes = list(frame["optim.lr"]), list(frame["class"])
    learns = [i for i, c in enumerate(classes) if c == "learns"]
    if not learns:
        return "No learning rate learns: " + _by_class(rates, classes) + "."
    lo, hi = learns[0], learns[-1]
    if len(learns) != hi - lo + 1:  # not one range: say each class's rates
        return "Learning rates by outcome: " + _by_class(rates, classes) + "."
    parts = [f"learning rates {number(rates[lo])}..{number(rates[hi])} learn"]
    if lo > 0:
        parts.append(f"below {number(rates[lo])} {_classes_text(classes[:lo])}")
    if hi < len(rates) - 1:
        parts.append(f"above {number(rates[hi])} {_classes_text(classes[hi + 1 :])}")
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def _classes_text(classes: Sequence[str]) -> str:
    counts = pd.Series(classes).value_counts()
    return " or ".join(c for c in LR_CLASSES if c in counts)


def _by_class(rates: Sequence[object], classes: Sequence[str]) -> str:
    groups = {c: [r for r, k in zip(rates, classes, strict=True) if k == c] for c in LR_CLASSES}
    return "; ".join(f"{c}: {listing(rs)}" for c, rs in groups.items() if rs)


def _lr_best(frame: pd.DataFrame, chance_loss: float, results: SweepResults) -> list[str]:
    done = frame[frame["value"].notna()]
    if done.empty:
        return []
    best = done.sort_values("value").iloc[0]
    tokens = results.trials.set_index("number").loc[done.index, "tokens"].max()
    trained = f" after {tokens:,} characters" if pd.notna(tokens) else ""
    known = (
        f"ln V = {chance_loss:.2f}"
        if math.isfinite(chance_loss)
        else "unknown: no run recorded its vocabulary size"
    )
    classes = (
        f"too slow: closed less than {SLOW_SHARE:.0%} of the gap from chance "
        f"({known}) to the best rate's final loss; unstable: the final loss is "
        f"over {CLIMB} above the run's best, or above chance"
    )
    return [
        f"Best: {number(best['optim.lr'])} ({best['value']:.3f} nats/char{trained}). "
        f"Classes: {classes}."
    ]


@answers_about("bptt.length")
def bptt_length(results: SweepResults) -> Answer:
    """For each learning rate (and any other swept knob) and clip mode: which BPTT windows
    fail, and whether clipping rescues them."""
    frame = outcomes(results)
    frame["fails"] = failed(frame, chance(results))
    if "clip" not in frame:  # not swept: one mode, as configured
        frame["clip"] = str(run_setting(results, "clip._target_")).rpartition(".")[2]
    others = [k for k in results.params() if k not in ("bptt.length", "clip", "seed")]
    table = _cells(frame, [*others, "clip", "bptt.length"])
    findings = []
    for key, group in table.groupby(others, sort=True) if others else [((), table)]:
        where = " ".join(f"{k}={number(v)}" for k, v in zip(others, _tuple(key), strict=True))
        findings.append(_rescue_sentence(group, where))
    return Answer(findings, {"Windows by clip mode": table})


def _tuple(key: object) -> tuple[object, ...]:
    return key if isinstance(key, tuple) else (key,)


def _cells(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell of ``keys``: runs, how many failed, the mean and range of their final loss."""
    grouped = frame.groupby(keys, sort=True, dropna=False)
    return pd.DataFrame(
        {
            "runs": grouped.size(),
            "failed": grouped["fails"].sum().astype(int),
            "mean final": grouped["final"].mean(),
            "min final": grouped["final"].min(),
            "max final": grouped["final"].max(),
        }
    ).reset_index()


def _failing(cells: pd.DataFrame) -> str:
    parts = []
    for _, cell in cells.iterrows():
        seeds = (
            "every run" if cell["failed"] == cell["runs"] else f"{cell['failed']}/{cell['runs']}"
        )
        parts.append(f"{number(cell['bptt.length'])} ({seeds})")
    return ", ".join(parts)


def _rescue_sentence(group: pd.DataFrame, where: str) -> str:
    at = f"At {where}" if where else "Here"
    plain = group[group["clip"] == "none"]
    clipped = group[group["clip"] != "none"]
    bad = plain[plain["failed"] > 0]
    if plain.empty:
        return f"{at} no run went unclipped: nothing to rescue."
    if bad.empty:
        return (
            f"{at} every window learns without clipping (final "
            f"{span(list(plain['mean final']))} nats/char)."
        )
    sentence = f"{at} without clipping, windows {_failing(bad)} fail (diverged or above chance)"
    good = plain[plain["failed"] == 0]
    if not good.empty:
        sentence += f" while {listing(good['bptt.length'])} learn"
    for mode, runs in clipped.groupby("clip"):
        fixed = runs[runs["bptt.length"].isin(bad["bptt.length"]) & (runs["failed"] == 0)]
        still = runs[runs["bptt.length"].isin(bad["bptt.length"]) & (runs["failed"] > 0)]
        if not fixed.empty:
            sentence += (
                f"; {mode} clipping rescues {listing(fixed['bptt.length'])} "
                f"({span(list(fixed['mean final']))} nats/char)"
            )
        if not still.empty:
            sentence += f"; with {mode} clipping {_failing(still)} still fail"
    return sentence + "."


def clip_arm(frame: pd.DataFrame) -> pd.Series:
    """The clipping a run used: its clip mode, or "error clipping alone" (clip=none with
    clip.error_clip > 0)."""
    arm = frame["clip"].astype("string").fillna("none")
    if "clip.error_clip" in frame:
        alone = (arm == "none") & (frame["clip.error_clip"].fillna(0) > 0)
        arm = arm.mask(alone, "error clipping alone")
    return arm.replace({"none": "no clipping", "norm": "norm clipping", "value": "value clipping"})


THRESHOLDS = {"norm clipping": "clip.max_norm", "value clipping": "clip.clip_value",
              "error clipping alone": "clip.error_clip"}  # fmt: skip


@answers_about("clip")
def clipping(results: SweepResults) -> Answer:
    """Which clipping, at which threshold, lets the run learn; how the working modes compare."""
    frame = outcomes(results)
    chance_loss = chance(results)
    frame["learns"] = (frame["state"] == "complete") & ~failed(frame, chance_loss)
    frame["arm"] = clip_arm(frame)
    findings = [
        _arm_sentence(frame[frame["arm"] == arm], arm) for arm in sorted(frame["arm"].unique())
    ]
    working = (
        frame[frame["learns"]].groupby("arm")["value"].agg(["mean", "size"]).sort_values("mean")
    )
    if len(working) >= 2:
        a, b = working.index[0], working.index[1]
        diff = unpaired_difference(
            frame.loc[frame["learns"] & (frame["arm"] == a), "value"].to_numpy(),
            frame.loc[frame["learns"] & (frame["arm"] == b), "value"].to_numpy(),
        )
        findings.append(
            "Among runs that learn: "
            + difference_text(a, b, diff, working.loc[a, "mean"], working.loc[b, "mean"]).replace(
                "seeds", "runs"
            )
            + "."
        )
    keys = ["arm", *[k for k in THRESHOLDS.values() if k in frame], "state", "final", "value"]
    table = frame.reset_index(names="trial")[["trial", *keys, "learns"]].sort_values(
        ["arm", "value"]
    )
    return Answer(findings, {"Runs by clipping": table})


def _arm_sentence(runs: pd.DataFrame, arm: str) -> str:
    learned = runs[runs["learns"]]
    head = f"{arm[0].upper()}{arm[1:]}: {len(learned)}/{len(runs)} runs learn"
    key = THRESHOLDS.get(arm)
    if learned.empty or key is None or key not in runs:
        return head + "."
    best = learned.sort_values("value").iloc[0]
    sentence = (
        f"{head}, at {key} {_range(list(learned[key].astype(float)))}"
        f" (best {best['value']:.3f} nats/char at {number(best[key])})"
    )
    failing = runs[~runs["learns"]]
    if not failing.empty:
        sentence += f"; fail at {key} {listing(sorted(failing[key].astype(float)))}"
    return sentence + "."


def unpaired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Difference:
    """Mean(b) - mean(a) with a bootstrap 95% interval resampling each arm on its own;
    ``n`` is the smaller arm's size."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        return Difference(mean=math.nan, low=math.nan, high=math.nan, n=0)
    rng = np.random.default_rng(seed)
    means_a = rng.choice(xa, size=(BOOTSTRAP_SAMPLES, len(xa))).mean(axis=1)
    means_b = rng.choice(xb, size=(BOOTSTRAP_SAMPLES, len(xb))).mean(axis=1)
    low, high = np.percentile(means_b - means_a, [2.5, 97.5])
    mean, n = float(xb.mean() - xa.mean()), min(len(xa), len(xb))
    return Difference(mean=mean, low=float(low), high=float(high), n=n)


@answers_about("bptt")
def random_bptt(results: SweepResults) -> Answer:
    """Randomized BPTT length (with and without its lr rescaling) against a fixed one, paired
    by seed."""
    frame = outcomes(results)
    arm = frame["bptt"].astype(str)
    if "bptt.scale_lr" in frame:
        scaled = frame["bptt.scale_lr"].astype("boolean").fillna(False)
        arm = arm.mask(arm == "random", np.where(scaled, "random, lr rescaled", "random"))
    findings = [compare(frame, arm, "fixed", b) + "." for b in sorted(set(arm) - {"fixed"})]
    findings = findings or ["nothing to compare: only the fixed arm ran."]
    table = _arm_table(frame, arm)
    return Answer([f[0].upper() + f[1:] for f in findings], {"Objective per arm and seed": table})


def _arm_table(frame: pd.DataFrame, arm: pd.Series) -> pd.DataFrame:
    score = frame["value"].fillna(frame["final"])
    seed = frame["seed"] if "seed" in frame else 0
    table = pd.DataFrame({"arm": arm, "seed": seed, "objective": score})
    return table.pivot_table(index="arm", columns="seed", values="objective").reset_index()


@answers_about("bptt.k1")
def k1_k2(results: SweepResults) -> Answer:
    """Is backpropagating further than you update (k2 > k1) worth it at equal compute? Each
    (k1, k2) against (k1, k1), the same updates, and against (k2, k2), the same reach."""
    frame = outcomes(results)
    k1 = frame["bptt.k1"].astype(int)
    k2 = k1 + _overlap(frame)
    arm = pd.Series([f"({a}, {b})" for a, b in zip(k1, k2, strict=True)], frame.index)
    pairs = sorted({(a, b) for a, b in zip(k1, k2, strict=True) if b > a})
    findings = [compare(frame, arm, f"({a}, {a})", f"({a}, {b})") for a, b in pairs]
    findings += [
        "same reach: " + compare(frame, arm, f"({b}, {b})", f"({a}, {b})")
        for a, b in pairs
        if f"({b}, {b})" in set(arm)
    ]
    if not pairs:
        runs = listing(sorted(set(arm)))
        findings.append(f"nothing to compare: no run has k2 > k1 (runs: {runs})")
    findings.append(_compute_sentence(results))
    tokens = results.trials.set_index("number")["tokens"].reindex(frame.index)
    table = _arm_table(frame, arm)
    table["mean tokens"] = table["arm"].map(tokens.groupby(arm).mean().round().astype("Int64"))
    return Answer(
        [f[0].upper() + f[1:] + ("" if f.endswith(".") else ".") for f in findings],
        {"Objective per (k1, k2) and seed": table},
    )


def _compute_sentence(results: SweepResults) -> str:
    flops = results.search_only().trials["flops"].dropna().astype(float)
    if flops.empty:
        return "The runs' compute was not recorded."
    low, high = flops.min(), flops.max()
    if high - low <= 0.05 * high:
        return (
            f"Every run had the same compute ({high:.3g} FLOPs): a longer k2 recomputes its "
            "overlap, so it trains on fewer characters (table: mean tokens)."
        )
    return (
        f"The runs' compute differed ({low:.3g}-{high:.3g} FLOPs): this compares equal "
        "characters, not equal compute (set trainer.max_flops for that)."
    )


def _overlap(frame: pd.DataFrame) -> pd.Series:
    """bptt.overlap (k2 - k1) per run; 0 where it was not swept."""
    if "bptt.overlap" not in frame:
        return pd.Series(0, index=frame.index)
    return frame["bptt.overlap"].fillna(0).astype(int)


FULLY = 0.25  # "learnt": within this share of the gap from the task's floor to chance


@answers_about("bptt.k1")
def k1_k2_recall(results: SweepResults) -> Answer:
    """The k2 from which TBPTT learns a dependency ``data.delay`` steps back, per k1, against
    the theory: every loss of an update sees it iff k2 >= delay + k1 - 1."""
    frame = outcomes(results)
    delay, alphabet = run_setting(results, "data.delay"), run_setting(results, "data.alphabet")
    if not isinstance(delay, int) or not isinstance(alphabet, int):
        return Answer(["Not a delayed_recall run (no data.delay / data.alphabet)."])
    chance_loss, floor = math.log(alphabet), math.log(alphabet) / 2
    learnt, partly = floor + FULLY * (chance_loss - floor), (chance_loss + floor) / 2
    k1 = frame["bptt.k1"].astype(int)
    k2 = k1 + _overlap(frame)
    loss = frame["value"].fillna(frame["final"])
    table = (
        pd.DataFrame({"k1": k1, "k2": k2, "loss": loss})
        .groupby(["k1", "k2"])["loss"].agg(["mean", "min", "max", "size"]).reset_index()
    )  # fmt: skip
    table["outcome"] = np.select(
        [table["max"] < learnt, table["max"] < partly], ["learnt", "partly"], default="not learnt"
    )
    findings = [
        f"Learnt: a loss below {learnt:.2f} nats/char in every seed, near the task's floor "
        f"({floor:.2f}: the uppercase half predicted); partly: below {partly:.2f}, halfway to "
        f"chance (ln {alphabet} = {chance_loss:.2f}: the uppercase half guessed)."
    ]
    for value, rows in table.groupby("k1"):
        findings.append(_recall_sentence(int(value), rows.sort_values("k2"), delay))
    return Answer(findings, {"Loss per (k1, k2) over seeds": table})


def _recall_sentence(k1: int, rows: pd.DataFrame, delay: int) -> str:
    theory = delay + k1 - 1
    outcome = list(rows["outcome"])
    start = next((i for i in range(len(outcome)) if all(o == "learnt" for o in outcome[i:])), None)
    parts = []
    for name in ("partly", "not learnt"):
        some = rows[
            (rows["outcome"] == name)
            & (rows.index < (rows.index[start] if start is not None else 10**9))
        ]
        if len(some):
            parts.append(f"{name} at k2 = {listing(some['k2'])} ({span(list(some['mean']))})")
    if start is None:
        return (
            f"k1 = {k1}: not learnt at any k2 up to {rows['k2'].max()} "
            f"({'; '.join(parts)}); theory: k2 >= {theory}."
        )
    found = int(rows["k2"].iloc[start])
    reaching = rows.loc[rows["k2"] >= theory, "k2"]
    agrees = len(reaching) > 0 and found == int(reaching.min())
    return (
        f"k1 = {k1}: learnt from k2 = {found} ({rows['mean'].iloc[start]:.2f} nats/char)"
        + "".join(f"; {p}" for p in parts)
        + f". Theory: every loss reaches the dependency from k2 = delay + k1 - 1 = {theory}"
        + (": agrees." if agrees else ": disagrees (see the table).")
    )


# The verdict functions a sweep directory's study.yaml may name and have run unprompted (see
# answer_of): this module's own, by the dotted name a sweep records.
VERDICTS: dict[str, Verdict] = {
    f"{__name__}.{verdict.__name__}": verdict
    for verdict in (lr_range, bptt_length, clipping, random_bptt, k1_k2, k1_k2_recall)
}
