"""The studies' verdicts (analysis/answers.py) given odd sweeps, read back from sweep
directories as analysis.load reads any (tests/analysis/sweep_dirs.py, no training): an empty
one, one trial, every trial diverged, failed or still running, the studied key not swept, no
seed or one seed, NaN losses, the key in half the trials, a killed trial beside its retry.
Each gives an Answer that says what it can tell, or why it cannot, and never raises."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd
import pytest

from analysis import answers
from analysis.load import load
from tests.analysis.sweep_dirs import build_sweep

KEY = {"lr_range": "optim.lr", "bptt_length": "bptt.length", "clipping": "clip",
       "random_bptt": "bptt", "k1_k2": "bptt.k1", "k1_k2_recall": "bptt.k1"}  # fmt: skip
DESIGN: dict[str, list[dict[str, Any]]] = {
    "lr_range": [{"optim.lr": rate} for rate in (1e-4, 1e-3, 1e-2)],
    "bptt_length": [{"clip": c, "bptt.length": n, "seed": s}
                    for c in ("none", "norm") for n in (10, 40) for s in range(3)],
    "clipping": [{"clip": "norm", "clip.max_norm": 1.0 + s, "seed": s} for s in range(3)]
                + [{"clip": "value", "clip.clip_value": 0.1, "seed": s} for s in range(3)],
    "random_bptt": [{"bptt": b, "bptt.scale_lr": True, "seed": s}
                    for b in ("fixed", "random") for s in range(3)],
    "k1_k2": [{"bptt.k1": 4, "bptt.overlap": o, "seed": s} for o in (0, 4) for s in range(3)],
    "k1_k2_recall": [{"bptt.k1": 4, "bptt.overlap": o, "seed": s}
                     for o in (0, 8) for s in range(3)],
}  # fmt: skip
RECALL = {"data": {"delay": 8, "alphabet": 4}}  # data=delayed_recall's settings
DIVERGED = "diverged at token 1000: training loss 99 > 1.5 x best"


def without(params: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != key}


def odd_sweep(verdict: str, case: str) -> list[dict[str, Any]]:
    """The runs of ``case``, made from ``verdict``'s design (one run per entry)."""
    design, key = DESIGN[verdict], KEY[verdict]
    good = [{"params": p, "curve": [3.0, 2.0 - 0.01 * i]} for i, p in enumerate(design)]
    killed = {"params": design[0], "state": "fail", "reason": "worker killed by signal 9"}
    return {
        "empty": [],
        "one trial": good[:1],
        "all diverged": [{"params": p, "state": "pruned", "reason": DIVERGED, "curve": [9.0]}
                         for p in design],
        "all failed": [{"params": p, "state": "fail", "reason": "ValueError: boom"}
                       for p in design],
        "all running": [{"params": p, "state": "running", "curve": [3.0]} for p in design],
        "key not swept": [{**run, "params": without(run["params"], key)} for run in good],
        "no seed": [{**run, "params": without(run["params"], "seed")} for run in good],
        "one seed": [run for run in good if run["params"].get("seed", 0) == 0],
        "NaN losses": [{"params": p, "state": "pruned", "curve": [math.nan],
                        "reason": "non-finite loss at token 1000"} for p in design],
        "key in half the trials": [
            {**run, "params": without(run["params"], key)} if i % 2 else run
            for i, run in enumerate(good)
        ],
        "a killed trial beside its retry": [killed, *good],
    }[case]  # fmt: skip


# What each verdict says of each odd sweep: a part of its findings.
CASES = [
    ("lr_range", "empty", "No trial in this sweep yet: nothing to answer."),
    ("lr_range", "one trial", "Learning rates 0.0001..0.0001 learn."),
    ("lr_range", "all diverged", "No learning rate learns: diverged: 0.0001, 0.001, 0.01."),
    ("lr_range", "all failed", "Every finished trial failed (3): nothing to answer; the first said: ValueError: boom."),
    ("lr_range", "all running", "No trial has finished yet (3 running): nothing to answer yet."),
    ("lr_range", "key not swept", "Nothing to answer: optim.lr not swept (this sweep swept nothing)."),
    ("lr_range", "NaN losses", "No learning rate learns: diverged: 0.0001, 0.001, 0.01."),
    ("lr_range", "key in half the trials", "Left out of this answer: 1 without optim.lr (trials 1)."),
    ("lr_range", "a killed trial beside its retry", "Left out of this answer: 1 failed (trials 0)."),
    ("bptt_length", "empty", "No trial in this sweep yet: nothing to answer."),
    ("bptt_length", "one trial", "Here every window learns without clipping (final 2.00 nats/char)."),
    ("bptt_length", "all diverged", "Here without clipping, windows 10 (every run), 40 (every run) fail"),
    ("bptt_length", "all failed", "Every finished trial failed (12): nothing to answer"),
    ("bptt_length", "all running", "No trial has finished yet (12 running): nothing to answer yet."),
    ("bptt_length", "key not swept", "Nothing to answer: bptt.length not swept (this sweep swept clip, seed)."),
    ("bptt_length", "one seed", "Here every window learns without clipping (final 1.97-2.00 nats/char)."),
    ("bptt_length", "NaN losses", "Here without clipping, windows 10 (every run), 40 (every run) fail"),
    ("bptt_length", "a killed trial beside its retry", "Left out of this answer: 1 failed (trials 0)."),
    ("clipping", "empty", "No trial in this sweep yet: nothing to answer."),
    ("clipping", "one trial", "Norm clipping: 1/1 runs learn, at clip.max_norm 1 (best 2.000 nats/char at 1)."),
    ("clipping", "all diverged", "Norm clipping: 0/3 runs learn."),
    ("clipping", "all failed", "Every finished trial failed (6): nothing to answer"),
    ("clipping", "all running", "No trial has finished yet (6 running): nothing to answer yet."),
    ("clipping", "key not swept", "Nothing to answer: clip not swept (this sweep swept clip.max_norm, seed, clip.clip_value)."),
    ("clipping", "one seed", "Among runs that learn: too few runs to tell (1 < 3)"),
    ("clipping", "NaN losses", "Value clipping: 0/3 runs learn."),
    ("clipping", "key in half the trials", "Left out of this answer: 3 without clip (trials 1, 3, 5)."),
    ("random_bptt", "empty", "No trial in this sweep yet: nothing to answer."),
    ("random_bptt", "one trial", "Nothing to compare: only the fixed arm ran."),
    ("random_bptt", "all diverged", "No clear difference: random, lr rescaled 9.000 vs fixed 9.000 nats/char"),
    ("random_bptt", "all failed", "Every finished trial failed (6): nothing to answer"),
    ("random_bptt", "all running", "No trial has finished yet (6 running): nothing to answer yet."),
    ("random_bptt", "key not swept", "Nothing to answer: bptt not swept (this sweep swept bptt.scale_lr, seed)."),
    ("random_bptt", "no seed", "Too few seeds to tell (1 < 3): random, lr rescaled 1.960 vs fixed 1.990 nats/char"),
    ("random_bptt", "one seed", "Too few seeds to tell (1 < 3): random, lr rescaled 1.970 vs fixed 2.000 nats/char"),
    ("random_bptt", "NaN losses", "Random, lr rescaled vs fixed: not both run to a finite loss."),
    ("random_bptt", "key in half the trials", "Random, lr rescaled vs fixed: no seed ran both to a finite loss."),
    ("k1_k2", "empty", "No trial in this sweep yet: nothing to answer."),
    ("k1_k2", "one trial", "Nothing to compare: no run has k2 > k1 (runs: (4, 4))."),
    ("k1_k2", "all failed", "Every finished trial failed (6): nothing to answer"),
    ("k1_k2", "all running", "No trial has finished yet (6 running): nothing to answer yet."),
    ("k1_k2", "key not swept", "Nothing to answer: bptt.k1 not swept (this sweep swept bptt.overlap, seed)."),
    ("k1_k2", "no seed", "Too few seeds to tell (1 < 3): (4, 8) 1.960 vs (4, 4) 1.990 nats/char"),
    ("k1_k2", "NaN losses", "(4, 8) vs (4, 4): not both run to a finite loss."),
    ("k1_k2", "key in half the trials", "Left out of this answer: 3 without bptt.k1 (trials 1, 3, 5)."),
    ("k1_k2_recall", "empty", "No trial in this sweep yet: nothing to answer."),
    ("k1_k2_recall", "one trial", "k1 = 4: not learnt at any k2 up to 4"),
    ("k1_k2_recall", "all diverged", "k1 = 4: not learnt at any k2 up to 12"),
    ("k1_k2_recall", "all failed", "Every finished trial failed (6): nothing to answer"),
    ("k1_k2_recall", "all running", "No trial has finished yet (6 running): nothing to answer yet."),
    ("k1_k2_recall", "key not swept", "Nothing to answer: bptt.k1 not swept (this sweep swept bptt.overlap, seed)."),
    ("k1_k2_recall", "NaN losses", "k1 = 4: not learnt at any k2 up to 12"),
    ("k1_k2_recall", "a killed trial beside its retry", "Left out of this answer: 1 failed (trials 0)."),
]  # fmt: skip


@pytest.mark.parametrize(("verdict", "case", "says"), CASES, ids=[f"{v}: {c}" for v, c, _ in CASES])
def test_an_odd_sweep_gets_an_answer_that_says_what_it_can(tmp_path, verdict, case, says):
    setting = RECALL if verdict == "k1_k2_recall" else None
    results = load(build_sweep(tmp_path / "sweep", odd_sweep(verdict, case), setting))
    answer = getattr(answers, verdict)(results)
    assert isinstance(answer, answers.Answer) and answer.findings
    assert any(says in finding for finding in answer.findings), answer.findings
    text = " ".join(answer.findings)
    assert not re.search(r"\bnan\b|<NA>", text, re.IGNORECASE), text  # NaN is never printed
    assert all(isinstance(table, pd.DataFrame) for table in answer.tables.values())
