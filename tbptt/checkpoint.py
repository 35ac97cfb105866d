"""Checkpoints written atomically and loaded with ``weights_only=True`` (no arbitrary pickles)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tbptt.errors import ConfigError


def save(payload: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous checkpoint intact


def load(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{key}: refused to load {path}: {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"{key}: not a readable checkpoint (truncated?): {path}: {err}"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise ConfigError(f"{key}: {path} is not a tbptt checkpoint")
    return payload


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
