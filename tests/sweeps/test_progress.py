"""What a sweep shows on the console: a bar with a line per finished trial above it on a
terminal, one line per finished trial elsewhere, and no trial logs unless asked for."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import hydra
import optuna
import pytest
from omegaconf import OmegaConf

from sweeps.ledger import Ledger
from sweeps.progress import Progress
from sweeps.worker import TrialOutcome, drop_console_handlers
from tbptt.contract import End
from tests.conftest import ROOT, TINY

HYDRA_JOB_LOGGING = Path(hydra.__file__).parent / "conf" / "hydra" / "job_logging"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(text: str) -> list[str]:
    """The lines a terminal ends up showing: each line's text after its last carriage return
    (tqdm redraws the bar in place, and clears it before writing a line above it)."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def finish(ledger: Ledger, value: float | None) -> TrialOutcome:
    """A trial of the ledger's study ends with ``value`` (None: pruned); the ledger looks."""
    study = ledger.study
    trial = study.ask()
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        outcome = TrialOutcome(number=trial.number, state=End.PRUNED, reason="pruned at token 256")
    else:
        study.tell(trial, value)
        outcome = TrialOutcome(number=trial.number, state=End.COMPLETE, value=value)
    ledger.refresh()
    return outcome


def test_on_a_terminal_each_finished_trial_is_a_line_above_the_bar():
    ledger, terminal = Ledger(optuna.create_study()), FakeTerminal()
    progress = Progress(total=2, stream=terminal)
    progress.start(ledger)
    progress.finished(ledger, finish(ledger, 0.5))
    progress.close()

    lines = shown(terminal.getvalue())
    [line] = [line for line in lines if line.startswith("trial 0")]
    assert line.startswith("trial 0 complete: value 0.5000 | 1/2 | 1 complete, 0 pruned")
    assert "1/2" in lines[-2]  # the bar's last state stays below the trial's line
    assert terminal.getvalue().endswith("\n")  # closed: what comes next starts a line


def test_elsewhere_each_finished_trial_is_exactly_one_line():
    ledger, stream = Ledger(optuna.create_study()), io.StringIO()
    progress = Progress(total=2, stream=stream)
    progress.start(ledger)
    progress.finished(ledger, finish(ledger, 0.5))
    progress.finished(ledger, finish(ledger, None))
    progress.close()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("trial 0 complete: value 0.5000 | 1/2 | ")
    assert lines[1].startswith("trial 1 pruned: pruned at token 256 | 2/2 | 1 complete, 1 pruned")


def test_the_sweeps_own_log_records_go_above_a_live_bar(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    console = logging.StreamHandler(sys.stderr)  # as Hydra's console handler: on stderr
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.root.addHandler(console)
    log = logging.getLogger("sweeps.policy")
    try:
        progress = Progress(total=16)
        log.warning("all 16 points of the grid are tried: the sweep ends")
        progress.close()
        log.warning("after the bar")
    finally:
        logging.root.removeHandler(console)

    lines = shown(terminal.getvalue())
    assert "all 16 points of the grid are tried: the sweep ends" in lines  # not glued to the bar
    assert lines[-2:] == ["after the bar", ""]  # the console is plain logging again


def job_logging(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(HYDRA_JOB_LOGGING / f"{name}.yaml"))


CUSTOM = {
    "version": 1,
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "rotating": {"class": "logging.handlers.RotatingFileHandler", "filename": "a.log"},
        "made": {"()": "tests.sweeps.test_progress.FakeTerminal"},
        "null": {"class": "logging.NullHandler"},
    },
    "root": {"level": "INFO", "handlers": ["console", "null"]},
    "loggers": {"tbptt": {"handlers": ["console", "rotating", "made"]}},
}


@pytest.mark.parametrize(
    "config, handlers, root, loggers",
    [
        (job_logging("default"), {"file"}, ["file"], {}),
        (job_logging("stdout"), set(), [], {}),
        (job_logging("disabled"), None, None, {}),
        (CUSTOM, {"rotating", "made", "null"}, ["null"], {"tbptt": ["rotating", "made"]}),
    ],
    ids=["hydra default", "hydra stdout", "hydra disabled", "custom"],
)
def test_a_jobs_console_handlers_are_dropped_and_its_files_kept(config, handlers, root, loggers):
    cfg = OmegaConf.create(config)
    drop_console_handlers(cfg)
    after = OmegaConf.to_container(cfg)
    assert (set(after["handlers"]) if "handlers" in after else None) == handlers
    assert after["root"].get("handlers") == root
    assert {k: v["handlers"] for k, v in after.get("loggers", {}).items()} == loggers


def tiny_sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
        "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
        f"hydra.sweep.dir={sweep_dir}",
        "optim.lr=tag(log,interval(1e-3,1e-2))", *overrides,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("trial_logs", [False, True])
def test_trial_logs_go_to_their_job_log_and_to_the_console_only_when_asked(tmp_path, trial_logs):
    proc = tiny_sweep(tmp_path, f"hydra.sweeper.trial_logs={str(trial_logs).lower()}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    console = proc.stdout + proc.stderr
    assert console.count("best_val_loss=") == (2 if trial_logs else 0)
    assert ("tokens=" in console) is trial_logs
    finished = [line for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert [line.split(":")[0] for line in finished] == ["trial 0 complete", "trial 1 complete"]
    assert proc.stderr.splitlines()[-1].startswith("best ")  # the answer comes last
    for job in ("0", "1"):
        assert "best_val_loss=" in (tmp_path / job / "train.log").read_text()
