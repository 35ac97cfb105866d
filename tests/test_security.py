"""Security properties that hold across the code base."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGES = ("tbptt", "sweeps", "analysis", "hydra_plugins")
CALL = re.compile(r"(?<![.\w])(eval|exec)\s*\(")


def test_no_eval_or_exec_of_strings_anywhere_in_the_packages():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if CALL.search(line)
    ]
    assert offenders == []


def test_checkpoints_are_loaded_with_weights_only_everywhere():
    loads = [
        line.strip()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for line in path.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert loads and all("weights_only=True" in line for line in loads)
