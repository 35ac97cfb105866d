"""Hydra entry point: ``python -m tbptt.train [overrides]`` (add ``-m`` for a multirun).

Only this module reads the config: it validates every group, builds plain objects (corpus,
model, optimizer, clipper, schedule) with each group's ``build()`` and hands them to the
trainer, with the evaluation handlers the config asks for (gradient flow, checkpoints).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tbptt import checkpoint, config, contract
from tbptt.checkpoint import Checkpoints
from tbptt.cli import run_app
from tbptt.clipping import Clipping
from tbptt.contract import TrialResult
from tbptt.diagnostics import GradFlow
from tbptt.errors import ConfigError, first_line
from tbptt.keys import flatten
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN
from tbptt.schedule import Schedule
from tbptt.trainer import (
    Budget,
    Divergence,
    EvalCallback,
    EvalPoint,
    Events,
    StopRun,
    Trainer,
)

log = logging.getLogger(__name__)
config.register()


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU. A recurrent net driven into saturation (a
    high learning rate) fills its gates' gradients with subnormals, which x86 computes about
    16x slower: a 400k-character run at lr 0.3 took 69 s instead of 4.3 s, with the same
    losses to the printed digits. The setting is the CPU's (it changes nothing on CUDA)."""
    torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}, but no CUDA device is available")
    return torch.device(name)


def typed(cfg: DictConfig) -> dict[str, Any]:
    """Every group as its schema dataclass (running the schemas' own checks) and the seed,
    checked; a ValueError becomes the one-line ConfigError."""
    with config_errors():
        c = {
            str(key): OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
            for key, node in ((key, cfg[key]) for key in cfg if key != "hydra")
        }
    config.check_seed(c.get("seed", 0))
    return c


@contextmanager
def config_errors() -> Iterator[None]:
    """A ValueError raised while a config is turned into objects is bad input: the library
    objects check their own arguments and name the key; say it in one line."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(first_line(err)) from None


def optim_extra(cfg: DictConfig) -> dict[str, Any]:
    """Optimizer arguments added on the command line (``+optim.amsgrad=true``): keys of
    ``optim`` that its schema does not list (``OmegaConf.to_object`` drops them)."""
    known = {f.name for f in fields(OmegaConf.get_type(cfg.optim))}  # type: ignore[arg-type]
    node = OmegaConf.to_container(cfg.optim, resolve=True)
    assert isinstance(node, dict)
    return {str(k): v for k, v in node.items() if k not in known}


@dataclass(frozen=True, kw_only=True)
class Parts:
    """What a config builds before any data is read; building them checks every value."""

    schedule: Schedule
    clipping: Clipping
    budget: Budget
    divergence: Divergence


def build_parts(cfg: DictConfig, c: dict[str, Any]) -> Parts:
    """The cheap objects of ``c`` (``typed(cfg)``), the optimizer tried on a probe tensor."""
    with config_errors():
        c["optim"].build([torch.zeros(1, requires_grad=True)], optim_extra(cfg))
        budget, divergence = c["trainer"].build()
        return Parts(schedule=c["bptt"].build(c["seed"]), clipping=c["clip"].build(),
                     budget=budget, divergence=divergence)  # fmt: skip


def build_model(model_cfg: config.ModelConfig, vocab_size: int, seed: int) -> CharRNN:
    torch.manual_seed(seed)  # the initial weights depend on the seed alone
    try:
        return model_cfg.build(vocab_size)
    except (RuntimeError, MemoryError) as err:  # the weights do not fit in memory
        shape = f"{model_cfg.layers}x{model_cfg.hidden_size}, embed {model_cfg.embed_size}"
        raise ConfigError(f"model ({shape}): cannot build it: {first_line(err)}") from None


RESUMED_GROUPS = ("model", "data", "optim", "bptt", "clip", "seed")  # a resume keeps these


def resume_settings(cfg: DictConfig) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: every setting but ``trainer``'s
    (budgets, cadence, threads may change; a budgeted sweep continues runs that way)."""
    kept = {key: cfg[key] for key in RESUMED_GROUPS if key in cfg}
    flat = flatten(OmegaConf.to_container(OmegaConf.create(kept), resolve=True))
    return json.loads(json.dumps(flat, default=str))  # type: ignore[no-any-return]


def build_trainer(cfg: DictConfig, run_dir: Path, on_eval: list[EvalCallback]) -> Trainer:
    """Validate ``cfg`` (every check runs before any data is read or compute spent), then
    build the objects the trainer takes."""
    c = typed(cfg)
    parts, tc = build_parts(cfg, c), c["trainer"]
    device = resolve_device(tc.device)
    flush_denormals()
    # Training never sees the test split: it is held out for `python -m tbptt.evaluate`.
    corpus = c["data"].build(parts.schedule.max_k2).without_test().to(device)
    if tc.threads is not None and not contract.sweeping():  # a sweeper sets its workers'
        torch.set_num_threads(tc.threads)
    model = build_model(c["model"], len(corpus.vocab), c["seed"]).to(device)
    trainer = Trainer(
        model=model,
        optimizer=c["optim"].build(model.parameters(), optim_extra(cfg)),
        clipper=parts.clipping.grad,
        schedule=parts.schedule,
        corpus=corpus,
        budget=parts.budget,
        log=MetricsLog(run_dir),
        loss_window=c["bptt"].loss_window,
        error_clip=parts.clipping.error,
        divergence=parts.divergence,
        on_eval=on_eval,
        meta={
            "vocab": corpus.vocab.chars,
            "model": vars(c["model"]),
            "data": c["data"].meta(),
            "settings": resume_settings(cfg),
        },
    )
    if tc.grad_flow:
        trainer.on(Events.MEASURED, GradFlow())
    if tc.checkpoint:
        trainer.on(Events.RECORDED, Checkpoints(run_dir / "checkpoint.pt"))
    if tc.resume:
        checkpoint.resume(trainer, run_dir / "checkpoint.pt")
    return trainer


def run(cfg: DictConfig, run_dir: Path, on_eval: list[EvalCallback] | None = None) -> TrialResult:
    """Validate ``cfg``, train, and return the result; metric tables land in ``run_dir``."""
    trainer = build_trainer(cfg, run_dir, on_eval or [])
    result = trainer.fit()
    if result.stop_reason:
        log.warning("stopped early: %s", result.stop_reason)
    log.info(
        "tokens=%d flops=%.3g best_val_loss=%.4f final_val_loss=%.4f (%.1fs)",
        result.tokens,
        result.flops,
        result.best_val_loss,
        result.final_val_loss,
        result.wall_seconds,
    )
    return result


def report_to_sweeper(point: EvalPoint) -> None:
    """The trainer's eval callback: each evaluation goes to the sweeper (tbptt/contract.py),
    which may stop the run (pruned, out of time)."""
    reason = contract.report(point.val_loss, point.step, tokens=point.tokens, flops=point.flops,
                             final=point.final)  # fmt: skip
    if reason:
        raise StopRun(reason)


def check(cfg: DictConfig) -> None:
    """What the sweeper validates every trial's config with before it trains: every group's
    values, and that a corpus file can be read."""
    c = typed(cfg)
    build_parts(cfg, c)
    if isinstance(c["data"], config.FileDataConfig):
        c["data"].check_source()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@contract.checked_by(check)
def main(cfg: DictConfig) -> float | None:
    """Train one run; its objective is the best (or final) validation loss. A bad config
    raises ``ConfigError``: the command line (``run_app``) prints it in one line and exits 2,
    a sweep records its message as the trial's failure."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run(cfg, run_dir, [report_to_sweeper])
    return result.objective(cfg.trainer.objective)


if __name__ == "__main__":
    run_app(main)
