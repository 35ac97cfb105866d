"""A journal file checked before Optuna reads or appends to it.

Optuna's ``JournalFileBackend`` skips a bad *last* line (a write cut short by a crash, or a
truncated copy) but appends after it, so the next write glues a record onto the fragment and
from then on every read fails with a JSONDecodeError. So before a journal is opened, under the
same lock Optuna's writers take:

- a bad last line (incomplete, or not a record) never took effect: the file as found is kept
  beside it (``study.journal.damaged-<time>``) and the line is cut off;
- a bad line with records after it is refused: the records after it may depend on it (trial
  numbers count creations), so no automatic repair is safe;
- so is a record of JSON with an op_code that Optuna cannot replay (not of its shape): its
  replay raises on every open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalFileSymlinkLock

from tbptt.errors import ConfigError, summary

log = logging.getLogger(__name__)
# What Optuna's replay of a record not of its shape raises (a missing key, another type, an
# unknown op_code: "Should not reach").
REPLAY_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, AssertionError)


def open_journal(path: Path) -> JournalStorage:
    """The study journal at ``path``, checked (``check_journal``) and replayed; a record that
    Optuna cannot replay is refused by its line number, as a bad line is."""
    check_journal(path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except REPLAY_ERRORS as err:
        counted = _Counted(JournalFileBackend(str(path)))
        with contextlib.suppress(*REPLAY_ERRORS):
            JournalStorage(counted)  # replayed again, counting: the last record read failed
        raise ConfigError(
            f"{path}: line {counted.read} is a journal record Optuna cannot replay "
            f"({summary(err)}); restore a copy of the file, or start a new study in another "
            "hydra.sweep.dir"
        ) from None


class _Counted(BaseJournalBackend):
    """A journal backend's records, counted as they are read."""

    def __init__(self, backend: BaseJournalBackend) -> None:
        self._backend, self.read = backend, 0

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        for record in self._backend.read_logs(log_number_from):
            self.read += 1
            yield record

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._backend.append_logs(logs)


def check_journal(path: Path) -> None:
    """Cut a broken last record off ``path`` (keeping a copy), or raise ``ConfigError`` naming
    the file and line when a broken record has others after it."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a study journal")
    if not path.exists():
        return
    lock = JournalFileSymlinkLock(str(path))
    try:
        lock.acquire()
    except OSError as err:  # a read-only directory: Optuna could not append to it either
        raise ConfigError(f"{path}: cannot lock it for writing: {err.strerror}") from None
    try:
        _repair(path, path.read_bytes())
    except OSError as err:  # unreadable (permissions): say which file, not a traceback
        raise ConfigError(f"{path}: cannot read it: {err.strerror}") from None
    finally:
        lock.release()


def _repair(path: Path, data: bytes) -> None:
    good, line, reason = _valid_prefix(data)
    if good == len(data):
        return
    if b"\n" in data[good:].rstrip(b"\n"):
        after = data[good:].rstrip(b"\n").count(b"\n")
        raise ConfigError(
            f"{path}: line {line} is not a journal record ({reason}) and {after} records follow "
            "it, which may depend on it; restore a copy of the file, or start a new study in "
            "another hydra.sweep.dir"
        )
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    kept.write_bytes(data)
    with open(path, "r+b") as file:
        file.truncate(good)
        os.fsync(file.fileno())
    log.warning("%s: its last line was %s and never took effect; cut it off (the file as "
                "found is kept in %s)", path, reason, kept.name)  # fmt: skip


def _valid_prefix(data: bytes) -> tuple[int, int, str]:
    """Bytes of ``data`` that are whole records; the 1-based number of the first line that is
    not, and why. Lines end at ``\n`` only, as Optuna reads them."""
    offset, number = 0, 1
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            return offset, number, "incomplete: no end of line"
        try:
            record = json.loads(data[offset:end])
        except ValueError:
            return offset, number, "not JSON"
        if not isinstance(record, dict) or "op_code" not in record:
            return offset, number, "JSON without an op_code"
        offset, number = end + 1, number + 1
    return offset, 0, ""
