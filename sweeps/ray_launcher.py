"""``hydra/launcher=ray``: Hydra jobs as Ray tasks, on a running Ray cluster or a local one.

Hydra's own Ray launcher (hydra-ray-launcher 1.2.2) pins releases of Ray and cloudpickle that
no longer install beside current ones, so this small launcher calls Ray directly. Each job is
one task (``max_retries=0``: a task lost with its node is retried by the sweep, through Optuna,
with the same parameters, never twice by Ray as well).

With the Optuna sweeper each job is a sweep agent (sweeps/agent.py); on a cluster with GPUs an
agent asks for 1 / ``hydra.sweeper.trials_per_gpu`` of one, so Ray packs that many on a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.internals import failed_job
from tbptt.errors import ConfigError, first_line

log = logging.getLogger(__name__)
_INIT = threading.Lock()


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.tbptt_ray_launcher.ray_launcher.TBPTTRayLauncher"
    # A cluster's address ("auto", "host:6379"); null: $RAY_ADDRESS if set, else start one here.
    address: str | None = None
    num_cpus: float = 1  # CPUs each job asks for
    num_gpus: float | None = None  # null: 1 / hydra.sweeper.trials_per_gpu where GPUs exist
    resources: Any = None  # custom resources each job asks for, e.g. {gpu_node: 1}
    init: Any = None  # more ray.init arguments, e.g. {num_cpus: 2, include_dashboard: false}


def register() -> None:
    ConfigStore.instance().store(
        group="hydra/launcher", name="ray", node=RayLauncherConf, provider="tbptt"
    )


def ray_init_args(conf: DictConfig) -> dict[str, Any]:
    """``hydra.launcher.init`` as keyword arguments of ``ray.init``."""
    init = conf.get("init")
    return dict(OmegaConf.to_container(init, resolve=True)) if init else {}  # type: ignore[arg-type]


def connect(conf: DictConfig) -> Any:
    """Ray, connected as ``hydra.launcher`` says (once per process); bad settings are one-line
    errors naming the key."""
    import ray

    with _INIT:  # the sweep launches agents from several threads
        if not ray.is_initialized():
            try:
                ray.init(address=conf.get("address"), log_to_driver=False,
                         **ray_init_args(conf))  # fmt: skip
            except ConnectionError as err:
                raise ConfigError(
                    f"hydra.launcher.address={conf.get('address')}: {first_line(err)}"
                ) from None
            except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: a bad key
                raise ConfigError(f"hydra.launcher.init: {first_line(err)}") from None
    return ray


def run_one(
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    overrides: list[str],
    number: int,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One Hydra job, inside a Ray worker."""
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"ray_{number}"
        sweep_config.hydra.job.num = number
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class RayLauncher(Launcher):
    def __init__(self, **kwargs: Any) -> None:
        self.conf = OmegaConf.create(kwargs)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self._task: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self._task = self._remote(self._connect())  # in the main thread: Ray's signal handlers

    def _remote(self, ray: Any) -> Any:
        """The Ray task of a job; Ray checks its options here, before anything runs."""
        try:
            return ray.remote(run_one).options(
                num_cpus=float(self.conf.num_cpus),
                num_gpus=self._gpus(ray),
                resources=dict(self.conf.resources or {}),
                max_retries=0,
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"hydra.launcher (ray): {first_line(err)}") from None

    def _connect(self) -> Any:
        return connect(self.conf)

    def _gpus(self, ray: Any) -> float:
        if self.conf.num_gpus is not None:
            return float(self.conf.num_gpus)
        from sweeps.gpus import ray_gpus

        assert self.config is not None
        device = str(OmegaConf.select(self.config, "trainer.device", default="cpu"))
        per_gpu = int(OmegaConf.select(self.config, "hydra.sweeper.trials_per_gpu", default=1))
        return ray_gpus(device, ray.cluster_resources().get("GPU", 0.0), per_gpu)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.hydra_context is not None and self.config is not None
        ray = self._connect()
        refs = [
            self._task.remote(self.hydra_context, self.config, self.task_function, list(overrides),
                        initial_job_idx + i, Singleton.get_state())  # fmt: skip
            for i, overrides in enumerate(job_overrides)
        ]
        jobs = zip(refs, job_overrides, strict=True)
        return [self._result(ray, ref, overrides) for ref, overrides in jobs]

    @staticmethod
    def _result(ray: Any, ref: Any, overrides: Sequence[str]) -> JobReturn:
        """The job's return; a job lost with its node or worker is FAILED with Ray's error,
        not raised: the other jobs' results stand."""
        try:
            return ray.get(ref)  # type: ignore[no-any-return]
        except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError) as err:
            return failed_job(err, overrides)
