"""Bad input, table-driven: one line naming the key or file and the bad value, a non-zero exit,
no traceback, and no compute spent. Each case runs the real command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.forkrun import run_many

# Each case is a real command line, forked from a process that imported its modules once.
PRELOAD = ("torch", "torch._dynamo", "pandas", "optuna", "hydra", "sweeps.sweeper", "tbptt.train")
# torch._dynamo: torch imports it (0.9 s) on the first optimizer a process builds.
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
    """A trained run, and copies of its directory whose checkpoint.pt is truncated, pickled
    code, a text file, a directory, or weights only (best.pt)."""
    good = tmp / "trained"
    subprocess.run([*TRAIN, f"hydra.run.dir={good}"], cwd=ROOT, check=True, capture_output=True)
    dirs = {"good": good}
    for name in ("truncated", "pickled", "text", "directory", "weights"):
        dirs[name] = tmp / name
        shutil.copytree(good, dirs[name])
    ckpt = dirs["truncated"] / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    torch.save({"model": Pickled()}, dirs["pickled"] / "checkpoint.pt")
    (dirs["text"] / "checkpoint.pt").write_text("not a checkpoint\n")
    (dirs["directory"] / "checkpoint.pt").unlink()
    (dirs["directory"] / "checkpoint.pt").mkdir()
    shutil.copyfile(good / "best.pt", dirs["weights"] / "checkpoint.pt")
    return dirs


def resume(ck: dict[str, Path], name: str, *args: str) -> list[str]:
    return ["trainer.resume=true", *args, f"hydra.run.dir={ck[name]}"]


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    ck = checkpoints(tmp)
    return {
        "unknown group option": (["clip=sometimes"], "Could not find 'clip/sometimes' (available: none, norm, value)"),
        "misspelled key": (["optim.lrr=0.1"], "Could not override 'optim.lrr': Key 'lrr' not in"),
        "wrong type": (["bptt.length=abc"], "bptt.length=abc: Value 'abc' of type 'str' could not"),
        "lr <= 0": (["optim.lr=0"], "optim.lr must be a finite number > 0, got 0.0"),
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
        "truncated checkpoint": (resume(ck, "truncated"), "trainer.resume: not a readable checkpoint (truncated"),
        "pickled checkpoint": (resume(ck, "pickled"), "trainer.resume: refused to load"),
        "text as checkpoint": (resume(ck, "text"), "trainer.resume: not a readable checkpoint (truncated, or another kind of file)"),
        "directory as checkpoint": (resume(ck, "directory"), "is a directory, not a checkpoint file"),
        "weights-only checkpoint": (resume(ck, "weights"), "holds no optimizer (weights only, as best.pt): it cannot be resumed"),
        "other model shape": (resume(ck, "good", "model.hidden_size=24"), "was written with model.hidden_size=16 (this run: 24)"),
        "other batch size": (resume(ck, "good", "data.batch_size=7"), "was written with data.batch_size=4 (this run: 7)"),
        "other optimizer": (resume(ck, "good", "optim=sgd"), "was written with optim._target_=torch.optim.Adam (this run: torch.optim.SGD)"),
        "other schedule": (resume(ck, "good", "bptt=random"), "was written with bptt.k1=None (this run: (unset))"),
        "lr inf": (["optim.lr=inf"], "optim.lr must be a finite number > 0, got inf"),
        "lr nan": (["optim.lr=nan"], "optim.lr must be a finite number > 0, got nan"),
        "betas of length 1": (["optim.betas=[0.9]"], "optim.betas must be two numbers, got [0.9]"),
        "negative eps": (["optim.eps=-1"], "optim.eps must be a finite number > 0, got -1.0"),
        "unknown optimizer argument": (["+optim.foo=1"], "optim (torch.optim.Adam): Adam.__init__() got an unexpected keyword argument 'foo'"),
        "seed too large": (["seed=99999999999999999999"], "seed must be an integer in [0, 2**32)"),
        "seed not a number": (["seed=abc"], "seed must be an integer in [0, 2**32), got 'abc'"),
        "negative seed": (["seed=-1"], "seed must be an integer in [0, 2**32), got -1"),
        "byte-order mark only": (corpus(tmp, "bom.txt", b"\xef\xbb\xbf").split(), "data.path: file is empty: "),
        "huge model": (["model.hidden_size=2000000000"], "model (1x2000000000, embed 8): cannot build it"),
        "low > high": (["-m", "optim.lr=interval(0.1,0.01)"], "optim.lr"),
        "log with low <= 0": (["-m", "optim.lr=tag(log,interval(0,0.1))"], "log scale needs low > 0"),
        "empty choice": (["-m", "clip=choice()"], "clip"),
        "n_jobs < 1": (["-m", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs must be >= 1, got 0"),
        "unknown storage scheme": (["-m", "hydra.sweeper.storage=ftp://u:pw@h/x"], "hydra.sweeper.storage: unknown scheme 'ftp' in ftp://u:***@h/x"),
        "unreachable storage": (["-m", "hydra.sweeper.storage=postgresql://u:pw@127.0.0.1:9/x"], "hydra.sweeper.storage: cannot open postgresql://u:***@127.0.0.1:9/x"),
        "password in the query": (["-m", "hydra.sweeper.storage='postgresql://u@127.0.0.1:9/x?password=pw'"], "cannot open postgresql://u@127.0.0.1:9/x?password=***"),
        "unquoted = in a value": (["-m", "hydra.sweeper.storage=postgresql://u@127.0.0.1:9/x?password=pw"], "cannot parse the override of hydra.sweeper.storage: mismatched input '='"),
        "max_failures 0": (["-m", "hydra.sweeper.max_failures=0"], "hydra.sweeper.max_failures must be >= 1 or null (never stop), got 0"),
        "negative timeout": (["-m", "hydra.sweeper.timeout=-1"], "hydra.sweeper.timeout must be > 0 seconds or null, got -1"),
        "float interval on an int key": (["-m", "bptt.length=interval(10,40)"], "hydra.sweeper.params.bptt.length: it samples bptt.length=10.0: Error merging override bptt.length=10.0: Value '10.0' of type 'float' could not be converted to Integer"),
        "unknown option in a choice": (["-m", "clip=choice(norm,sometimes)"], "hydra.sweeper.params.clip: it samples clip=sometimes: "),
        "a key no sampled value fits": (["-m", "trainer.objective=interval(0,1)"], "hydra.sweeper.params.trainer.objective: it samples trainer.objective=0.0: trainer.objective must be 'best' or 'final'"),
        "missing corpus in a sweep": ([*f"-m data=shakespeare data.path={tmp}/none.txt".split()], f"data.path: file not found: {tmp}/none.txt"),
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
    run_dirs = {name: tmp / "runs" / str(CASES.index(name)) for name in table}
    commands = [command(table[name][0], run_dirs[name])[3:] for name in table]
    procs = run_many("tbptt.train", commands, ROOT, tmp / "output", preload=PRELOAD)
    return table, {name: (proc, run_dirs[name]) for name, proc in zip(table, procs, strict=True)}


CASES = [
    "unknown group option", "misspelled key", "wrong type", "lr <= 0", "k1 < 1", "k2 < k1",
    "probability > 1", "negative max_norm", "negative clip_value", "negative error_clip",
    "missing corpus", "empty corpus", "binary corpus", "corpus too small",
    "truncated checkpoint", "pickled checkpoint", "other model shape", "low > high",
    "log with low <= 0", "empty choice", "n_jobs < 1", "unknown storage scheme",
    "unreachable storage", "text as checkpoint", "directory as checkpoint",
    "weights-only checkpoint", "other batch size", "other optimizer", "other schedule",
    "lr inf", "lr nan", "betas of length 1", "negative eps", "unknown optimizer argument",
    "seed too large", "seed not a number", "negative seed", "byte-order mark only", "huge model",
    "password in the query", "unquoted = in a value", "max_failures 0", "negative timeout",
    "float interval on an int key", "unknown option in a choice", "a key no sampled value fits",
    "missing corpus in a sweep",
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
    output = proc.stdout + proc.stderr
    assert ":pw@" not in output and "password=pw" not in output  # storage passwords never shown
    assert not list(run_dir.glob("**/steps.parquet"))  # nothing was trained
    assert not (run_dir / "study.journal").exists()  # no study was created
