"""Extension point for whatever runs this app's jobs in-process (the Optuna sweeper's workers).

Callbacks in ``job_callbacks`` are called at every evaluation of the next job run in this
process. They live in their own module, read through the module object, because launchers
pickle Hydra task functions by value (and ``python -m tbptt.train`` runs them as ``__main__``):
a module-level list read directly would travel as a copy.
"""

from __future__ import annotations

from tbptt.trainer import EvalCallback

job_callbacks: list[EvalCallback] = []
