from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tbptt import config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The real conf/, shrunk: a tiny LSTM on the synthetic `count` corpus trains in well under 1 s.
TINY = [
    "data=count",
    "data.batch_size=4",
    "data.eval_batch_size=2",
    "model.embed_size=8",
    "model.hidden_size=16",
    "model.layers=1",
    "bptt.length=8",
    "trainer.max_tokens=1024",
    "trainer.eval_every_tokens=256",
    "trainer.eval_max_tokens=256",
    "trainer.eval_length=16",
    "trainer.device=cpu",
    "trainer.threads=1",
]

config.register()
torch.set_num_threads(1)


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


@pytest.fixture
def tiny_cfg() -> Callable[..., DictConfig]:
    """Compose the real config shrunk to tiny sizes; extra overrides win."""
    return compose_config
