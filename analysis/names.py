"""Did it learn the character names? A sample from a sweep's best model, and a probe of it.

A char-RNN trained on plays learns the layout (a name and a colon on its own line, then the
speech) well before it learns which names exist: its samples open speeches with invented names
until then. ``names_section`` samples the best model (``SAMPLE_LENGTH`` characters with
``tbptt.sample``'s defaults, so ``python -m tbptt.sample checkpoint=PATH length=2000`` prints the
same text) and reports the share of its speaker lines that name a real speaker of the corpus the
model was trained on (``tbptt.sample.names_probe``).

The best model: a budgeted sweep's final model (``best.yaml``), else the best complete trial;
its ``best.pt`` (the weights of its best validation loss), else its last ``checkpoint.pt``.
The corpus: the one the checkpoint's own data settings name (its ``meta["data"]``, which
``tbptt.evaluate`` rebuilds the splits from), read by that data schema's ``load_text``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.load import SweepResults
from analysis.plots import ranked
from sweeps.outputs import read_best
from tbptt import checkpoint
from tbptt.checkpoint import BEST_CHECKPOINT
from tbptt.config import data_from_meta
from tbptt.errors import ConfigError, first_line
from tbptt.sample import NamesProbe, SampleConfig, names_probe, sample, speakers

if TYPE_CHECKING:  # analysis.report imports this module
    from analysis.report import Document

HEADING = "Did it learn the character names?"
SAMPLE_LENGTH = 2000  # characters: about 13 speeches at the plays' mean length (153)
SHOWN = 600  # characters of the sample shown in the report
WEIGHTS = (BEST_CHECKPOINT, "checkpoint.pt")  # a run's files, in order of preference


@dataclass(frozen=True)
class BestModel:
    trial: int
    checkpoint: Path


def best_model(results: SweepResults) -> BestModel | None:
    """The best model's weights on disk; None when no trial completed or its weights are gone."""
    run = _best_run(results)
    if run is None:
        return None
    trial, places = run
    found = next((path for path in places if path.is_file()), None)
    return None if found is None else BestModel(trial=trial, checkpoint=found)


def _best_run(results: SweepResults) -> tuple[int, list[Path]] | None:
    """The best model's trial and where its weights may lie, in order of preference."""
    best = read_best(results.path) or {}
    final = best.get("final")
    if isinstance(final, dict) and "trial" in best:  # a budgeted sweep: its final model
        trial = int(best["trial"])
        job_dir = _job_dir(results, trial)  # where load() found it, should the sweep have moved
        places = [Path(str(final["checkpoint"]))] if final.get("checkpoint") else []
        return trial, places + ([job_dir / BEST_CHECKPOINT] if job_dir else [])
    top = ranked(results)
    if top.empty:
        return None
    trial = int(top["number"].iloc[0])
    job_dir = _job_dir(results, trial)
    return trial, [job_dir / name for name in WEIGHTS] if job_dir else []


def _job_dir(results: SweepResults, trial: int) -> Path | None:
    job_dir = results.trials.set_index("number")["job_dir"].get(trial)
    return Path(job_dir) if isinstance(job_dir, str) and job_dir else None


def corpus_speakers(weights: str | Path) -> tuple[Counter[str], str]:
    """The speakers of the corpus the model at ``weights`` was trained on, and the corpus's name
    (``data.path=...``, ``data=count``)."""
    try:
        data = data_from_meta(checkpoint.load(weights)["meta"])
    except ConfigError as err:
        raise ConfigError(f"{weights}: {first_line(err)}") from None
    text, source = data.load_text()
    return speakers(text), source


def names_section(doc: Document, results: SweepResults) -> None:
    """The section: the probe in one sentence and the sample's start, or one line saying why
    there is none (no checkpoint; a corpus without speaker lines, which is not sampled)."""
    doc.heading(HEADING)
    if results.multi_objective:
        doc.text("Not sampled: a multi-objective study has no one best model (see its Pareto "
                 "front); `python -m tbptt.sample checkpoint=JOB_DIR/best.pt` samples any of "
                 "its trials.")  # fmt: skip
        return
    model = best_model(results)
    if model is None:
        doc.text(_no_model(results))
        return
    opts = SampleConfig(checkpoint=str(model.checkpoint), length=SAMPLE_LENGTH)
    try:
        known, source = corpus_speakers(model.checkpoint)
        if not known:
            doc.text(
                f"Not applicable: the corpus ({source}) has no speaker lines (a name and a colon "
                "alone on a line after a blank line), so there are no names to learn; no sample "
                "was drawn."
            )
            return
        text = _sample_on_one_thread(opts)
    except ConfigError as err:
        doc.text(f"No sample from trial {model.trial}: {first_line(err)}.")
        return
    doc.text(probe_sentence(names_probe(text, known), len(known)))
    doc.text(
        f"The first {SHOWN} of {SAMPLE_LENGTH:,} characters sampled from trial {model.trial}'s "
        f"`{model.checkpoint}` (seed {opts.seed}, temperature {opts.temperature}, after a "
        f"newline); `python -m tbptt.sample checkpoint={model.checkpoint} "
        f"length={SAMPLE_LENGTH}` prints all of them:"
    )
    doc.code(text[:SHOWN].strip("\n"))


def _sample_on_one_thread(opts: SampleConfig) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one character at a time: more threads only cost (3-5x slower)
    try:
        return sample(opts)
    finally:
        torch.set_num_threads(threads)


def probe_sentence(probe: NamesProbe, known: int) -> str:
    """The probe in one sentence; ``known``: how many speakers the corpus has."""
    if probe.speaker_lines == 0:
        return (
            "The sample has no speaker lines (a name and a colon alone on a line after a blank "
            "line): the model has not learnt the layout, let alone the names (the corpus has "
            f"{known:,} speakers)."
        )
    return (
        f"{probe.real} of {probe.speaker_lines} generated speaker lines ({probe.share:.0%}) name "
        f"a real speaker of the corpus ({known:,} speakers); invented: "
        f"{', '.join(probe.invented) or 'none'}."
    )


def _no_model(results: SweepResults) -> str:
    run = _best_run(results)
    if run is None:
        return "No trial completed, so there is no model to sample."
    trial, places = run
    looked = ", ".join(f"`{path}`" for path in places) or "its job directory is not on disk"
    return (
        f"No checkpoint of the best model (trial {trial}) is on disk ({looked}): deleted, or "
        "trained with `trainer.checkpoint=false`; no sample was drawn."
    )
