"""Writing results: ``results.csv`` (tidy rows), ``results.md`` (one table per benchmark)."""

from __future__ import annotations

import csv
import math
import os
import platform
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

import torch

from benchmarks.common import Row

COLUMNS = [f.name for f in fields(Row)]


def machine() -> dict[str, str]:
    """Where the figures come from: CPU model, cores, load, library versions, date."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "load average (1/5/15 min)": load,
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }  # fmt: skip


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def number(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def markdown(rows: list[Row], info: dict[str, str], command: str) -> str:
    lines = ["# Benchmark results", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    for bench in dict.fromkeys(row.benchmark for row in rows):
        lines += ["", f"## {bench}", "", "| case | metric | median | min - max | repeats | unit |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
        lines += [
            f"| {r.case} | {r.metric} | {number(r.median)} | {number(r.min)} - {number(r.max)} "
            f"| {r.repeats} | {r.unit} |"
            for r in rows
            if r.benchmark == bench
        ]
    return "\n".join(lines) + "\n"
