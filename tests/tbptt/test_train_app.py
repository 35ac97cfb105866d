"""The Hydra entry point: validation before compute, single runs, multirun, sampling."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tbptt.errors import ConfigError
from tbptt.train import build_trainer
from tests.conftest import CONF, ROOT, TINY


def compose_without(key: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        tiny = [o for o in TINY if not o.startswith(f"{key}=")]
        return compose("config", overrides=[*tiny, *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=0", "optim.lr must be a finite number > 0, got 0.0"),
        ("optim.lr=-1e-3", "optim.lr must be a finite number > 0, got -0.001"),
        ("bptt.length=0", "bptt.length must be >= 1, got 0"),
        ("bptt.k1=0", "bptt.k1 must be >= 1, got 0"),
        ("bptt.k1=10 bptt.k2=5", "bptt.k2 must be >= bptt.k1, got bptt.k2=5 < bptt.k1=10"),
        ("bptt.loss_window=first", "bptt.loss_window must be 'k1' or 'last', got 'first'"),
        ("bptt=random bptt.p=1.2", r"bptt.p must be in \[0, 1\], got 1.2"),
        ("bptt=random bptt.overlap=-1", "bptt.overlap must be >= 0, got -1"),
        ("bptt=uniform bptt.min_len=9 bptt.max_len=4", "bptt.max_len must be >= bptt.min_len"),
        ("clip.error_clip=-0.1", "clip.error_clip must be >= 0 or null, got -0.1"),
        ("trainer.divergence_factor=0.5", "trainer.divergence_factor must be > 1 or null"),
        ("clip=norm clip.max_norm=-1", "clip.max_norm must be > 0, got -1.0"),
        ("clip=value clip.clip_value=0", "clip.clip_value must be > 0, got 0.0"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\), got 1.5"),
        ("model.hidden_size=0", "model.hidden_size must be >= 1, got 0"),
        ("data.val_fraction=1.0", r"data.val_fraction must be in \(0, 1\), got 1.0"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("trainer.objective=median", "trainer.objective must be 'best' or 'final'"),
        ("trainer.max_tokens=0", "trainer.max_tokens must be >= 1, got 0"),
        ("optim=sgd optim.momentum=1.0", r"optim.momentum must be in \[0, 1\), got 1.0"),
        ("data=shakespeare data.path=/nonexistent.txt", "data.path: file not found"),
        ("data.length=30", "training split has 28 characters"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(tiny_cfg, tmp_path, override, message):
    if "bptt=uniform" in override:  # a uniform schedule has no bptt.length (TINY sets one)
        tiny_cfg = partial(compose_without, "bptt.length")
    with pytest.raises(ConfigError, match=message):
        build_trainer(tiny_cfg(*override.split()), tmp_path, [])
    assert not (tmp_path / "steps.parquet").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("clip=sometimes", "Could not find 'clip/sometimes'"),
        ("optim.lrr=0.1", "Key 'lrr' not in 'AdamConfig'"),
        ("bptt.length=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ],
)
def test_unknown_options_and_keys_are_rejected_by_composition(tiny_cfg, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        tiny_cfg(override)
    assert message in str(info.value) + str(info.value.__cause__)


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path):
    proc = cli("tbptt.train", *TINY, "optim.lr=0", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: optim.lr must be a finite number > 0, got 0.0"
    assert "Traceback" not in proc.stderr


def test_single_run_then_sample_from_its_checkpoint(tmp_path):
    proc = cli("tbptt.train", *TINY, "optim.lr=0.02", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    for name in ("steps.parquet", "evals.parquet", "result.json", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    proc = cli("tbptt.sample", f"checkpoint={tmp_path / 'checkpoint.pt'}", "length=40", "prime=1 ")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.rstrip("\n")
    assert text.startswith("1 ") and len(text) == 42 and set(text) <= set("123 ")


@pytest.mark.slow
def test_multirun_with_the_joblib_launcher_runs_jobs_in_their_own_dirs(tmp_path):
    proc = cli(
        "tbptt.train",
        "-m",
        *TINY,
        "optim.lr=1e-3,3e-3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1"):
        assert (tmp_path / job / "steps.parquet").is_file()
        assert (tmp_path / job / "evals.parquet").is_file()
    overrides = {(tmp_path / j / ".hydra" / "overrides.yaml").read_text() for j in ("0", "1")}
    assert any("optim.lr=0.001" in o for o in overrides)
    assert any("optim.lr=0.003" in o for o in overrides)
