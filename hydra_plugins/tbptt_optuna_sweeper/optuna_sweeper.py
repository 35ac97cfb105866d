"""Shim: Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package.

The sweeper lives in ``sweeps/``; importing this module also registers its config schemas
(``hydra/sweeper=optuna`` and the ``sampler`` / ``pruner`` groups).
"""

from __future__ import annotations

from sweeps import config as _config
from sweeps import sweeper as _sweeper

_config.register()


class TBPTTOptunaSweeper(_sweeper.OptunaSweeper):
    """``hydra/sweeper=optuna``: see ``sweeps.sweeper.OptunaSweeper``."""
