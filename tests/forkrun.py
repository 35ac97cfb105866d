"""Many ``python -m MODULE ARGS...`` command lines, each in a process forked from one that has
imported the module's dependencies once.

A command line of this project spends about 1.5 s of its 2.3 s importing torch, pandas, Hydra
and Optuna before it reads its first argument. Tables of bad-input cases run dozens of them;
forked from a process that imported all that, each child is still a fresh ``python -m`` (its own
``sys.argv``, ``__main__``, working directory, stdout/stderr and exit code, and nothing it does
reaches its siblings), and costs a fraction of a second. Run as a script::

    python -m tests.forkrun MODULE,MODULE... < jobs.json > results.json

where a job is ``{"module": ..., "args": [...], "cwd": ..., "out": path, "err": path}`` and a
result its exit code. ``run_many`` does that for a test.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PARALLEL = 2  # children at a time: the cores of the machine CI runs on


def _child(job: dict[str, Any]) -> int:
    """Runs in the forked child: the job's own cwd, argv and output files, as ``python -m``."""
    os.chdir(job["cwd"])
    for fd, path in ((1, job["out"]), (2, job["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["-m", *job["args"]]
    code = 0
    try:
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, exit code 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(jobs: list[dict[str, Any]]) -> list[int]:
    codes: list[int] = [0] * len(jobs)
    running: dict[int, int] = {}
    for index, job in enumerate(jobs):
        if len(running) >= PARALLEL:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(job))
        running[pid] = index
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return codes


def run_many(
    module: str, commands: Sequence[Sequence[str]], cwd: Path, scratch: Path,
    preload: Sequence[str] = ("torch", "pandas", "optuna", "hydra", "sweeps.sweeper"),
) -> list[subprocess.CompletedProcess[str]]:
    """``python -m module *args`` for each of ``commands``, as CompletedProcess objects.
    ``preload``: imported once before the forks (not ``module`` itself: ``python -m`` runs it
    as ``__main__`` only)."""
    scratch.mkdir(parents=True, exist_ok=True)
    jobs = [
        {"module": module, "args": list(args), "cwd": str(cwd),
         "out": str(scratch / f"{i}.out"), "err": str(scratch / f"{i}.err")}
        for i, args in enumerate(commands)
    ]  # fmt: skip
    server = subprocess.run(
        [sys.executable, "-m", "tests.forkrun", ",".join(preload)], cwd=cwd,
        input=json.dumps(jobs), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if server.returncode != 0:
        raise RuntimeError(f"tests.forkrun failed: {server.stderr[-3000:]}")
    codes = json.loads(server.stdout.strip().splitlines()[-1])
    return [
        subprocess.CompletedProcess(
            [sys.executable, "-m", module, *job["args"]], code,
            Path(job["out"]).read_text(), Path(job["err"]).read_text(),
        )
        for job, code in zip(jobs, codes, strict=True)
    ]


if __name__ == "__main__":
    for name in sys.argv[1].split(","):  # what every child would import first
        importlib.import_module(name)
    results = serve(json.load(sys.stdin))
    print(json.dumps(results))
