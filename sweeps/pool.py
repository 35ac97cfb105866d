"""A pool of long-lived worker processes, each running one job at a time.

Why not ``concurrent.futures`` or loky: when one of their workers dies (SIGKILL, out of
memory), the whole executor is declared broken and every other running job is lost with it.
Here each worker has its own pipe and its own process sentinel, so the death of one worker
fails only the job it held, and a fresh worker takes its place.

Workers are started once (``spawn``) and reused, so ``import torch`` is paid per worker, not per
job. A worker exits by itself when its parent dies, so a killed sweep leaves no orphans.

The runner reaches the workers pickled (cloudpickle), in a file: unpickling runs code, so a
worker unpickles only the bytes this pool wrote, checked against their SHA-256, which it gets
from the pool directly. A file put in its place (a sweep directory received from elsewhere
holds one, ``.runner.pkl``) is never unpickled; the pool writes its own anew, replacing any
file or link found there, never writing through it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import cloudpickle

from tbptt.errors import summary

Runner = Callable[[Any], Any]  # job -> result, executed inside a worker


@dataclass(frozen=True)
class Finished:
    slot: int
    job: Any
    result: Any


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit, as full


@dataclass(frozen=True)
class Died:
    slot: int
    job: Any
    exitcode: int | None
    reason: str | None = None  # what the worker said as it died, if it could


@dataclass(frozen=True)
class Crashed:
    """Sent by a worker whose job raised out of the runner, just before it exits."""

    reason: str


def _exit_with_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def worker_main(
    conn: Connection, runner_file: str, digest: str, env: Mapping[str, str], parent: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see WorkerPool._start
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.environ.update(env)  # before the runner is unpickled, i.e. before torch is imported
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    payload = Path(runner_file).read_bytes()
    if hashlib.sha256(payload).hexdigest() != digest:  # not what the pool wrote: never unpickled
        conn.send(Crashed(f"{runner_file}: changed since this sweep wrote it; not unpickled"))
        os._exit(1)
    runner: Runner = cloudpickle.loads(payload)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            result = runner(job)
        except BaseException as exc:  # the worker dies of it: say why first (stderr is shared)
            with contextlib.suppress(OSError):
                conn.send(Crashed(summary(exc)))
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                os._exit(1)  # no traceback: the sweep says it in one line, and stops
            raise
        conn.send(result)


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a file of this process's own at ``path`` (readable by its owner only):
    whatever was there, a file or a link, is removed first, never written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


class WorkerPool:
    """``size`` worker processes that run ``runner(job)``; dead workers are replaced.

    Args:
        runner: called in the worker with each job; must be picklable by cloudpickle.
        size: number of workers, >= 1.
        env_for: environment variables of the worker in a slot (e.g. its GPU).
        payload: where the pickled runner is kept while the pool lives (None: a temporary
            file); a fixed path, such as one in the locked sweep directory, cannot pile up
            copies when a killed sweep leaves its own behind.

    Example:
        >>> with WorkerPool(str.upper, size=1) as pool:
        ...     slot = pool.submit("job")
        ...     [event.result for event in pool.wait(timeout=60)]
        ['JOB']
    """

    def __init__(
        self,
        runner: Runner,
        size: int,
        env_for: Callable[[int], dict[str, str]] | None = None,
        payload: Path | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1, got {size}")
        # The runner travels through a file, not the spawn pipe: a large payload would block
        # Process.start() until the child has imported its modules, one worker after another.
        if payload is None:
            fd, name = tempfile.mkstemp(prefix="tbptt-runner-", suffix=".pkl")
            os.close(fd)
            payload = Path(name)
        self._payload = str(payload)
        pickled = cloudpickle.dumps(runner)
        self._digest = hashlib.sha256(pickled).hexdigest()
        try:
            write_new(payload, pickled)
        except BaseException:  # a full disk: leave no half payload behind
            payload.unlink(missing_ok=True)
            raise
        self._env_for = env_for or (lambda slot: {})
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = [None] * size
        self._conns: list[Connection | None] = [None] * size
        self._jobs: list[Any] = [None] * size
        for slot in range(size):
            self._start(slot)

    def _start(self, slot: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        args = (child_conn, self._payload, self._digest, self._env_for(slot), os.getpid())
        proc = self._ctx.Process(target=worker_main, args=args, daemon=True)
        # Ctrl-C reaches the whole process group, but only the sweep process should react (it
        # stops the workers). SIGINT is blocked while the worker starts, so the worker inherits
        # the block and ignores the signal before unblocking it; here a Ctrl-C that arrives
        # meanwhile stays pending and is delivered once the block is lifted, not lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child_conn.close()
        self._procs[slot], self._conns[slot], self._jobs[slot] = proc, parent_conn, None

    @property
    def size(self) -> int:
        return len(self._procs)

    def free_slots(self) -> list[int]:
        return [slot for slot, job in enumerate(self._jobs) if job is None]

    def jobs(self) -> list[Any]:
        """The jobs running now."""
        return [job for job in self._jobs if job is not None]

    def busy(self) -> int:
        return self.size - len(self.free_slots())

    def submit(self, job: Any, slot: int | None = None) -> int:
        slot = self.free_slots()[0] if slot is None else slot
        conn = self._conns[slot]
        assert conn is not None and self._jobs[slot] is None
        try:
            conn.send(job)
        except (BrokenPipeError, OSError):  # the worker died while idle: replace it
            self._procs[slot].join(timeout=5)
            self._start(slot)
            conn = self._conns[slot]
            assert conn is not None
            conn.send(job)
        self._jobs[slot] = job
        return slot

    def wait(self, timeout: float) -> list[Finished | Died]:
        """Results of finished jobs and deaths of workers, waiting at most ``timeout`` s."""
        busy = [s for s in range(self.size) if self._jobs[s] is not None]
        handles = {self._conns[s]: s for s in busy} | {self._procs[s].sentinel: s for s in busy}
        events: list[Finished | Died] = []
        for ready in wait(list(handles), timeout):
            slot = handles[ready]
            if self._jobs[slot] is None:
                continue  # both its pipe and its sentinel were ready: already handled
            events.append(self._collect(slot))
        return events

    def _collect(self, slot: int) -> Finished | Died:
        job, conn = self._jobs[slot], self._conns[slot]
        assert conn is not None
        try:
            result = conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            result = None
        if result is not None and not isinstance(result, Crashed):
            self._jobs[slot] = None
            return Finished(slot, job, result)
        proc = self._procs[slot]
        proc.join(timeout=5)
        self._start(slot)  # the replacement worker starts importing while the sweep goes on
        return Died(slot, job, proc.exitcode, result.reason if result is not None else None)

    def close(self, kill: bool = False) -> None:
        """Stop the workers: idle ones exit cleanly; busy ones are killed when ``kill``."""
        for slot, conn in enumerate(self._conns):
            if conn is not None and self._jobs[slot] is None:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for proc in self._procs:
            proc.join(timeout=0.1 if kill else 5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        Path(self._payload).unlink(missing_ok=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
