"""Configs as flat dotted keys, and what differs between two of them (for one-line errors)."""

from __future__ import annotations

from typing import Any


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested container as dotted keys: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``."""
    if not (isinstance(node, dict) and node):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, child in node.items():
        flat.update(flatten(child, f"{prefix}{key}."))
    return flat


def differences(before: dict[str, Any], after: dict[str, Any], limit: int = 5) -> str:
    """``key=old (this run: new)`` for each key whose value differs, at most ``limit``."""
    unset = "(unset)"
    changed = [
        f"{key}={before.get(key, unset)} (this run: {after.get(key, unset)})"
        for key in sorted(set(before) | set(after))
        if before.get(key, unset) != after.get(key, unset)
    ]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more
