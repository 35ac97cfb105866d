"""Every study, and one page for their answers: ``python -m analysis.studies`` (make studies).

A study is a sweep config in ``conf/sweep/`` that asks a question (``hydra.sweeper.question``).
Each one runs as ``python -m tbptt.train -m sweep=NAME`` into ``OUT/NAME`` (its log beside it,
``OUT/NAME.log``), then gets its report, answered by the function its config names
(``hydra.sweeper.answer``: the config run, not what a ``study.yaml`` found in ``OUT/NAME``
says); the index ``OUT/index.md`` and ``OUT/index.html`` lists each question, its answer, its
wall time and a link to its report. A study that finished (its
sweep exited 0 and its report was written after its last change) is not run again; ``--force``
runs it anyway, which resumes its study (a finished one has nothing left to run). What each run
took is kept in ``OUT/studies.json``.

    python -m analysis.studies                      # every study, skipping finished ones
    python -m analysis.studies --only lr_range k1_k2 -- trainer.eval_max_tokens=8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import yaml

from analysis.report import ANSWER_FILE, Document, write_report
from sweeps.storage import mask_url
from tbptt.errors import ConfigError, first_line
from tbptt.metrics import atomic_write_bytes

CONF = Path(__file__).resolve().parent.parent / "conf" / "sweep"
RECORD = "studies.json"
STUDY_FILES = ("study.journal", "trials.parquet")  # change when the study does


@dataclass
class Run:
    """What one study's last run took: its exit status, wall time and when it ended."""

    exit_code: int
    wall_seconds: float
    finished_at: float


def studies(conf: Path = CONF) -> dict[str, str]:
    """Study name -> question, for every sweep config that asks one, in name order."""
    found = {}
    for path in sorted(conf.glob("*.yaml")):
        question = _sweeper(path).get("question")
        if question:
            found[path.stem] = str(question)
    return found


def verdict_of(name: str, overrides: Sequence[str], conf: Path = CONF) -> str | None:
    """The verdict function the study ran with: ``hydra.sweeper.answer`` as its overrides, else
    its config, give it. Its report takes it from here, not from the ``study.yaml`` in its
    directory, which may have been there before (see ``analysis.answers.answer_of``)."""
    given = [o.partition("=")[2] for o in overrides
             if o.partition("=")[0].lstrip("+") == "hydra.sweeper.answer"]  # fmt: skip
    if given:
        return None if given[-1] in ("", "null") else given[-1]
    named = _sweeper(conf / f"{name}.yaml").get("answer")
    return str(named) if named else None


def _sweeper(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text()) or {}
    return (doc.get("hydra") or {}).get("sweeper") or {}


def finished(out: Path, name: str, runs: dict[str, Run]) -> bool:
    """Its last run exited 0 and its report is newer than its study."""
    run, report = runs.get(name), out / name / "report.md"
    if run is None or run.exit_code != 0 or not report.is_file():
        return False
    changed = [(out / name / f).stat().st_mtime for f in STUDY_FILES if (out / name / f).exists()]
    return all(report.stat().st_mtime >= t for t in changed)


def run_study(out: Path, name: str, overrides: Sequence[str]) -> Run:
    """Sweep, then report; the sweep's output goes to ``OUT/NAME.log``."""
    command = [sys.executable, "-m", "tbptt.train", "-m", f"sweep={name}",
               f"hydra.sweep.dir={out / name}", *overrides]  # fmt: skip
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code == 0:
        write_report(out / name, answer=verdict_of(name, overrides))
    return Run(code, time.monotonic() - started, time.time())


def read_runs(out: Path) -> dict[str, Run]:
    path = out / RECORD
    if not path.is_file():
        return {}
    try:
        return {name: Run(**run) for name, run in json.loads(path.read_text()).items()}
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not a studies record; move it away") from None


def write_runs(out: Path, runs: dict[str, Run]) -> None:
    doc = {name: asdict(run) for name, run in sorted(runs.items())}
    atomic_write_bytes(out / RECORD, json.dumps(doc, indent=2).encode())


# -- the index ------------------------------------------------------------------------------


def index_table(out: Path, questions: dict[str, str], runs: dict[str, Run]) -> pd.DataFrame:
    rows = []
    for name, question in questions.items():
        run = runs.get(name)
        status = "not run" if run is None else "done" if run.exit_code == 0 else "failed"
        rows.append(
            {
                "study": name,
                "question": question,
                "findings": _answer(out / name).get("findings") or [f"({status})"],
                "wall s": round(run.wall_seconds) if run else None,
                "status": status,
                "report": f"{name}/report.md" if (out / name / "report.md").is_file() else "",
            }
        )
    return pd.DataFrame(rows)


def _answer(sweep_dir: Path) -> dict:
    path = sweep_dir / ANSWER_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def write_index(out: Path, questions: dict[str, str], runs: dict[str, Run]) -> Path:
    """``OUT/index.md`` and ``OUT/index.html``: every question, its answer and its report."""
    doc = Document(out)
    doc.heading("Studies: every question and its answer", level=1)
    table = index_table(out, questions, runs)
    total = sum(r.wall_seconds for r in runs.values() if r.exit_code == 0)
    doc.text(f"{len(table)} studies; their last runs took {total:.0f} s in all.")
    doc.table(table[["study", "question", "wall s", "status", "report"]])
    for row in table.itertuples():
        doc.heading(f"{row.study}: {row.question}")
        doc.bullets(row.findings)
        if row.report:
            doc.link(row.report, f"{row.study}/report.html", f"{row.study}: the full report")
    (out / "index.html").write_text(doc.html("Studies"))
    index = out / "index.md"
    index.write_text(doc.markdown())
    return index


# -- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.studies",
        description="Run every study in conf/sweep/ that asks a question; write OUT/index.md.",
    )
    parser.add_argument("--out", default="multirun", help="where the studies go (multirun)")
    parser.add_argument("--only", nargs="+", default=None, help="these studies only")
    parser.add_argument("--force", action="store_true", help="run finished studies again")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every study")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        return _run_all(out, args.only, args.force, args.overrides)
    except (ConfigError, OSError) as err:
        print(f"error: {mask_url(first_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the running study was stopped too: a re-run resumes it
        print("\ninterrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _run_all(out: Path, only: list[str] | None, force: bool, overrides: list[str]) -> int:
    questions = studies()
    unknown = sorted(set(only or []) - set(questions))
    if unknown:
        raise ConfigError(f"--only: no study {unknown}; the studies are {sorted(questions)}")
    runs = read_runs(out)
    failures = 0
    for name in only or list(questions):
        if not force and finished(out, name, runs):
            print(f"{name}: finished before, skipped ({out / name / 'report.md'})", flush=True)
            continue
        print(f"{name}: {questions[name]}", flush=True)
        runs[name] = run_study(out, name, overrides)
        write_runs(out, runs)
        run = runs[name]
        failures += run.exit_code != 0
        what = "done" if run.exit_code == 0 else f"failed (exit {run.exit_code}, see the log)"
        print(f"{name}: {what} in {run.wall_seconds:.0f} s ({out / f'{name}.log'})", flush=True)
    print(write_index(out, questions, runs))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
