"""A trivial Hydra app for sweeper tests: no training, a known objective, injectable faults.

The objective is (x - 0.3)^2, reported over ``steps`` evaluations that improve towards it, so
pruners have curves to compare. ``sleep`` slows a trial, ``fail_below`` raises for x below it,
``bad_above`` rejects x above it as a bad config (a ``ConfigError`` raised inside the trial),
``kill_marker`` SIGKILLs the worker mid-trial for each x in ``kill_xs`` (once per x: a marker
file remembers it, so a retry can succeed).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tbptt import contract
from tbptt.errors import ConfigError


def objective(cfg: DictConfig) -> float:
    return (cfg.x - 0.3) ** 2


def fault(cfg: DictConfig, run_dir: Path) -> None:
    if cfg.write_mb:  # fills the disk, or runs into a file-size limit set by the test
        (run_dir / "big.bin").write_bytes(b"\0" * int(cfg.write_mb * 2**20))
    if cfg.fail_below is not None and cfg.x < cfg.fail_below:
        raise ValueError(f"boom at x={cfg.x}")
    if cfg.bad_above is not None and cfg.x > cfg.bad_above:
        raise ConfigError(f"x must be <= {cfg.bad_above}, got {cfg.x}")
    marker = Path(f"{cfg.kill_marker}-{cfg.x}") if cfg.kill_marker else None
    if marker and cfg.x in cfg.kill_xs and not marker.exists():
        marker.write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)


@hydra.main(version_base="1.3", config_path="toy_conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for step in range(1, cfg.steps + 1):
        time.sleep(cfg.sleep / cfg.steps)
        if step == cfg.steps // 2:
            fault(cfg, run_dir)
        loss = objective(cfg) + 1.0 / step
        if contract.report(loss, step * 100, tokens=step * 100, flops=step):
            break
    contract.write_result({"tokens": step * 100}, run_dir)
    return objective(cfg) + 1.0 / cfg.steps


if __name__ == "__main__":
    main()
