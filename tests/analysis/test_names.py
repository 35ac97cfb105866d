"""``analysis.names``: the report's "Did it learn the character names?" section, from real sweeps
(a tiny model trained on a small play learns the layout in 20k characters) and sweeps without
checkpoints or without speakers."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis import names
from analysis.load import SweepResults, load
from analysis.plots import ranked
from analysis.report import Document
from tbptt.sample import SampleConfig, names_probe, sample
from tests.analysis.sweep_dirs import build_mixed_sweep
from tests.analysis.test_plots import only, run_tiny_sweep
from tests.conftest import ROOT, TINY

SPEAKERS = ["FIRST CITIZEN", "ROMEO", "JULIET", "Nurse"]
WORDS = "the of and to my thy love night day sweet good lord come go".split()
PROBE = re.compile(
    r"^(?P<real>\d+) of (?P<lines>\d+) generated speaker lines \((?P<pct>\d+)%\) name a real "
    rf"speaker of the corpus \({len(SPEAKERS)} speakers\); invented: (?P<invented>.+)\.$",
    re.M,
)
# TINY, on the play, with a model just big enough to learn its layout (about 1 s a job).
PLAY_SWEEP = [
    *(o for o in TINY if not o.startswith(("data=", "model.hidden", "bptt.", "trainer.max_t",
                                           "trainer.eval_every"))),
    "model.hidden_size=32", "bptt.length=32", "trainer.max_tokens=20000",
    "trainer.eval_every_tokens=10000", "trainer.grad_flow=false", "optim.lr=0.01,0.003",
]  # fmt: skip


def play(n_speeches: int = 400) -> str:
    """Short speeches by four speakers, in the layout of tbptt/corpus.py."""
    rng = random.Random(0)
    speeches = []
    for _ in range(n_speeches):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 6))).capitalize()
                 for _ in range(rng.randint(1, 2))]  # fmt: skip
        speeches.append(f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n")
    return "\n".join(speeches)


@pytest.fixture(scope="module")
def play_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hydra multirun of two jobs on the play; its job directories are found under it, so a
    copy of it is a sweep of its own."""
    root = tmp_path_factory.mktemp("names")
    (root / "play.txt").write_text(play(), encoding="utf-8")
    sweep_dir = root / "sweep"
    cmd = [sys.executable, "-m", "tbptt.train", "-m", *PLAY_SWEEP,
           f"data.path={root / 'play.txt'}", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def section(results: SweepResults, tmp_path: Path) -> str:
    doc = Document(tmp_path)
    names.names_section(doc, results)
    md = doc.markdown()
    assert md.startswith(f"## {names.HEADING}\n\n")
    return md


def test_the_section_probes_a_sample_of_the_best_model(play_sweep, tmp_path):
    results = load(play_sweep)
    best = int(ranked(results)["number"].iloc[0])
    weights = play_sweep / str(best) / "best.pt"
    md = section(results, tmp_path)
    text = sample(SampleConfig(checkpoint=str(weights), length=names.SAMPLE_LENGTH))
    probe = names_probe(text, set(SPEAKERS))
    found = PROBE.search(md)
    assert found, md
    assert (int(found["real"]), int(found["lines"])) == (probe.real, probe.speaker_lines)
    assert probe.speaker_lines >= 5  # it learnt the layout
    assert found["invented"] == (", ".join(probe.invented) or "none")
    assert f"trial {best}'s `{weights}`" in md
    assert f"```bash\n{text[: names.SHOWN].strip()}\n```" in md


@pytest.mark.slow
def test_a_synthetic_corpus_has_no_speakers_and_is_not_sampled(
    tmp_path_factory, tmp_path, monkeypatch
):
    results = load(run_tiny_sweep(tmp_path_factory))  # data=count
    monkeypatch.setattr(names, "sample", lambda opts: pytest.fail("sampled"))
    md = section(results, tmp_path)
    assert "Not applicable: the corpus (data=count) has no speaker lines" in md
    assert "```" not in md
    assert len(md.strip().split("\n\n")) == 2  # the heading and one line


def test_a_sweep_whose_checkpoints_were_deleted_says_so(play_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(play_sweep, copy)
    for weights in copy.glob("*/*.pt"):
        weights.unlink()
    results = load(copy)
    best = int(ranked(results)["number"].iloc[0])
    md = section(results, tmp_path)
    assert f"No checkpoint of the best model (trial {best}) is on disk" in md
    assert f"`{copy / str(best) / 'best.pt'}`, `{copy / str(best) / 'checkpoint.pt'}`" in md
    assert "```" not in md


def test_without_a_complete_trial_there_is_no_model(tmp_path):
    build_mixed_sweep(tmp_path / "sweep")
    md = section(only(load(tmp_path / "sweep"), "pruned"), tmp_path)
    assert md.endswith("No trial completed, so there is no model to sample.\n")


@pytest.mark.parametrize("moved", [False, True])
def test_a_budgeted_sweeps_final_model_is_the_one_sampled(play_sweep, tmp_path, moved):
    # The mixed sweep's only complete trial, 0, has no weights; best.yaml names the final model
    # (trial 2 here), at the path it was written to, or, after a move, in its job directory.
    sweep_dir = tmp_path / "sweep"
    build_mixed_sweep(sweep_dir)
    recorded = tmp_path / "elsewhere" / "2" / "best.pt"
    target = sweep_dir / "2" / "best.pt" if moved else recorded
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(play_sweep / "0" / "best.pt", target)
    best = {"value": 1.0, "trial": 2, "command": "python -m tbptt.train",
            "final": {"checkpoint": str(recorded)}}  # fmt: skip
    (sweep_dir / "best.yaml").write_text(yaml.safe_dump(best))
    results = load(sweep_dir)
    assert names.best_model(results) == names.BestModel(trial=2, checkpoint=target)
    assert PROBE.search(section(results, tmp_path))
