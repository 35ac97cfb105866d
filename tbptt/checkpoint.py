"""Checkpoints written atomically and loaded with ``weights_only=True`` (no arbitrary pickles)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tbptt.errors import ConfigError, first_line
from tbptt.metrics import atomic_path


def save(payload: dict[str, Any], path: str | Path) -> None:
    with atomic_path(Path(path)) as tmp:  # a crash mid-save leaves the previous one intact
        torch.save(payload, tmp)


UNREADABLE = (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError)


def load(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    """The payload of the checkpoint at ``path``; ``ConfigError`` naming ``key`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise ConfigError(f"{key}: checkpoint not found: {path}")
    unreadable = f"{key}: not a readable checkpoint (truncated, or another kind of file): {path}"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end
        raise ConfigError(unreadable)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a pickle that would run code, or garbage
        raise ConfigError(f"{key}: refused to load {path}: {first_line(err)}") from None
    except UNREADABLE as err:
        raise ConfigError(f"{unreadable}: {first_line(err)}") from None
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
