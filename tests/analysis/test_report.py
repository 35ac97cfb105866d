"""``analysis.report``: the report of a real sweep, its sections, masking, and the CLI."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis import report
from analysis.load import SweepResults, load
from tests.analysis.sweep_dirs import build_mixed_sweep
from tests.analysis.test_plots import assert_png, run_tiny_sweep
from tests.conftest import ROOT

SECRET = "hunter2"
URL = f"postgresql://optuna:{SECRET}@db.example:5432/sweeps"
QUERY_URL = f"postgresql://optuna@db.example:5432/sweeps?password={SECRET}"


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResults, Path]:
    results = load(run_tiny_sweep(tmp_path_factory))
    return results, report.write_report(results, tmp_path_factory.mktemp("report"))


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    build_mixed_sweep(tmp_path / "sweep")
    return tmp_path / "sweep"


def section(markdown: str, title: str) -> str:
    """The text of the section ``## title`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_the_report_gives_the_best_trials_command_and_the_top_table(tiny_report):
    results, md_path = tiny_report
    md = md_path.read_text()
    best = yaml.safe_load((results.path / "best.yaml").read_text())
    assert f"```bash\n{best['command']}\n```" in section(md, "Best configuration")
    table = section(md, "Top 10 trials").strip().splitlines()
    complete = results.trials[results.trials["state"] == "complete"]
    assert table[0].startswith("| rank | trial | value (nats/char) |")
    assert len(table) == 2 + min(10, len(complete))
    assert table[2].startswith(f"| 1 | {best['trial']} | {best['value']:.4g} |")


def test_the_html_report_holds_the_same_content_with_inline_figures(tiny_report):
    results, md_path = tiny_report
    page = (md_path.parent / "report.html").read_text()
    best = yaml.safe_load((results.path / "best.yaml").read_text())
    assert f"<pre><code>{best['command']}</code></pre>" in page
    assert page.count('src="data:image/png;base64,') == len(report.PLOTS)
    for name in report.PLOTS:
        assert_png(md_path.parent / "report" / f"{name}.png")
        assert f"](report/{name}.png)" in md_path.read_text()


def test_each_knob_has_its_effect_and_importance(tiny_report):
    results, _ = tiny_report
    effects = report.knob_effects(results).set_index("knob")
    assert list(effects.index) == ["clip", "optim.lr"]
    assert effects.loc["clip", "type"] == "categorical"
    assert effects.loc["clip", "effect"].startswith("best mean: ")
    assert effects.loc["optim.lr", "effect"].startswith("Spearman rho = ")
    assert effects["importance"].sum() == pytest.approx(1.0)
    by_value = report.value_effects(results, "clip")
    assert set(by_value["value"]) == {"none", "norm"}
    assert by_value["trials"].sum() == len(results.trials)


def test_stopped_trials_say_why_and_at_which_token(mixed_dir):
    stopped = report.stopped_trials(load(mixed_dir)).set_index("trial")
    assert stopped.loc[1, "why"] == "pruned by the pruner" and stopped.loc[1, "at token"] == 128
    assert stopped.loc[2, "why"] == "diverged" and stopped.loc[2, "at token"] == 64
    assert stopped.loc[3, "why"] == "fail" and stopped.loc[3, "reason"] == "ValueError: boom"
    assert 0 not in stopped.index


@pytest.mark.parametrize(
    ("factor", "window", "verdict"),
    [
        (0.5, 40, "vanishing: the gradient shrinks ~0.50x per step, so dependencies longer "
                  "than ~7 steps are not learned"),
        (0.69, None, "vanishing: the gradient shrinks ~0.69x per step, so dependencies longer "
                     "than ~12 steps are not learned"),
        (0.9, 100, "healthy: ~0.90x per step"),
        (0.98, 40, "healthy: ~0.98x per step; the window k2 = 40, not the gradient, limits "
                   "how far back it learns"),
        (1.2, 40, "exploding: the gradient grows ~1.20x per step (100x within ~25 steps)"),
        (math.nan, 40, "not measured"),
    ],
)  # fmt: skip
def test_gradient_health_verdicts(factor, window, verdict):
    assert report.gradient_health(factor, window).startswith(verdict)


def test_every_trial_with_a_measured_factor_gets_a_verdict(tiny_report):
    results, _ = tiny_report
    table = report.health_table(results)
    measured = results.evals.dropna(subset=["decay_factor"])["trial"]
    assert set(table["trial"]) == set(measured) and len(table) > 1
    assert table["verdict"].str.match(r"^(vanishing|healthy|exploding): ").all()


def test_without_best_yaml_the_command_is_built_from_the_best_trials_overrides(mixed_dir):
    md = report.write_report(mixed_dir).read_text()
    overrides = load(mixed_dir).trials.set_index("number").loc[0, "overrides"]
    assert f"```bash\npython -m tbptt.train {overrides}\n```" in md
    assert (mixed_dir / "report.html").is_file()  # default out_dir: the sweep directory
    assert "*Parameter importances*" not in md  # drawn, saying why: 1 complete trial
    # One trial completed: the knob effects use the 4 trials evaluated once, pruned included.
    assert (
        "Computed from evaluation 1 of each trial (64 characters, 6.4e+04 FLOPs), the "
        "deepest that 4 of 6 trials reached (only 1 completed)" in md
    )


def test_figures_the_data_cannot_support_become_notes(mixed_dir):
    results = load(mixed_dir)
    params = [c for c in results.trials if c.startswith("param.")]
    bare = dataclasses.replace(results, trials=results.trials.drop(columns=params), study=None)
    md = report.write_report(bare, mixed_dir / "bare").read_text()
    assert "*Objective per clip mode*: not drawn: clip is not a swept parameter" in md
    assert "Nothing was swept." in md


def test_passwords_in_storage_urls_never_reach_the_report(mixed_dir):
    results = load(mixed_dir)
    trials = results.trials.copy()
    trials["overrides"] = trials["overrides"] + f" hydra.sweeper.storage={URL}"
    trials.loc[3, "stop_reason"] = f"OperationalError: cannot reach {URL}"
    trials.loc[2, "stop_reason"] = f"OperationalError: cannot reach {QUERY_URL}"
    command = f"python -m tbptt.train optim.lr=0.001 hydra.sweeper.storage={URL}"
    best = {"value": 1.25, "trial": 0, "params": {}, "storage": URL, "command": command}
    (mixed_dir / "best.yaml").write_text(yaml.safe_dump(best))
    md_path = report.write_report(dataclasses.replace(results, trials=trials))
    for text in (md_path.read_text(), (mixed_dir / "report.html").read_text()):
        assert SECRET not in text
        assert "postgresql://optuna:***@db.example:5432/sweeps" in text
        assert "postgresql://optuna@db.example:5432/sweeps?password=***" in text


def test_the_cli_reports_a_bad_path_in_one_line(tmp_path):
    missing = tmp_path / "no-such-sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(missing)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(missing) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_cli_writes_the_report_where_asked(mixed_dir, tmp_path, capsys):
    assert report.main([str(mixed_dir), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.slow
def test_a_sweep_with_a_trial_that_never_evaluated_gets_its_report(tmp_path):
    # Trial 0 samples dropout 1.5, fails its config check and never trains; trial 1 trains.
    cmd = [sys.executable, "-m", "tbptt.train", "-m", "hydra/sweeper=optuna",
           "hydra/sweeper/sampler=grid", "data=count", "data.batch_size=4",
           "data.eval_batch_size=2", "model.hidden_size=16", "model.embed_size=8",
           "model.layers=1", "trainer.max_tokens=4000", "trainer.eval_every_tokens=2000",
           "trainer.eval_max_tokens=256", "model.dropout=choice(1.5,0.0)",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={tmp_path}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "report.md").read_text()
    assert "model.dropout must be in [0, 1), got 1.5" in text
