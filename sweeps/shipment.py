"""Results come home through the study's storage: an agent on another host (no shared
filesystem) packs its trial's job directory into the trial's system attrs before it tells the
outcome; the sweep process unpacks it into its own sweep directory, where ``analysis.load`` and
the report read it as they read any local trial.

The pack is a gzipped tar, base64 text, in chunks of ``CHUNK`` characters (one attr each:
an RDB storage keeps attrs in TEXT columns). Checkpoints travel too (a transfer run continues
its parent's), so a shipped trial costs the storage about its job directory's size.
Unpacking is idempotent and atomic per job (a directory appears whole or not at all), so the
sweep process can unpack every finished trial on each look, and a re-run unpacks what an
interrupted one had not.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
import tarfile
import zlib
from pathlib import Path

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)
CHUNKS_ATTR = "sweeps:files"  # number of chunks; chunk i is CHUNKS_ATTR + f":{i}"
CHUNK = 60_000  # characters: under MySQL's 64 kB TEXT, where Optuna's RDB keeps attrs
MAX_FILE_BYTES = 64 * 2**20  # a larger file (a huge checkpoint) stays on the agent's host


def pack(job_dir: Path) -> tuple[list[str], list[str]]:
    """``job_dir``'s files as base64 chunks, and the names of the files left out (too big)."""
    left_out: list[str] = []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(job_dir.rglob("*")):
            if not path.is_file():
                continue
            name = str(path.relative_to(job_dir))
            if path.stat().st_size > MAX_FILE_BYTES:
                left_out.append(name)
                continue
            tar.add(path, arcname=name)
    text = base64.b64encode(buffer.getvalue()).decode("ascii")
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""], left_out


def ship(storage: BaseStorage, trial_id: int, job_dir: Path) -> None:
    """Store ``job_dir``'s files in the trial (before its outcome is told: attrs of a finished
    trial are read-only)."""
    chunks, left_out = pack(job_dir)
    for i, chunk in enumerate(chunks):
        storage.set_trial_system_attr(trial_id, f"{CHUNKS_ATTR}:{i}", chunk)
    storage.set_trial_system_attr(trial_id, CHUNKS_ATTR, len(chunks))
    if left_out:
        log.warning("left on this host (over %d MB): %s", MAX_FILE_BYTES >> 20, left_out)


def shipped(trial: FrozenTrial) -> bool:
    return CHUNKS_ATTR in trial.system_attrs


class DamagedShipment(ValueError):
    """The trial's shipped files cannot be read back (the storage holds damaged chunks)."""


def unpack(trial: FrozenTrial, job_dir: Path) -> bool:
    """Write the trial's shipped files to ``job_dir`` unless it is there already; True when
    it was written now. Damaged chunks raise ``DamagedShipment`` and leave nothing behind."""
    if not shipped(trial) or job_dir.exists():
        return False
    partial = job_dir.with_name(f".{job_dir.name}.unpacking")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(_packed(trial)), mode="r:gz") as tar:
            _check_sizes(tar)
            tar.extractall(partial, filter="data")  # "data": no absolute paths, links, devices
    except (KeyError, ValueError, TypeError, EOFError, tarfile.TarError, zlib.error) as err:
        shutil.rmtree(partial, ignore_errors=True)
        why = f"trial {trial.number}: its shipped files are damaged: {err}"
        raise DamagedShipment(why) from None
    partial.rename(job_dir)
    return True


def _check_sizes(tar: tarfile.TarFile) -> None:
    """No file larger than ``pack`` ships: a larger one did not come from an agent, and could
    fill the sweep host's disk (its headers say the sizes before anything is written)."""
    for member in tar.getmembers():
        if member.size > MAX_FILE_BYTES:
            raise ValueError(
                f"{member.name} would be {member.size} bytes, over the {MAX_FILE_BYTES} a pack "
                "holds"
            )


def _packed(trial: FrozenTrial) -> bytes:
    count = int(trial.system_attrs[CHUNKS_ATTR])
    text = "".join(str(trial.system_attrs[f"{CHUNKS_ATTR}:{i}"]) for i in range(count))
    return base64.b64decode(text, validate=True)
