"""The benchmark suite in smoke mode runs and writes well-formed results (no timings checked)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARKS = {
    "throughput", "limit", "tbptt k1<k2", "tbptt memory", "orchestration", "scaling", "search",
    "payoff", "pruning", "bookkeeping", "swept",
}  # fmt: skip
# About two minutes (every benchmark, agents on Slurm and Ray included): `-m slow`, which
# .ci/run runs after `make test`.
pytestmark = pytest.mark.slow
COLUMNS = ["benchmark", "case", "metric", "median", "min", "max", "repeats", "unit"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_smoke_writes_a_tidy_csv_with_every_benchmark(smoke_run):
    out, _ = smoke_run
    with (out / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert {row["benchmark"] for row in rows} == BENCHMARKS
    for row in rows:
        assert row["case"] and row["metric"] and row["unit"]
        low, mid, high = (float(row[key]) for key in ("min", "median", "max"))
        repeats = int(row["repeats"])
        if repeats == 0:  # e.g. a target loss never reached: no finite value
            assert math.isnan(mid)
        else:
            assert low <= mid <= high


def test_smoke_writes_and_prints_one_markdown_table_per_benchmark(smoke_run):
    out, stdout = smoke_run
    text = (out / "results.md").read_text()
    assert text.strip() == stdout.strip()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert set(headings) == BENCHMARKS
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table and all(line.count("|") == 7 for line in table)
