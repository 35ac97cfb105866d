"""A journal file checked before Optuna reads or appends to it.

Optuna's ``JournalFileBackend`` skips a bad *last* line (a write cut short by a crash, or a
truncated copy) but appends after it, so the next write glues a record onto the fragment and
from then on every read fails with a JSONDecodeError. So before a journal is opened, under the
same lock Optuna's writers take:

- a bad last line (incomplete, or not a record) never took effect: the file as found is kept
  beside it (``study.journal.damaged-<time>``) and the line is cut off;
- a bad line with records after it is refused: the records after it may depend on it (trial
  numbers count creations), so no automatic repair is safe.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from tbptt.errors import ConfigError

log = logging.getLogger(__name__)


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
