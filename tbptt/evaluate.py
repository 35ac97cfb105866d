"""Loss of a model on a split, and of a saved checkpoint on its corpus's full val or test split.

``python -m tbptt.evaluate checkpoint=PATH [split=test]`` prints the mean loss (nats/char) of a
run's ``best.pt`` or ``checkpoint.pt`` on the whole validation or test split of the corpus it
was trained on (the checkpoint stores its data settings, so the split is rebuilt exactly).
Training never sees the test split; this is the only place that reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tbptt import checkpoint
from tbptt.errors import ConfigError
from tbptt.model import CharRNN

SPLITS = ("val", "test")
MODEL_META = {"vocab", "model"}  # what a checkpoint's meta says of its model


@torch.no_grad()
def mean_loss(
    model: CharRNN, data: torch.Tensor, max_tokens: int | None = None, length: int = 128
) -> float:
    """Mean next-character loss (nats) over ``data`` (T, B), walked in windows of ``length``
    from a zero state; ``max_tokens`` reads only a prefix (all of it when None)."""
    model.eval()
    limit = data.size(0) - 1
    rows = limit if max_tokens is None else min(limit, max(1, max_tokens // data.size(1)))
    hidden = model.init_hidden(data.size(1))
    total, count = 0.0, 0
    for i in range(0, rows, length):
        n = min(length, rows - i)
        logits, hidden = model(data[i : i + n], hidden)  # (n, B, V)
        target = data[i + 1 : i + n + 1]  # (n, B)
        total += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
        count += target.numel()
    return total / count


def load_model(
    payload: dict[str, Any], path: str | Path = "the checkpoint", key: str = "checkpoint"
) -> CharRNN:
    """The model a checkpoint's ``payload`` (``checkpoint.load``) holds, built as its ``meta``
    describes; a ConfigError naming ``key`` and ``path`` when the payload is not one that
    ``tbptt.train`` wrote, its weights do not fit the model it describes, or they are not finite
    (a diverged run's last state: its best.pt holds the best weights)."""
    meta: Any = payload.get("meta")
    weights = payload.get("model")
    if not _describes_a_model(meta) or not isinstance(weights, dict):
        raise ConfigError(
            f"{key}: {path} is not a tbptt checkpoint (it needs model weights and their meta: "
            f"{', '.join(sorted(MODEL_META))})"
        )
    try:
        model = CharRNN(len(meta["vocab"]), **meta["model"])
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as err:
        why = checkpoint.mismatch(err) if isinstance(err, RuntimeError) else err
        raise ConfigError(
            f"{key}: {path}: its weights do not fit the model its meta describes ({why})"
        ) from None
    for name, tensor in model.state_dict().items():
        if not bool(torch.isfinite(tensor).all()):
            raise ConfigError(
                f"{key}: {path} holds non-finite weights ({name}): its run diverged; "
                "its best.pt holds the best weights"
            )
    return model


def _describes_a_model(meta: Any) -> bool:
    if not isinstance(meta, dict) or not MODEL_META <= set(meta):
        return False
    return isinstance(meta["vocab"], str) and isinstance(meta["model"], dict)


def evaluate_checkpoint(
    path: str | Path, splits: tuple[str, ...] = SPLITS, key: str = "checkpoint"
) -> dict[str, float]:
    """Loss of the checkpoint at ``path`` on each whole split of its own corpus."""
    from tbptt.config import corpus_from_meta  # the config layer knows how data is rebuilt

    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    payload = checkpoint.load(path, key=key)
    model = load_model(payload, path, key)
    if "data" not in payload["meta"]:
        raise ConfigError(f"{key}: {path} does not record its data settings (an older run)")
    corpus = corpus_from_meta(payload["meta"])
    if corpus.vocab.chars != payload["meta"]["vocab"]:  # its file was edited since
        raise ConfigError(
            f"{key}: {path}: its corpus, rebuilt from the data settings it records, has "
            f"{len(corpus.vocab.chars)} characters where the model knows "
            f"{len(payload['meta']['vocab'])}: it changed since the run"
        )
    losses = {}
    for split in splits:
        data = corpus.val if split == "val" else corpus.test
        if data is None:
            raise ConfigError(f"{key}: {path} has no test split (data.test_fraction=0)")
        losses[split] = mean_loss(model, data)
    return losses


def main(argv: list[str]) -> str:
    pairs = dict(arg.partition("=")[::2] for arg in argv)
    unknown = sorted(set(pairs) - {"checkpoint", "split"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; use checkpoint=PATH [split=val|test]")
    if "checkpoint" not in pairs:
        raise ConfigError("checkpoint=PATH is required (a run's best.pt or checkpoint.pt)")
    split = pairs.get("split", "test")
    loss = evaluate_checkpoint(pairs["checkpoint"], (split,))[split]
    return f"{split}_loss={loss:.4f} nats/char ({loss / 0.6931471805599453:.4f} bits/char)"


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        print(main(sys.argv[1:]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
