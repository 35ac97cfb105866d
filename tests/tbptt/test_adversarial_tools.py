"""The checkpoint tools given bad checkpoints and bad settings, table-driven: ``python -m
tbptt.evaluate checkpoint=... split=...`` and ``python -m tbptt.sample checkpoint=... prime=...
temperature=... length=...``. Each case is a real command line (forked from one process that
imported torch once, tests/forkrun.py): one line ``error: ...`` naming the key or file and the
value, exit code 2, no traceback, no pickled code run; or the right output, exit code 0."""

from __future__ import annotations

import io
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tbptt.train import run
from tests.conftest import ROOT, compose_config
from tests.forkrun import run_many

# Imported once before the forks; not tbptt.config for tbptt.evaluate: it imports that module,
# which python -m then runs as __main__ a second time (and warns).
PRELOAD = {"evaluate": ("torch", "omegaconf", "tbptt.checkpoint", "tbptt.data", "tbptt.model"),
           "sample": ("torch", "omegaconf", "tbptt.config", "tbptt.evaluate")}  # fmt: skip
LONG_PRIME = "123" * 32_000  # 96,000 characters: under Linux's 128 kB for one argument


class Pickled:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def with_meta(payload: dict[str, Any], part: str, **changes: Any) -> dict[str, Any]:
    """``payload`` with ``meta[part]`` changed (a copy)."""
    meta = {**payload["meta"], part: {**payload["meta"][part], **changes}}
    return {**payload, "meta": meta}


def file_corpus(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """``payload`` as if trained on the text file at ``path`` (data=shakespeare data.path=...)."""
    data = {k: v for k, v in payload["meta"]["data"].items() if k not in ("length", "period")}
    return {**payload, "meta": {**payload["meta"], "data": {**data, "kind": "FileDataConfig",
                                                            "path": str(path)}}}  # fmt: skip


def damaged(tmp: Path) -> None:
    """A tiny trained run in ``tmp/run`` (data=count: the characters '1', '2', '3', ' '), and
    beside it files that are not what the tools expect."""
    run(compose_config(), tmp / "run")
    raw = (tmp / "run" / "checkpoint.pt").read_bytes()
    payload = torch.load(tmp / "run" / "checkpoint.pt", weights_only=True)
    (tmp / "truncated.pt").write_bytes(raw[:300])
    (tmp / "tail-cut.pt").write_bytes(raw[:-10])
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.pt").write_text("not a checkpoint\n")
    (tmp / "a-directory.pt").mkdir()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("notes/readme.txt", "a zip, not a checkpoint")
    (tmp / "zip.pt").write_bytes(archive.getvalue())
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save({"weights": torch.zeros(3)}, tmp / "other-keys.pt")
    torch.save({"model": payload["model"]}, tmp / "no-meta.pt")
    torch.save(with_meta(payload, "model", hidden_size=24), tmp / "other-shape.pt")
    nan = {k: torch.full_like(v, math.nan) for k, v in payload["model"].items()}
    torch.save({**payload, "model": nan}, tmp / "nan-weights.pt")
    torch.save({"model": Pickled(), "meta": payload["meta"]}, tmp / "pickled.pt")
    torch.save(file_corpus(payload, tmp / "gone.txt"), tmp / "corpus-gone.pt")
    (tmp / "edited.txt").write_text("abcdefgh\n" * 2000)
    torch.save(file_corpus(payload, tmp / "edited.txt"), tmp / "corpus-edited.pt")
    torch.save(with_meta(payload, "data", period=9), tmp / "other-period.pt")
    best = torch.load(tmp / "run" / "best.pt", weights_only=True)
    torch.save({**best, "meta": {k: v for k, v in best["meta"].items() if k != "data"}},
               tmp / "no-data-settings.pt")  # fmt: skip


# (name, module, arguments with {tmp} for the directory above, what it says): "error: ..." is
# a part of the one line on stderr; anything else must match the whole of stdout.
CASES = [
    ("truncated", "evaluate", "checkpoint={tmp}/truncated.pt", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/truncated.pt"),
    ("last bytes cut", "evaluate", "checkpoint={tmp}/tail-cut.pt", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/tail-cut.pt"),
    ("empty file", "evaluate", "checkpoint={tmp}/empty.pt", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/empty.pt"),
    ("a directory", "evaluate", "checkpoint={tmp}/a-directory.pt", "error: checkpoint: {tmp}/a-directory.pt is a directory, not a checkpoint file"),
    ("a text file", "evaluate", "checkpoint={tmp}/text.pt", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/text.pt"),
    ("a zip", "evaluate", "checkpoint={tmp}/zip.pt", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/zip.pt"),
    ("a plain tensor", "evaluate", "checkpoint={tmp}/tensor.pt", "error: checkpoint: {tmp}/tensor.pt is not a tbptt checkpoint"),
    ("a dict of other keys", "evaluate", "checkpoint={tmp}/other-keys.pt", "error: checkpoint: {tmp}/other-keys.pt is not a tbptt checkpoint"),
    ("weights without meta", "evaluate", "checkpoint={tmp}/no-meta.pt", "error: checkpoint: {tmp}/no-meta.pt is not a tbptt checkpoint (it needs model weights and their meta: model, vocab)"),
    ("shape unlike its meta", "evaluate", "checkpoint={tmp}/other-shape.pt", "error: checkpoint: {tmp}/other-shape.pt: its weights do not fit the model its meta describes (size mismatch for rnns.0.weight_ih_l0"),
    ("NaN weights", "evaluate", "checkpoint={tmp}/nan-weights.pt", "error: checkpoint: {tmp}/nan-weights.pt holds non-finite weights (embed.weight): its run diverged; its best.pt holds the best weights"),
    ("pickled code", "evaluate", "checkpoint={tmp}/pickled.pt", "error: checkpoint: refused to load {tmp}/pickled.pt: it holds more than weights (Unsupported global: GLOBAL print"),
    ("missing file", "evaluate", "checkpoint={tmp}/missing.pt", "error: checkpoint: checkpoint not found: {tmp}/missing.pt"),
    ("corpus file gone", "evaluate", "checkpoint={tmp}/corpus-gone.pt", "error: data.path: file not found: {tmp}/gone.txt"),
    ("corpus edited since", "evaluate", "checkpoint={tmp}/corpus-edited.pt", "error: checkpoint: {tmp}/corpus-edited.pt: its corpus, rebuilt from the data settings it records, has 9 characters where the model knows 4: it changed since the run"),
    ("corpus settings changed", "evaluate", "checkpoint={tmp}/other-period.pt", "error: checkpoint: {tmp}/other-period.pt: its corpus, rebuilt from the data settings it records, has 10 characters where the model knows 4: it changed since the run"),
    ("no data settings", "evaluate", "checkpoint={tmp}/no-data-settings.pt", "error: checkpoint: {tmp}/no-data-settings.pt does not record its data settings (an older run)"),
    ("split train", "evaluate", "checkpoint={tmp}/run/best.pt split=train", "error: split must be one of val, test, got 'train'"),
    ("split empty", "evaluate", "checkpoint={tmp}/run/best.pt split=", "error: split must be one of val, test, got ''"),
    ("no checkpoint", "evaluate", "split=val", "error: checkpoint=PATH is required (a run's best.pt or checkpoint.pt)"),
    ("unknown key", "evaluate", "checkpoint={tmp}/run/best.pt splits=val", "error: unknown key(s) ['splits']; use checkpoint=PATH [split=val|test]"),
    ("best.pt on val", "evaluate", "checkpoint={tmp}/run/best.pt split=val", r"val_loss=\d\.\d{4} nats/char \(\d\.\d{4} bits/char\)\n"),
    ("checkpoint.pt on test", "evaluate", "checkpoint={tmp}/run/checkpoint.pt", r"test_loss=\d\.\d{4} nats/char \(\d\.\d{4} bits/char\)\n"),
    ("truncated", "sample", "checkpoint={tmp}/truncated.pt prime=1", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/truncated.pt"),
    ("empty file", "sample", "checkpoint={tmp}/empty.pt prime=1", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/empty.pt"),
    ("a directory", "sample", "checkpoint={tmp}/a-directory.pt prime=1", "error: checkpoint: {tmp}/a-directory.pt is a directory, not a checkpoint file"),
    ("a zip", "sample", "checkpoint={tmp}/zip.pt prime=1", "error: checkpoint: not a readable checkpoint (truncated, or another kind of file): {tmp}/zip.pt"),
    ("a plain tensor", "sample", "checkpoint={tmp}/tensor.pt prime=1", "error: checkpoint: {tmp}/tensor.pt is not a tbptt checkpoint"),
    ("weights without meta", "sample", "checkpoint={tmp}/no-meta.pt prime=1", "error: checkpoint: {tmp}/no-meta.pt is not a tbptt checkpoint (it needs model weights and their meta: model, vocab)"),
    ("shape unlike its meta", "sample", "checkpoint={tmp}/other-shape.pt prime=1", "error: checkpoint: {tmp}/other-shape.pt: its weights do not fit the model its meta describes (size mismatch for rnns.0.weight_ih_l0"),
    ("NaN weights", "sample", "checkpoint={tmp}/nan-weights.pt prime=1", "error: checkpoint: {tmp}/nan-weights.pt holds non-finite weights (embed.weight)"),
    ("pickled code", "sample", "checkpoint={tmp}/pickled.pt prime=1", "error: checkpoint: refused to load {tmp}/pickled.pt: it holds more than weights"),
    ("missing file", "sample", "checkpoint={tmp}/missing.pt prime=1", "error: checkpoint: checkpoint not found: {tmp}/missing.pt"),
    ("no checkpoint", "sample", "prime=1", "error: checkpoint=PATH is required (a run's checkpoint.pt)"),
    ("unseen characters in prime", "sample", "checkpoint={tmp}/run/best.pt prime=1z~", "error: prime has characters the model never saw: ['z', '~']"),
    ("the default prime, unseen", "sample", "checkpoint={tmp}/run/best.pt", "error: prime has characters the model never saw: ['\\n']"),
    ("empty prime", "sample", "checkpoint={tmp}/run/best.pt prime=", "error: prime must be at least one character (the model reads it first)"),
    ("prime without =", "sample", "checkpoint={tmp}/run/best.pt prime", "error: prime must be at least one character (the model reads it first)"),
    ("very long prime", "sample", "checkpoint={tmp}/run/best.pt length=5 prime=" + LONG_PRIME, re.escape(LONG_PRIME) + r"[123 ]{5}\n"),
    ("temperature 0", "sample", "checkpoint={tmp}/run/best.pt prime=1 temperature=0", "error: temperature must be a finite number > 0, got 0.0"),
    ("temperature negative", "sample", "checkpoint={tmp}/run/best.pt prime=1 temperature=-1", "error: temperature must be a finite number > 0, got -1.0"),
    ("temperature NaN", "sample", "checkpoint={tmp}/run/best.pt prime=1 temperature=nan", "error: temperature must be a finite number > 0, got nan"),
    ("temperature inf", "sample", "checkpoint={tmp}/run/best.pt prime=1 temperature=inf", "error: temperature must be a finite number > 0, got inf"),
    ("temperature a string", "sample", "checkpoint={tmp}/run/best.pt prime=1 temperature=warm", "error: Value 'warm' of type 'str' could not be converted to Float"),
    ("temperature denormal", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=8 temperature=1e-45", r"1[123 ]{8}\n"),
    ("temperature huge", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=8 temperature=1e30", r"1[123 ]{8}\n"),
    ("length 0", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=0", "error: length must be in [1, 1000000], got 0"),
    ("length negative", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=-3", "error: length must be in [1, 1000000], got -3"),
    ("length huge", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=10000000000000", "error: length must be in [1, 1000000], got 10000000000000"),
    ("length a fraction", "sample", "checkpoint={tmp}/run/best.pt prime=1 length=1.5", "error: Value '1.5' of type 'str' could not be converted to Integer"),
    ("seed negative", "sample", "checkpoint={tmp}/run/best.pt prime=1 seed=-1", "error: seed must be an integer in [0, 2**32), got -1"),
    ("seed too large", "sample", "checkpoint={tmp}/run/best.pt prime=1 seed=99999999999999999999", "error: seed must be an integer in [0, 2**32), got 99999999999999999999"),
    ("unknown key", "sample", "checkpoint={tmp}/run/best.pt prime=1 lenght=5", "error: Key 'lenght' not in 'SampleConfig'"),
    ("a good sample", "sample", "checkpoint={tmp}/run/checkpoint.pt prime=1 length=20 seed=3", r"1[123 ]{20}\n"),
]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checkpoint-tools")
    damaged(tmp)
    procs = {}
    for module in ("evaluate", "sample"):
        cases = [c for c in CASES if c[1] == module]
        commands = [args.format(tmp=tmp).split(" ") for _, _, args, _ in cases]
        done = run_many(f"tbptt.{module}", commands, ROOT, tmp / f"out-{module}", PRELOAD[module])
        procs |= {(name, module): proc for (name, *_), proc in zip(cases, done, strict=True)}
    yield tmp, procs
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(("name", "module", "args", "says"), CASES,
                         ids=[f"{m}: {n}" for n, m, _, _ in CASES])  # fmt: skip
def test_a_checkpoint_tool_says_what_is_wrong_in_one_line_or_answers(
    outcomes, name, module, args, says
):
    tmp, procs = outcomes
    proc = procs[(name, module)]
    assert "Traceback" not in proc.stderr and "pickled code ran" not in proc.stdout
    if not says.startswith("error: "):
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert re.fullmatch(says, proc.stdout), proc.stdout[-200:]
        return
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and says.format(tmp=tmp)[7:] in lines[0], lines
    assert proc.stdout == ""
