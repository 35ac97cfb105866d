"""The toy Hydra app (``tests/sweeps/toy_app.py``: objective (x - 0.3)^2, ``steps`` reports
over ``sleep`` seconds) that also leaves a real run's metric tables in its job directory:
``steps.parquet`` (``step_rows`` rows, the trainer's columns) and ``evals.parquet``
(``eval_rows`` rows), which the sweep collects into its own tables as each trial finishes.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tbptt import contract


def steps_table(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per update, with the columns (and dtypes) of the trainer's ``steps.parquet``."""
    update = np.arange(1, rows + 1)
    norm = rng.lognormal(0.0, 0.5, rows)
    return pd.DataFrame({
        "tokens": update * 3200, "flops": update * 4_000_000_000, "update": update,
        "loss": 4.2 / np.sqrt(update) + rng.normal(0, 0.01, rows),
        "grad_norm": norm, "grad_norm_clipped": np.minimum(norm, 1.0), "clipped": norm > 1.0,
        "lr": np.full(rows, 2e-3), "k1": np.full(rows, 50), "k2": np.full(rows, 100),
        "hidden_norm": rng.uniform(5, 10, rows), "grad_norm_embed": rng.uniform(0, 1, rows),
        "grad_norm_rnn0": rng.uniform(0, 1, rows), "grad_norm_decoder": rng.uniform(0, 1, rows),
        "elapsed_s": np.cumsum(rng.uniform(0.01, 0.02, rows)),
    })  # fmt: skip


def evals_table(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per evaluation, the columns of the trainer's ``evals.parquet``."""
    tokens = np.arange(1, rows + 1) * 384_000
    val_loss = 3.0 / np.sqrt(np.arange(1, rows + 1)) + rng.normal(0, 0.01, rows)
    return pd.DataFrame({
        "tokens": tokens, "flops": tokens * 1_250_000, "val_loss": val_loss,
        "val_bpc": val_loss / np.log(2), "decay_factor": rng.uniform(0.5, 1.0, rows),
        "elapsed_s": np.cumsum(rng.uniform(1.0, 2.0, rows)),
    })  # fmt: skip


@hydra.main(version_base="1.3", config_path="toy_tables_conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    objective = (cfg.x - 0.3) ** 2
    for step in range(1, cfg.steps + 1):
        time.sleep(cfg.sleep / cfg.steps)
        if contract.report(objective + 1.0 / step, step * 100, tokens=step * 100, flops=step):
            break
    rng = np.random.default_rng()
    if cfg.step_rows:
        steps_table(cfg.step_rows, rng).to_parquet(run_dir / "steps.parquet", index=False)
    if cfg.eval_rows:
        evals_table(cfg.eval_rows, rng).to_parquet(run_dir / "evals.parquet", index=False)
    contract.write_result({"tokens": step * 100}, run_dir)
    return objective + 1.0 / cfg.steps


if __name__ == "__main__":
    main()
