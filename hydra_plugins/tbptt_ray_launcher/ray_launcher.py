"""Shim: Hydra finds launchers only in the ``hydra_plugins`` namespace package.

The launcher lives in ``sweeps/ray_launcher.py``; importing this module registers its config
(``hydra/launcher=ray``).
"""

from __future__ import annotations

from sweeps import ray_launcher as _ray_launcher

_ray_launcher.register()


class TBPTTRayLauncher(_ray_launcher.RayLauncher):
    """``hydra/launcher=ray``: see ``sweeps.ray_launcher.RayLauncher``."""
