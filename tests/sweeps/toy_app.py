"""A trivial Hydra app for sweeper tests: no training, a known objective, injectable faults.

The objective is (x - 0.3)^2, reported over ``steps`` evaluations that improve towards it, so
pruners have curves to compare. ``sleep`` slows a trial, ``fail_below`` raises for x below it,
``kill_marker`` SIGKILLs the worker mid-trial (once per marker file, so a retry can succeed).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tbptt import hooks
from tbptt.metrics import write_json
from tbptt.trainer import StopRun


def objective(cfg: DictConfig) -> float:
    return (cfg.x - 0.3) ** 2


def fault(cfg: DictConfig) -> None:
    if cfg.fail_below is not None and cfg.x < cfg.fail_below:
        raise ValueError(f"boom at x={cfg.x}")
    if cfg.kill_marker and not Path(cfg.kill_marker).exists():
        Path(cfg.kill_marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)


@hydra.main(version_base="1.3", config_path="toy_conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    stop_reason = None
    try:
        for step in range(1, cfg.steps + 1):
            time.sleep(cfg.sleep / cfg.steps)
            if step == cfg.steps // 2:
                fault(cfg)
            for callback in hooks.job_callbacks:
                callback(step * 100, objective(cfg) + 1.0 / step)
    except StopRun as stop:
        stop_reason = stop.reason
    write_json({"stop_reason": stop_reason, "tokens": step * 100}, run_dir / "result.json")
    return objective(cfg) + 1.0 / cfg.steps


if __name__ == "__main__":
    main()
