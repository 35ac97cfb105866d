"""Bad input, table-driven: one line naming the key or file and the bad value, a non-zero exit,
no traceback, and no compute spent. Each case runs the real command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY

TRAIN = [sys.executable, "-m", "tbptt.train", *TINY]
SWEEP = [sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
         "hydra.sweeper.n_trials=2"]  # fmt: skip


def corpus(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return f"data=shakespeare data.path={path}"


class Pickled:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def checkpoints(tmp: Path) -> dict[str, Path]:
    """A trained run, and copies of its directory with a truncated or a pickled checkpoint."""
    good = tmp / "trained"
    subprocess.run([*TRAIN, f"hydra.run.dir={good}"], cwd=ROOT, check=True, capture_output=True)
    dirs = {"good": good}
    for name in ("truncated", "pickled"):
        dirs[name] = tmp / name
        shutil.copytree(good, dirs[name])
    ckpt = dirs["truncated"] / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    torch.save({"model": Pickled()}, dirs["pickled"] / "checkpoint.pt")
    return dirs


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    ck = checkpoints(tmp)
    return {
        "unknown group option": (["clip=sometimes"], "Could not find 'clip/sometimes' (available: none, norm, value)"),
        "misspelled key": (["optim.lrr=0.1"], "Could not override 'optim.lrr': Key 'lrr' not in"),
        "wrong type": (["bptt.length=abc"], "bptt.length=abc: Value 'abc' of type 'str' could not"),
        "lr <= 0": (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
        "k1 < 1": (["bptt.k1=0"], "bptt.k1 must be >= 1, got 0"),
        "k2 < k1": (["bptt.k1=10", "bptt.k2=5"], "bptt.k2 must be >= bptt.k1, got bptt.k2=5 < bptt.k1=10"),
        "probability > 1": (["bptt=random", "bptt.p=1.5"], "bptt.p must be in [0, 1], got 1.5"),
        "negative max_norm": (["clip.max_norm=-1"], "clip.max_norm must be > 0, got -1.0"),
        "negative clip_value": (["clip=value", "clip.clip_value=-0.5"], "clip.clip_value must be > 0, got -0.5"),
        "negative error_clip": (["clip.error_clip=-1"], "clip.error_clip must be >= 0 or null, got -1.0"),
        "missing corpus": ([*f"data=shakespeare data.path={tmp}/none.txt".split()], f"data.path: file not found: {tmp}/none.txt"),
        "empty corpus": (corpus(tmp, "empty.txt", b"").split(), "data.path: file is empty: "),
        "binary corpus": (corpus(tmp, "bin.txt", b"\x00\xff\xfe" * 50).split(), "not UTF-8 text: "),
        "corpus too small": (corpus(tmp, "small.txt", b"abcdefgh" * 4).split(), "training split has 30 characters"),
        "truncated checkpoint": (["trainer.resume=true", f"hydra.run.dir={ck['truncated']}"], "trainer.resume: not a readable checkpoint (truncated?)"),
        "pickled checkpoint": (["trainer.resume=true", f"hydra.run.dir={ck['pickled']}"], "trainer.resume: refused to load"),
        "other model shape": (["trainer.resume=true", "model.hidden_size=24", f"hydra.run.dir={ck['good']}"], "was written for another model shape"),
        "low > high": (["-m", "optim.lr=interval(0.1,0.01)"], "optim.lr"),
        "log with low <= 0": (["-m", "optim.lr=tag(log,interval(0,0.1))"], "log scale needs low > 0"),
        "empty choice": (["-m", "clip=choice()"], "clip"),
        "n_jobs < 1": (["-m", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs must be >= 1, got 0"),
        "unknown storage scheme": (["-m", "hydra.sweeper.storage=ftp://u:pw@h/x"], "hydra.sweeper.storage: unknown scheme 'ftp' in ftp://u:***@h/x"),
        "unreachable storage": (["-m", "hydra.sweeper.storage=postgresql://u:pw@127.0.0.1:9/x"], "hydra.sweeper.storage: cannot open postgresql://u:***@127.0.0.1:9/x"),
    }  # fmt: skip


def command(args: list[str], run_dir: Path) -> list[str]:
    if args and args[0] == "-m":
        return [*SWEEP, *args[1:], f"hydra.sweep.dir={run_dir}"]
    if any(a.startswith("hydra.run.dir=") for a in args):
        return [*TRAIN, *args]
    return [*TRAIN, *args, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    table = cases(tmp)

    def run(name: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        run_dir = tmp / "runs" / str(CASES.index(name))
        cmd = command(table[name][0], run_dir)
        return name, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True), run_dir

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = {name: (proc, run_dir) for name, proc, run_dir in pool.map(run, table)}
    return table, results


CASES = [
    "unknown group option", "misspelled key", "wrong type", "lr <= 0", "k1 < 1", "k2 < k1",
    "probability > 1", "negative max_norm", "negative clip_value", "negative error_clip",
    "missing corpus", "empty corpus", "binary corpus", "corpus too small",
    "truncated checkpoint", "pickled checkpoint", "other model shape", "low > high",
    "log with low <= 0", "empty choice", "n_jobs < 1", "unknown storage scheme",
    "unreachable storage",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_in_one_line_before_any_compute(outcomes, name):
    table, results = outcomes
    proc, run_dir = results[name]
    expected = table[name][1]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "pickled code ran" not in proc.stdout
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], lines[-1:]
    assert ":pw@" not in proc.stdout + proc.stderr  # storage passwords never printed
    assert not list(run_dir.glob("**/steps.parquet"))  # nothing was trained
