"""hydra-optuna-sweeper's own examples and the intent of its test-suite, run unchanged through
this project's sweeper, as a user of that plugin would run them (``tests/sweeps/optuna_plugin``
holds the examples byte for byte). Written here: these are not that plugin's tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tests.conftest import ROOT

PLUGIN = ROOT / "tests" / "sweeps" / "optuna_plugin"


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """A copy of the plugin's directory: its examples write their outputs beside them."""
    target = tmp_path / "plugin"
    shutil.copytree(PLUGIN, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def run(cwd: Path, script: str, *args: str, env: dict[str, str] | None = None,
        timeout: int = 240) -> subprocess.CompletedProcess[str]:  # fmt: skip
    cmd = [sys.executable, f"example/{script}", "--multirun", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


@pytest.mark.slow
def test_sphere_finds_its_optimum_in_a_sqlite_study_with_the_command_line_fixing_y(
    plugin_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path / 'test.db'}"
    proc = run(plugin_dir, "sphere.py", f"hydra.sweep.dir={tmp_path / 's'}",
               "hydra.job.chdir=True", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1",
               f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=sphere-test",
               "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z",
               "x=choice(0, 1, 2)", "y=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = results(tmp_path / "s")
    study = optuna.load_study(study_name="sphere-test", storage=storage)
    assert found["name"] == "optuna"
    assert found["best_params"] == study.best_trial.params and "y" not in found["best_params"]
    assert found["best_value"] == study.best_value == 0.0  # x=0, y=0: the sphere's minimum


def test_sphere_as_configured_reaches_the_plugins_threshold(plugin_dir, tmp_path):
    proc = run(plugin_dir, "sphere.py", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    found = results(tmp_path)
    # The plugin's own bar for 20 TPE trials (its 95th percentile over 1,000 seeds).
    assert found["best_value"] <= 2.27
    assert set(found["best_params"]) == {"x", "y"}
    # Its x: range(-5.5, 5.5, step=0.5) is the plugin's stepped float range, stop included.
    study = optuna.load_study(study_name="sphere", storage=open_storage(None, tmp_path))
    dist = study.trials[0].distributions["x"]
    assert (dist.low, dist.high, dist.step) == (-5.5, 5.5, 0.5)


@pytest.mark.parametrize(
    "line", [pytest.param((), marks=pytest.mark.slow), ("x=range(0, 5)", "y=range(0, 3)")],
    ids=["conf", "cli"],
)
def test_the_multi_objective_example_writes_its_pareto_front(plugin_dir, tmp_path, line):
    proc = run(plugin_dir, "multi-objective.py", f"hydra.sweep.dir={tmp_path}",
               "hydra.sweeper.n_trials=20", "hydra/sweeper/sampler=random",
               "hydra.sweeper.sampler.seed=123", *line)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("Optuna cannot prune multi-objective trials") == 1
    solutions = results(tmp_path)["solutions"]
    study = optuna.load_study(study_name="multi-objective", storage=open_storage(None, tmp_path))
    assert sorted(map(tuple, (s["values"] for s in solutions))) == sorted(
        tuple(t.values) for t in study.best_trials
    )
    step = 1 if line else 0.5
    for a in solutions:
        assert a["params"]["x"] % step == 0 and a["params"]["y"] % step == 0
        assert not any(dominates(b["values"], a["values"]) for b in solutions)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["directions"] == ["minimize", "minimize"]
    assert [t["trial"] for t in best["pareto_front"]] == results(tmp_path)["best_trials"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)  # nothing pruned


def test_the_custom_search_space_example_suggests_z_and_a_new_key(plugin_dir, tmp_path):
    proc = run(plugin_dir, "custom-search-space-objective.py", f"hydra.sweep.dir={tmp_path}",
               "hydra.job.chdir=True", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1",
               "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
               "max_z_difference_from_x=0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    best = results(tmp_path)["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3
    assert 0 <= best["+w"] <= 1
    study = optuna.load_study(study_name="custom-search-space",
                              storage=open_storage(None, tmp_path))  # fmt: skip
    job = yaml.safe_load((Path(study.best_trial.user_attrs["job_dir"]) / ".hydra" /
                          "overrides.yaml").read_text())  # fmt: skip
    assert f"+w={best['+w']!r}" in job  # the new key reached the app


@pytest.mark.slow
@pytest.mark.parametrize("n_trials", [10, 1])
def test_the_plugins_grid_config_with_a_stepped_float_range(plugin_dir, tmp_path, n_trials):
    proc = run(plugin_dir, "sphere.py", "--config-dir=tests/conf", "--config-name=test_grid",
               f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=False",
               f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    best = results(tmp_path)["best_params"]
    assert best["x"] in (-1, 1) and best["y"] in (-1.0, 0.0, 1.0) and best["z"] in ("foo", "bar")
    study = optuna.load_study(study_name="sphere", storage=open_storage(None, tmp_path))
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in study.trials}
    assert len(points) == len(study.trials) == n_trials  # no grid point twice
    if n_trials >= 6:
        assert results(tmp_path)["best_value"] == 1


@pytest.mark.parametrize(
    ("rate", "code"), [(0.5, 1), (1.0, 0)], ids=["half-stops", "all-tolerated"]
)
def test_max_failure_rate_is_a_share_of_the_trials(plugin_dir, tmp_path, rate, code):
    proc = run(plugin_dir, "sphere.py", f"hydra.sweep.dir={tmp_path}", "hydra.job.chdir=True",
               "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
               "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
               f"hydra.sweeper.max_failure_rate={rate}", "error=true")  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="sphere", storage=open_storage(None, tmp_path))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all("RuntimeError: cfg.error is True" in t.user_attrs["fail_reason"] for t in failed)
    if code:  # the 4th failure is more than half of 6: the sweep stops there
        assert "max_failure_rate=0.5 of 6 trials" in proc.stderr.strip().splitlines()[-1]
        assert 4 <= len(failed) < 6
    else:
        assert len(failed) == 6


@pytest.mark.slow
def test_the_removed_motpe_sampler_is_refused_in_one_line(plugin_dir, tmp_path):
    proc = run(plugin_dir, "multi-objective.py", "--config-dir=tests/conf",
               "--config-name=test_motpe", f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra/sweeper/sampler=motpe: Optuna 4 removed MOTPESampler; use "
        "hydra/sweeper/sampler=tpe (it takes several objectives) or nsgaii"
    )
    assert not (tmp_path / "study.journal").exists()  # refused before any trial


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["gp", "qmc", "nsgaii", "cmaes"])
def test_every_sampler_runs_the_sphere_to_its_end(plugin_dir, tmp_path, sampler):
    proc = run(plugin_dir, "sphere.py", f"hydra.sweep.dir={tmp_path}",
               f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=12",
               "x=interval(-5.5, 5.5)", "y=interval(-5, 5)")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="sphere", storage=open_storage(None, tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12
    assert results(tmp_path)["best_value"] == study.best_value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hydra.sweeper.direction=minimize"],
         "error: trial 0: the app returned 2 values (13.0, 28.25), but hydra.sweeper.direction "
         "names one objective"),
        (["hydra.sweeper.direction=[minimize,minimize,maximize]"],
         "error: trial 0: hydra.sweeper.direction names 3 objectives, but the app returned 2 "
         "values"),
    ],
    ids=["one direction", "three directions"],
)
def test_an_objective_of_the_wrong_shape_stops_the_sweep_at_its_first_trial(
    plugin_dir, tmp_path, args, message
):
    proc = run(plugin_dir, "multi-objective.py", f"hydra.sweep.dir={tmp_path}",
               "hydra.sweeper.n_trials=10", "hydra.sweeper.n_jobs=1", "x=1", "y=1.5",
               *args)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="multi-objective", storage=open_storage(None, tmp_path))
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_a_misspelt_sweeper_key_names_the_nearest_one(plugin_dir, tmp_path):
    proc = run(plugin_dir, "sphere.py", f"hydra.sweep.dir={tmp_path}",
               "+hydra.sweeper.n_trails=2")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.n_trails is not a setting of this sweeper; did you mean "
        "hydra.sweeper.n_trials?"
    )


@pytest.fixture(scope="module")
def their_plugin(tmp_path_factory) -> Path:
    """hydra-optuna-sweeper's wheel (1.2.0, the last on PyPI), installed into a folder of its own
    from the package registry, so that it sits beside this project as a user's would."""
    target = tmp_path_factory.mktemp("hydra-optuna-sweeper")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
           str(target), "hydra-optuna-sweeper==1.2.0"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert (target / "hydra_plugins" / "hydra_optuna_sweeper" / "config.py").is_file()
    return target


# Their folder on sys.path before site-packages (PYTHONPATH) or after it (appended at start-up):
# Hydra's plugin scan then meets their config module before ours or after it.
FIRST = ["{script}"]
LAST = ["-c", "import runpy, sys; sys.path.append({target!r}); sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')", "{script}"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("script", ["sphere.py", "multi-objective.py"])
def test_with_their_plugin_installed_too_the_examples_run_on_this_sweeper(
    plugin_dir, tmp_path, their_plugin, where, script
):
    head = FIRST if where == "first" else LAST
    cmd = [sys.executable, *(part.format(script=f"example/{script}", target=str(their_plugin))
                             for part in head), "--multirun", f"hydra.sweep.dir={tmp_path}",
           "hydra.sweeper.n_trials=6"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(their_plugin) if where == "first" else ""}
    proc = subprocess.run(cmd, cwd=plugin_dir, capture_output=True, text=True, timeout=240,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert said.count("hydra-optuna-sweeper 1.2.0 is installed too") == 1
    assert (tmp_path / "trials.parquet").is_file()  # this project's outputs, not theirs alone
    found = results(tmp_path)
    assert found["name"] == "optuna"
    assert ("solutions" in found) == (script == "multi-objective.py")
