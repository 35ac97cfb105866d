"""Results of sweeps as pandas tables, plots and reports."""

from analysis.load import SweepResults, load

__all__ = ["SweepResults", "load"]
