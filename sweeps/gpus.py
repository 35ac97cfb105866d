"""Which GPU each worker or agent uses: one trial per GPU by default, or several small ones
sharing it (``hydra.sweeper.trials_per_gpu``). A char-RNN trial of a few hundred units leaves a
modern GPU mostly idle; several trials side by side on it use what one leaves.
"""

from __future__ import annotations

import os

from tbptt.errors import ConfigError


def on_cuda(device: str, gpus: int) -> bool:
    """Whether trials with ``trainer.device`` run on a GPU here."""
    return gpus > 0 and (device.startswith("cuda") or device == "auto")


def default_jobs(device: str, gpus: int, cpus: int, per_gpu: int = 1) -> int:
    """Workers when ``n_jobs`` is unset: ``per_gpu`` per GPU for CUDA runs, else one per core."""
    if device.startswith("cuda") or (device == "auto" and gpus):
        return max(1, gpus) * per_gpu
    return cpus


def check_gpu_slots(n_jobs: int, gpus: int, per_gpu: int, device: str) -> None:
    """More workers than GPU slots would put more trials on a GPU than asked."""
    if on_cuda(device, gpus) and n_jobs > gpus * per_gpu:
        raise ConfigError(
            f"hydra.sweeper.n_jobs={n_jobs} on {gpus} GPU(s) puts more than "
            f"hydra.sweeper.trials_per_gpu={per_gpu} trials on a GPU: raise trials_per_gpu "
            f"to {-(-n_jobs // gpus)} or lower n_jobs to {gpus * per_gpu}"
        )


def gpu_env(slot: int, gpus: int, device: str) -> dict[str, str]:
    """Pin the worker in ``slot`` to one GPU, round-robin (slots 0..n-1 fill every GPU once
    before any GPU gets a second trial), when trials run on CUDA."""
    if gpus == 0 or device == "cpu":
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(slot % gpus)}


def ray_gpus(device: str, cluster_gpus: float, per_gpu: int) -> float:
    """The GPU share one Ray agent asks for: 1 / trials_per_gpu on a cluster with GPUs (Ray
    packs that many agents on each GPU), none otherwise (a request no node can meet would
    leave the agent pending forever)."""
    return 1.0 / per_gpu if on_cuda(device, int(cluster_gpus)) else 0.0


def gpu_count() -> int:
    """GPUs this process may use. torch is imported here only: a sweep of CPU trials (or of an
    app without torch) never needs it in the sweep process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    import torch

    return torch.cuda.device_count()
