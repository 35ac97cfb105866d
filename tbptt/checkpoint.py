"""Checkpoints written atomically and loaded with ``weights_only=True`` (no arbitrary pickles).

A run's directory holds ``checkpoint.pt`` (everything a resumed run needs: ``Trainer.state_dict``)
and ``best.pt`` (the weights of the best validation loss, with where they were taken), both
rewritten at every evaluation by the ``Checkpoints`` handler.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbptt.errors import ConfigError, first_line
from tbptt.keys import differences
from tbptt.metrics import atomic_path

if TYPE_CHECKING:
    from tbptt.trainer import EvalPoint, Trainer

BEST_CHECKPOINT = "best.pt"  # beside checkpoint.pt: the weights of the best validation loss
RESUME_KEYS = ("model", "optimizer", "schedule", "ahead", "state", "states", "rng")


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
        raise ConfigError(f"{key}: refused to load {path}: {_refusal(err)}") from None
    except UNREADABLE:  # torch's own words name its C++ source lines, not the file's fault
        raise ConfigError(unreadable) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise ConfigError(f"{key}: {path} is not a tbptt checkpoint")
    return payload


def _refusal(err: pickle.UnpicklingError) -> str:
    """Why torch refused a pickle, without its advice to load it with ``weights_only=False``
    (which would run the code in it): the line that names what it holds."""
    lines = [line.strip() for line in str(err).splitlines()]
    why = next((line for line in lines if line.startswith("WeightsUnpickler error:")), None)
    if why is None:
        return first_line(err)
    found = why.removeprefix("WeightsUnpickler error:").strip().split(". ")[0]
    return f"it holds more than weights ({found})"


def mismatch(err: RuntimeError) -> str:
    """The first difference ``load_state_dict`` lists (its message's first line only says that
    there are some)."""
    lines = str(err).splitlines()
    return lines[1].strip() if len(lines) > 1 else first_line(err)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """Evaluation handler (``Trainer.on(Events.RECORDED, Checkpoints(path))``): the run's
    state to ``path`` at every evaluation, and its weights to ``best.pt`` beside it whenever
    the validation loss improved (small corpora overfit within minutes: keep the best weights,
    not only the last).

    Args:
        path: the checkpoint file, ``checkpoint.pt`` in the run directory.

    Example:
        >>> trainer.on(Events.RECORDED, Checkpoints(tmp_path / "checkpoint.pt"))
        >>> _ = trainer.fit(); sorted(p.name for p in tmp_path.glob("*.pt"))
        ['best.pt', 'checkpoint.pt']
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, trainer: Trainer, point: EvalPoint) -> None:
        save(trainer.state_dict(), self.path)
        if point.improved:
            at = {"tokens": point.tokens, "flops": point.flops, "val_loss": point.val_loss}
            best = {"model": trainer.model.state_dict(), "meta": trainer.meta, "at": at}
            save(best, self.path.with_name(BEST_CHECKPOINT))


def resume(trainer: Trainer, path: Path) -> None:
    """Continue ``trainer`` from the checkpoint at ``path``, written under its settings
    (``trainer.meta["settings"]``); its tables are cut back to the checkpoint's rows. What
    follows equals an uninterrupted run; anything else is a ConfigError naming the file."""
    payload = load(path, key="trainer.resume")
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise ConfigError(
            f"trainer.resume: {path} holds no {missing[0]} (weights only, as best.pt): "
            "it cannot be resumed"
        )
    stored, mine = payload.get("meta", {}).get("settings"), trainer.meta.get("settings")
    if stored is not None and mine is not None and stored != mine:
        raise ConfigError(
            f"trainer.resume: {path} was written with {differences(stored, mine)}: resume "
            "with those settings, or train in a new run directory"
        )
    try:  # the weights first, on their own: another model shape is the likeliest mismatch
        trainer.model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ConfigError(
            f"trainer.resume: {path} was written for another model shape ({mismatch(err)})"
        ) from None
    try:
        trainer.load_state_dict(payload)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:  # an older checkpoint
        raise ConfigError(
            f"trainer.resume: {path} was written with another optimizer or schedule ({err})"
        ) from None
    trainer.log.restore(up_to_tokens=trainer.state.tokens)
