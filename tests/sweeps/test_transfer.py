"""The transfer check on a tiny real sweep: the best trials continue to a longer budget once
the search has ended, are not counted in n_trials, are not repeated by a re-run, and the
report says whether the ranking held."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import yaml
from omegaconf import OmegaConf

from analysis.report import write_report
from sweeps.config import SweeperConfig
from sweeps.storage import open_storage
from sweeps.sweeper import check_settings
from tests.conftest import ROOT, TINY


def sweep(sweep_dir, *extra):
    cmd = [
        sys.executable,
        "-m",
        "tbptt.train",
        "-m",
        *TINY,
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        "optim.lr=choice(1e-3,1e-2,3e-2)",
        "hydra.sweeper.transfer.top_k=2",
        "hydra.sweeper.transfer.factor=3",
        "hydra.sweeper.answer=analysis.answers.lr_range",
        "hydra.sweeper.question='Which learning rates learn?'",
        *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_best_trials_train_on_longer_and_the_report_says_if_the_ranking_held(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, sweep_dir))
    search = [t for t in study.trials if t.user_attrs.get("phase", "search") == "search"]
    longer = [t for t in study.trials if t.user_attrs.get("phase") == "transfer"]
    assert len(search) == 3 and len(longer) == 2
    best_two = sorted(search, key=lambda t: t.value)[:2]
    assert sorted(t.user_attrs["parent"] for t in longer) == sorted(t.number for t in best_two)
    for trial in longer:
        parent = study.trials[trial.user_attrs["parent"]]
        assert trial.state.name == "COMPLETE" and trial.params == parent.params
        assert trial.user_attrs["tokens"] >= 3 * 1024  # 3x the search trials' 1024
        assert trial.user_attrs["init_from"] == parent.user_attrs["job_dir"]  # continued

    # A re-run has nothing left to do: no trial is added, the transfer runs are not repeated.
    again = sweep(sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        len(optuna.load_study(study_name="tbptt", storage=open_storage(None, sweep_dir)).trials)
        == 5
    )

    # The replay of a transfer run trains from scratch to the same end: the same numbers.
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["trial"] in {t.number for t in longer}
    args = best["command"].split()[3:]
    assert "trainer.resume=true" not in args
    assert [a for a in args if a.startswith("trainer.max_tokens=")] == ["trainer.max_tokens=3072"]
    run_dir = tmp_path / "replay"
    single = subprocess.run(
        [sys.executable, "-m", "tbptt.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    assert json.loads((run_dir / "result.json").read_text())["best_val_loss"] == best["value"]

    about = yaml.safe_load((sweep_dir / "study.yaml").read_text())
    assert about["question"] == "Which learning rates learn?"
    assert about["answer"] == "analysis.answers.lr_range"
    report = write_report(sweep_dir).read_text()
    assert "## Answer\n\n**Question:** Which learning rates learn?" in report
    assert "Trained on to 3.0x the search budget (objective), the top 2 configurations" in report
    answer = json.loads((sweep_dir / "answer.json").read_text())
    assert answer["question"] == "Which learning rates learn?" and len(answer["findings"]) >= 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transfer": {"top_k": 2, "factor": 1}}, "hydra.sweeper.transfer.factor must be > 1"),
        (
            {"transfer": {"top_k": -1}},
            "transfer.top_k must be >= 1 (0: no transfer check), got -1",
        ),
        (
            {"budget": "1m", "transfer": {"top_k": 2}},
            "hydra.sweeper.transfer is for n_trials sweeps: a budgeted sweep trains its best",
        ),
        (
            {"answer": "analysis.answers.nothing"},
            "hydra.sweeper.answer=analysis.answers.nothing: no function 'nothing' in "
            "analysis.answers (give module.function",
        ),
        ({"answer": "nomodule.fn"}, "hydra.sweeper.answer=nomodule.fn: cannot import nomodule"),
        ({"answer": "lr_range"}, "hydra.sweeper.answer=lr_range: no function 'lr_range' in a"),
    ],
    ids=["factor 1", "negative top_k", "with a budget", "no such function", "no module", "bare"],
)
def test_bad_transfer_or_answer_settings_stop_the_sweep_naming_the_key(settings, message, capsys):
    cfg = OmegaConf.merge(OmegaConf.structured(SweeperConfig), settings)
    with pytest.raises(SystemExit) as stop:
        check_settings(cfg)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err


def test_good_transfer_and_answer_settings_pass():
    cfg = OmegaConf.merge(
        OmegaConf.structured(SweeperConfig),
        {"transfer": {"top_k": 3, "factor": 2}, "answer": "analysis.answers.lr_range"},
    )
    check_settings(cfg)
