"""The studies' verdict functions on constructed results: each class of outcome, ties, too few
seeds, a seeds' spread that covers the effect, and the transfer check."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from analysis import answers
from analysis.answers import Difference, paired_difference
from analysis.load import SweepResults

CHANCE = math.log(81)


def sweep(tmp: Path, runs: list[dict[str, Any]], setting: dict | None = None) -> SweepResults:
    """Results of one search trial per entry of ``runs``: ``params`` (swept values), ``curve``
    (val loss per evaluation), ``state`` (complete), ``reason`` (stop_reason), ``phase``,
    ``parent``, ``tokens``. Every job records an 81-character vocabulary; ``setting`` is its
    saved config."""
    rows, evals = [], []
    for number, run in enumerate(runs):
        job = tmp / str(number)
        (job / ".hydra").mkdir(parents=True, exist_ok=True)
        (job / "result.json").write_text(json.dumps({"vocab_size": 81}))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(setting or {}))
        curve, state = run.get("curve", []), run.get("state", "complete")
        value = run.get("value", curve[-1] if curve and state == "complete" else None)
        row = {
            "number": number,
            "state": state,
            "value": value,
            "phase": run.get("phase", "search"),
            "parent": run.get("parent"),
            "tokens": run.get("tokens", 1000 * len(curve)),
            "flops": 10**9,
            "full_val_loss": None,
            "stop_reason": run.get("reason"),
            "job_dir": str(job),
        }
        row.update({f"param.{k}": v for k, v in run.get("params", {}).items()})
        rows.append(row)
        evals += [
            {"trial": number, "tokens": 1000 * (i + 1), "flops": 10**8 * (i + 1), "val_loss": v}
            for i, v in enumerate(curve)
        ]
    trials = pd.DataFrame(rows)
    trials["state"] = pd.Categorical(trials["state"], ["complete", "pruned", "fail", "running"])
    trials["stop_reason"] = trials["stop_reason"].astype("string")
    trials["phase"] = trials["phase"].astype("string")
    columns = ["trial", "tokens", "flops", "val_loss"]
    return SweepResults(
        path=tmp,
        kind="optuna",
        trials=trials,
        steps=pd.DataFrame(),
        evals=pd.DataFrame(evals, columns=columns),
        grad_flow=pd.DataFrame(),
        study=None,
    )


def lr(rate: float, curve: list[float], **run: Any) -> dict[str, Any]:
    return {"params": {"optim.lr": rate}, "curve": curve, **run}


DIVERGED = {"state": "pruned", "reason": "diverged at token 2000: training loss 99 > 1.5 x best"}


def test_lr_range_names_each_class_and_the_range_that_learns(tmp_path):
    results = sweep(
        tmp_path,
        [
            lr(1e-5, [4.40, 4.38, 4.36]),  # still near chance: too slow
            lr(1e-3, [3.0, 2.5, 2.1]),
            lr(1e-2, [2.5, 2.0, 1.8]),  # the best
            lr(0.3, [2.4, 2.2, 2.45]),  # climbs 0.25 after its best: unstable
            lr(1.0, [5.0, 4.8], **DIVERGED),
        ],
    )
    answer = answers.lr_range(results)
    classes = answer.tables["Learning rates"].set_index("optim.lr")["class"]
    assert classes.to_dict() == {
        1e-5: "too slow",
        1e-3: "learns",
        1e-2: "learns",
        0.3: "unstable",
        1.0: "diverged",
    }
    assert answer.findings[0] == (
        "Learning rates 0.001..0.01 learn; below 0.001 too slow; above 0.01 unstable or diverged."
    )
    assert answer.findings[1].startswith("Best: 0.01 (1.800 nats/char after 3,000 characters)")
    assert f"ln V = {CHANCE:.2f}" in answer.findings[1]


def test_lr_range_ending_above_chance_is_unstable_and_gaps_are_listed_by_class(tmp_path):
    results = sweep(
        tmp_path,
        [
            lr(1e-4, [3.0, 2.6, 2.2]),
            lr(1e-3, [3.0, 4.2, 4.6]),  # ends above chance (ln 81 = 4.39): unstable
            lr(1e-2, [2.5, 2.0, 1.8]),
        ],
    )
    answer = answers.lr_range(results)
    assert answer.findings[0] == (
        "Learning rates by outcome: learns: 0.0001, 0.01; unstable: 0.001."
    )


def test_lr_range_when_no_rate_learns(tmp_path):
    results = sweep(tmp_path, [lr(0.5, [5.0], **DIVERGED), lr(1.0, [6.0], **DIVERGED)])
    assert answers.lr_range(results).findings[0] == "No learning rate learns: diverged: 0.5, 1."


def test_a_clear_paired_difference_names_the_better_arm():
    diff = paired_difference([2.0, 2.1, 2.2], [1.9, 1.98, 2.1])
    assert diff.n == 3 and diff.mean == pytest.approx(-0.107, abs=1e-3)
    assert diff.high < 0 and diff.clear
    text = answers.difference_text("fixed", "random", diff, 2.1, 1.99)
    assert text.startswith("random is better than fixed: random 1.990 vs fixed 2.100 nats/char")


@pytest.mark.parametrize(
    ("a", "b", "start"),
    [
        ([2.0, 2.0, 2.0], [2.1, 1.9, 2.05], "no clear difference: "),  # spread covers it
        ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0], "no clear difference: "),  # a tie
        ([2.0, 2.1], [1.5, 1.6], "too few seeds to tell (2 < 3): "),  # large, but 2 seeds
    ],
    ids=["spread covers the effect", "tie", "too few seeds"],
)
def test_comparisons_say_when_the_seeds_cannot_tell(a, b, start):
    diff = paired_difference(a, b)
    text = answers.difference_text("a", "b", diff, sum(a) / len(a), sum(b) / len(b))
    assert text.startswith(start), text
    assert not diff.clear


def test_a_tie_has_a_zero_interval():
    assert paired_difference([2.0] * 3, [2.0] * 3) == Difference(mean=0.0, low=0.0, high=0.0, n=3)


def bptt(rate: float, clip: str, length: int, seed: int, final: float, **run: Any) -> dict:
    params = {"optim.lr": rate, "clip": clip, "bptt.length": length, "seed": seed}
    return {"params": params, "curve": [3.0, final], **run}


def test_bptt_length_says_which_windows_fail_and_what_clipping_rescues(tmp_path):
    runs = []
    for seed in range(3):
        runs += [
            bptt(1, "none", 10, seed, 2.2),
            bptt(1, "none", 40, seed, 2.3),
            bptt(2, "none", 10, seed, 2.4),
            bptt(2, "none", 40, seed, 5.0),  # fails
            bptt(2, "norm", 10, seed, 2.2),
            bptt(2, "norm", 40, seed, 2.25),
        ]
    runs[3] = bptt(2, "none", 40, 0, 5.0, **DIVERGED)
    runs[-3] = bptt(2, "none", 40, 2, 2.5)  # one seed of 40 learns unclipped
    answer = answers.bptt_length(sweep(tmp_path, runs))
    assert answer.findings == [
        "At optim.lr=1 every window learns without clipping (final 2.20-2.30 nats/char).",
        "At optim.lr=2 without clipping, windows 40 (2/3) fail (diverged or above chance) while "
        "10 learn; norm clipping rescues 40 (2.25 nats/char).",
    ]


def recall(k1: int, overlap: int, seed: int, loss: float) -> dict:
    return {"params": {"bptt.k1": k1, "bptt.overlap": overlap, "seed": seed}, "curve": [loss]}


def test_k1_k2_recall_finds_the_k2_that_learns_against_delay_plus_k1_minus_1(tmp_path):
    losses = {
        (4, 0): 1.40,
        (4, 4): 1.0,
        (4, 8): 0.78,
        (4, 12): 0.75,  # learnt from 12 >= 11
        (8, 0): 1.38,
        (8, 4): 0.80,
        (8, 8): 0.78,
        (8, 12): 0.76,
    }  # from 12 < 15: disagrees
    runs = [recall(k1, o, s, loss) for (k1, o), loss in losses.items() for s in range(3)]
    setting = {"data": {"delay": 8, "alphabet": 4}}
    answer = answers.k1_k2_recall(sweep(tmp_path, runs, setting))
    assert answer.findings[1] == (
        "k1 = 4: learnt from k2 = 12 (0.78 nats/char); partly at k2 = 8 (1.00); not learnt at "
        "k2 = 4 (1.40). Theory: every loss reaches the dependency from k2 = delay + k1 - 1 = 11: "
        "agrees."
    )
    assert answer.findings[2].startswith("k1 = 8: learnt from k2 = 12 (0.80 nats/char)")
    assert answer.findings[2].endswith("= 15: disagrees (see the table).")


def test_k1_k2_recall_on_another_corpus_says_so(tmp_path):
    answer = answers.k1_k2_recall(sweep(tmp_path, [recall(4, 0, 0, 1.0)]))
    assert answer.findings == ["Not a delayed_recall run (no data.delay / data.alphabet)."]


def test_random_bptt_compares_each_random_arm_with_fixed_by_seed(tmp_path):
    runs = []
    for seed, (fixed, scaled, plain) in enumerate(
        [(2.0, 1.9, 2.01), (2.1, 2.0, 2.08), (2.05, 1.96, 2.07)]
    ):
        runs += [
            {"params": {"bptt": "fixed", "seed": seed}, "curve": [fixed]},
            {"params": {"bptt": "random", "bptt.scale_lr": True, "seed": seed}, "curve": [scaled]},
            {"params": {"bptt": "random", "bptt.scale_lr": False, "seed": seed}, "curve": [plain]},
        ]
    findings = answers.random_bptt(sweep(tmp_path, runs)).findings
    assert findings[0].startswith("No clear difference: random 2.053 vs fixed 2.050")
    assert findings[1].startswith(
        "Random, lr rescaled is better than fixed: random, lr rescaled "
        "1.953 vs fixed 2.050 nats/char, difference -0.097"
    )


def test_clipping_gives_each_arm_its_share_and_thresholds(tmp_path):
    def run(clip: str, value: float, learns: bool, **params: Any) -> dict:
        curve = [2.5, value] if learns else [4.2]
        state = "complete" if learns else "pruned"
        return {
            "params": {"clip": clip, "clip.error_clip": 0.0, **params},
            "curve": curve,
            "state": state,
        }

    runs = [run("none", 0, False) for _ in range(3)]
    runs += [run("none", 0, False, **{"clip.error_clip": 1e-3})]
    runs += [
        run("norm", v, True, **{"clip.max_norm": t})
        for v, t in [(2.3, 1.0), (2.4, 5.0), (2.35, 0.5)]
    ]
    runs += [run("norm", 0, False, **{"clip.max_norm": 30.0})]
    runs += [
        run("value", v, True, **{"clip.clip_value": t})
        for v, t in [(2.5, 0.1), (2.6, 0.3), (2.55, 0.01)]
    ]
    findings = answers.clipping(sweep(tmp_path, runs)).findings
    assert findings[:4] == [
        "Error clipping alone: 0/1 runs learn.",
        "No clipping: 0/3 runs learn.",
        "Norm clipping: 3/4 runs learn, at clip.max_norm 0.5-5 (best 2.300 nats/char at 1); "
        "fail at clip.max_norm 30.",
        "Value clipping: 3/3 runs learn, at clip.clip_value 0.01-0.3 (best 2.500 nats/char at "
        "0.1).",
    ]
    assert findings[4].startswith(
        "Among runs that learn: value clipping is worse than norm "
        "clipping: value clipping 2.550 vs norm clipping 2.350"
    )


def test_the_transfer_check_says_whether_the_winner_held(tmp_path):
    short = [lr(1e-2, [2.0]), lr(3e-2, [2.1]), lr(1e-1, [2.2])]
    held = [
        lr(1e-2, [1.5], phase="transfer", parent=0, tokens=5000),
        lr(3e-2, [1.7], phase="transfer", parent=1, tokens=5000),
        lr(1e-1, [1.6], phase="transfer", parent=2, tokens=5000),
    ]
    check = answers.transfer_check(sweep(tmp_path / "held", short + held))
    assert check is not None
    assert check.findings == [
        "Trained on to 5.0x the search budget (objective), the top 3 configurations kept their "
        "winner (Spearman rho = +0.50 over 3): optim.lr=0.01 (2.000 -> 1.500 nats/char)."
    ]
    flipped = [dict(run) for run in held]
    flipped[0]["curve"] = [1.8]
    check = answers.transfer_check(sweep(tmp_path / "flipped", short + flipped))
    assert check is not None and "changed winner" in check.findings[0]
    assert "optim.lr=0.1 reached 1.600 nats/char against 1.800" in check.findings[0]
    table = check.tables["Transfer check"]
    assert list(table["short rank"]) == [1, 2, 3] and list(table["long rank"]) == [3, 2, 1]


def test_no_transfer_runs_no_transfer_check(tmp_path):
    assert answers.transfer_check(sweep(tmp_path, [lr(1e-2, [2.0])])) is None


def test_a_verdict_that_breaks_costs_its_section_not_the_report(tmp_path, monkeypatch):
    def broken(results: SweepResults) -> answers.Answer:
        raise KeyError("bptt.k1")

    monkeypatch.setitem(answers.VERDICTS, "analysis.answers.k1_k2", broken)
    results = sweep(tmp_path, [lr(1e-2, [2.0])])
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump({"question": "Q?", "answer": "analysis.answers.k1_k2"})
    )
    study = answers.answer_of(results)
    assert study.question == "Q?" and study.answer is not None and study.imported
    assert study.answer.findings == [
        "The answer could not be computed (analysis.answers.k1_k2): KeyError: 'bptt.k1'."
    ]


def test_a_verdict_on_a_sweep_that_did_not_sweep_its_key_says_so(tmp_path):
    answer = answers.k1_k2(sweep(tmp_path, [lr(1e-2, [2.0])]))
    assert answer.findings == ["Nothing to answer: bptt.k1 not swept (this sweep swept optim.lr)."]


def test_a_comparison_without_seeds_says_it_cannot_tell(tmp_path):
    runs = [
        {"params": {"bptt": arm}, "curve": [loss]}
        for arm, loss in [("fixed", 2.0), ("random", 1.5)]
    ]
    findings = answers.random_bptt(sweep(tmp_path, runs)).findings
    assert findings == [
        "Too few seeds to tell (1 < 3): random 1.500 vs fixed 2.000 nats/char, difference -0.500 "
        "[95% interval -0.500, -0.500] over 1 seeds."
    ]
