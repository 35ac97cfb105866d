"""Per-run metric tables, written as Parquet with atomic replaces, and their schema.

A run appends rows in memory and ``flush()`` rewrites each table to a temporary file that is
renamed over the old one, so a reader (or a crash) never sees a half-written file.

``COLUMNS`` is the one statement of what each table holds: the trainer writes these columns in
this order, ``analysis.load`` reads them with these dtypes (after its ``trial`` column), and the
README's table of run files is checked against it. A run adds to ``steps`` one
``grad_norm_<part>`` column per part of the model (``embed``, ``rnn0``.., ``decoder``) before
``elapsed_s``, and ``error_clipped`` / ``error_max`` / ``error_mean`` with error clipping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS: dict[str, dict[str, str]] = {
    "steps": {
        "tokens": "int64", "flops": "int64", "update": "int64", "loss": "float64",
        "grad_norm": "float64", "grad_norm_clipped": "float64", "clipped": "bool",
        "lr": "float64", "k1": "int64", "k2": "int64", "hidden_norm": "float64",
        "elapsed_s": "float64",
    },
    "evals": {
        "tokens": "int64", "flops": "int64", "val_loss": "float64", "val_bpc": "float64",
        "decay_factor": "float64", "elapsed_s": "float64",
    },
    "grad_flow": {
        "tokens": "int64", "lag": "int64", "grad_norm": "float64", "decay_factor": "float64",
    },
}  # fmt: skip
TABLES = tuple(COLUMNS)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block ends,
    removed if it fails (a full disk, a kill by exception): never a half file, no leftovers."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


class MetricsLog:
    """Tidy tables of one run: ``steps`` (one row per update) and ``evals`` (one per evaluation).

    Args:
        directory: where ``steps.parquet`` and ``evals.parquet`` are written.

    Example:
        >>> log = MetricsLog(tmp_path); log.add("steps", tokens=320, loss=4.1); log.flush()
        >>> pd.read_parquet(tmp_path / "steps.parquet").to_dict("records")
        [{'tokens': 320, 'loss': 4.1}]
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}

    def add(self, table: str, **row: Any) -> None:
        self._rows[table].append(row)

    def path(self, table: str) -> Path:
        return self.directory / f"{table}.parquet"

    def flush(self) -> None:
        for name, rows in self._rows.items():
            if rows:  # pyarrow straight from the rows: twice as fast as through a DataFrame
                with atomic_path(self.path(name)) as tmp:
                    pq.write_table(pa.Table.from_pylist(rows), tmp)

    def restore(self, up_to_tokens: int) -> None:
        """Reload tables written by an interrupted run, keeping rows up to its checkpoint."""
        for name in TABLES:
            if self.path(name).exists():
                frame = pd.read_parquet(self.path(name))
                kept = frame[frame["tokens"] <= up_to_tokens]
                self._rows[name] = kept.to_dict("records")
