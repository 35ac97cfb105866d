"""``analysis.plots``: every figure renders from a real sweep, and edge cases render or say why."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import plots
from analysis.load import SweepResults, load
from tests.analysis.sweep_dirs import build_mixed_sweep
from tests.conftest import ROOT, TINY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000  # an empty axes is about 4 KB at this size; a drawn figure is far more

# The README's tiny sweep: 6 trials, 2 workers, median pruning, two clip modes (about 15 s).
TINY_SWEEP = [
    *TINY, "hydra/sweeper=optuna", "hydra/sweeper/pruner=median",
    "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.n_trials=6",
    "hydra.sweeper.n_jobs=2", "optim.lr=tag(log,interval(1e-4,0.1))", "clip=none,norm",
    "trainer.max_tokens=2048",
]  # fmt: skip


def run_tiny_sweep(factory: pytest.TempPathFactory) -> Path:
    """The real tiny sweep, run once per test session whichever module asks first: it lives at
    a fixed place under the session's temp root (read it; a test that writes copies it)."""
    sweep_dir = factory.getbasetemp() / "analysis-tiny-sweep"
    done = sweep_dir.parent / "analysis-tiny-sweep.done"
    if done.exists():
        return sweep_dir
    shutil.rmtree(sweep_dir, ignore_errors=True)  # a failed earlier attempt: start over
    cmd = [sys.executable, "-m", "tbptt.train", "-m", *TINY_SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done.touch()
    return sweep_dir


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> SweepResults:
    return load(run_tiny_sweep(tmp_path_factory))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> SweepResults:
    """Trials in every state (complete, pruned, diverged, fail, running, waiting), no training."""
    sweep_dir = tmp_path_factory.mktemp("mixed") / "sweep"
    build_mixed_sweep(sweep_dir)
    return load(sweep_dir)


def only(results: SweepResults, state: str) -> SweepResults:
    """The results restricted to the trials in ``state``, without a study."""
    keep = results.trials[results.trials["state"] == state]
    numbers = set(keep["number"])

    def rows(frame):
        return frame[frame["trial"].isin(numbers)]

    return dataclasses.replace(
        results, trials=keep, steps=rows(results.steps), evals=rows(results.evals),
        grad_flow=rows(results.grad_flow), study=None,
    )  # fmt: skip


def without_params(results: SweepResults) -> SweepResults:
    params = [c for c in results.trials if c.startswith("param.")]
    return dataclasses.replace(results, trials=results.trials.drop(columns=params), study=None)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > MIN_PNG_BYTES, (path, len(data))


@pytest.mark.parametrize("name", list(plots.PLOTS))
def test_every_figure_renders_a_png_from_a_real_sweep(tiny_sweep, tmp_path, name):
    path = plots.PLOTS[name](tiny_sweep, tmp_path / f"{name}.png")
    assert path == tmp_path / f"{name}.png"
    assert_png(path)


@pytest.mark.parametrize("name", list(plots.PLOTS))
def test_every_figure_renders_with_trials_in_every_state(mixed, tmp_path, name):
    assert_png(plots.PLOTS[name](mixed, tmp_path / "figure.png"))


# (edge case, figure) -> None: it renders, else the start of its ValueError.
EDGE_CASES = [
    ("only failed", "val_curves", "evals.parquet has no rows"),
    ("only failed", "objective_vs_params", "no trial has an objective"),
    ("only failed", "clip_modes", "no trial with a clip mode has an objective"),
    ("only failed", "importances", None),
    ("only failed", "grad_norms", None),
    ("only failed", "grad_flow", "grad_flow.parquet has no rows"),
    ("only failed", "timeline", None),
    ("no params", "val_curves", None),
    ("no params", "objective_vs_params", "neither the learning rate nor the BPTT length"),
    ("no params", "clip_modes", "clip is not a swept parameter"),
    ("no params", "importances", None),
    ("no params", "grad_norms", None),
    ("no params", "grad_flow", None),
    ("no params", "timeline", None),
]


@pytest.mark.parametrize(("case", "name", "error"), EDGE_CASES)
def test_edge_cases_render_or_raise_a_clear_value_error(mixed, tmp_path, case, name, error):
    results = only(mixed, "fail") if case == "only failed" else without_params(mixed)
    draw = plots.PLOTS[name]
    if error is None:
        assert_png(draw(results, tmp_path / "figure.png"))
    else:
        with pytest.raises(ValueError, match=f"^{error}"):
            draw(results, tmp_path / "figure.png")


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no study", "no Optuna study"),
        ("one complete", "importances need at least 2 complete trials, got 1"),
    ],
)
def test_importances_say_why_they_are_missing(mixed, tiny_sweep, case, why):
    results = only(tiny_sweep, "complete") if case == "no study" else mixed
    with pytest.raises(ValueError, match=why):
        plots.param_importances(results)


def test_importances_of_a_real_sweep_cover_its_params(tiny_sweep):
    scores = plots.param_importances(tiny_sweep)
    assert set(scores) == {"optim.lr", "clip"}
    assert sum(scores.values()) == pytest.approx(1.0)


def test_default_trials_are_the_best_three_and_the_worst_pruned(tiny_sweep):
    best = list(plots.ranked(tiny_sweep)["number"][:3])
    pruned = plots.objectives(tiny_sweep).query("state == 'pruned'")
    worst = pruned.sort_values("objective")["number"].iloc[-1]
    chosen = plots.pick_trials(tiny_sweep, tiny_sweep.trials["number"])
    assert chosen == [*best, worst]


def test_clip_thresholds_come_from_the_swept_value_or_the_jobs_config(mixed, tiny_sweep):
    assert plots.clip_threshold(mixed, 0) == 1.0  # swept: clip.max_norm=1.0
    assert plots.clip_threshold(mixed, 2) == 5.0
    assert plots.clip_threshold(mixed, 1) is None  # clip=none
    modes = tiny_sweep.trials.set_index("number")["param.clip"]
    for number, mode in modes.items():  # clip.max_norm not swept: the default, 1.0
        assert plots.clip_threshold(tiny_sweep, number) == (1.0 if mode == "norm" else None)


def test_pruned_trials_stand_in_with_their_best_validation_loss(mixed):
    frame = plots.objectives(mixed).set_index("number")
    evals = mixed.evals[mixed.evals["trial"] == 1]
    assert frame.loc[1, "objective"] == evals["val_loss"].min()
    assert frame.loc[0, "objective"] == frame.loc[0, "value"]
    assert frame["objective"].isna().loc[[3, 5]].all()  # failed, waiting: nothing measured
