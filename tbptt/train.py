"""Hydra entry point: ``python -m tbptt.train [overrides]`` (add ``-m`` for a multirun).

Only this module reads the config: it validates every group, builds plain objects (corpus,
model, optimizer, clipper, schedule) and hands them to the trainer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tbptt import config
from tbptt.data import Corpus, build_corpus
from tbptt.errors import ConfigError
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN
from tbptt.trainer import Budget, EvalCallback, RunResult, Trainer

log = logging.getLogger(__name__)
config.register()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}, but no CUDA device is available")
    return torch.device(name)


def typed(cfg: DictConfig) -> dict[str, Any]:
    """Every group as its schema dataclass; runs the value checks of tbptt/config.py."""
    typed_cfg = OmegaConf.to_object(cfg)
    assert isinstance(typed_cfg, dict)
    return {str(key): value for key, value in typed_cfg.items()}


def load_corpus(data: config.DataSource, schedule_window: int, eval_length: int) -> Corpus:
    text, source = data.load_text()
    return build_corpus(
        text,
        source=source,
        val_fraction=data.val_fraction,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        window=schedule_window,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, on_eval: list[EvalCallback]) -> Trainer:
    c = typed(cfg)
    schedule, clipper, trainer_cfg = c["bptt"].build(c["seed"]), c["clip"].build(), c["trainer"]
    device = resolve_device(trainer_cfg.device)
    corpus = load_corpus(c["data"], schedule.max_k2, trainer_cfg.eval_length).to(device)
    if trainer_cfg.threads is not None:
        torch.set_num_threads(trainer_cfg.threads)
    torch.manual_seed(c["seed"])
    model_kwargs = {k: getattr(c["model"], k) for k in c["model"].__dataclass_fields__}
    model = CharRNN(len(corpus.vocab), **model_kwargs).to(device)
    optimizer = instantiate(cfg.optim, _convert_="all")(model.parameters())
    budget = Budget(
        trainer_cfg.max_tokens,
        trainer_cfg.eval_every_tokens,
        trainer_cfg.eval_max_tokens,
        trainer_cfg.eval_length,
    )
    trainer = Trainer(
        model,
        optimizer,
        clipper,
        schedule,
        corpus,
        budget,
        MetricsLog(run_dir),
        checkpoint_path=run_dir / "checkpoint.pt" if trainer_cfg.checkpoint else None,
        on_eval=on_eval,
        meta={"vocab": corpus.vocab.chars, "model": model_kwargs},
    )
    if trainer_cfg.resume:
        trainer.resume(run_dir / "checkpoint.pt")
    return trainer


def run(cfg: DictConfig, run_dir: Path, on_eval: list[EvalCallback] | None = None) -> RunResult:
    """Validate ``cfg``, train, and return the result; metric tables land in ``run_dir``."""
    trainer = build_trainer(cfg, run_dir, on_eval or [])
    result = trainer.fit()
    if result.stop_reason:
        log.warning("stopped early: %s", result.stop_reason)
    log.info(
        "tokens=%d best_val_loss=%.4f final_val_loss=%.4f (%.1fs)",
        result.tokens,
        result.best_val_loss,
        result.final_val_loss,
        result.wall_seconds,
    )
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        result = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return result.objective(cfg.trainer.objective)


if __name__ == "__main__":
    main()
