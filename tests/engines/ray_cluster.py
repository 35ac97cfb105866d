"""A two-node local Ray cluster for tests, on one machine.

    from tests.engines.ray_cluster import NODE1, NODE2, two_node_cluster

    with two_node_cluster() as cluster:
        ray.init(address=cluster.address)
        ref = agent.options(resources={NODE2: 0.001}, max_retries=0).remote(...)
        cluster.stop_second_node()          # only node 2; node 1 and the GCS stay up
        with pytest.raises(ray.exceptions.NodeDiedError):
            ray.get(ref, timeout=30)
        ray.shutdown()                      # optional: done on exit if still connected

Built on ``ray.cluster_utils.Cluster`` (Ray's own multi-node test helper): the
GCS and both raylets are children of this process, so start-up is about 3 s and
needs no ``ray start`` processes, and the kernel kills them if this process
dies (PR_SET_PDEATHSIG).

Node 1 is the head and carries the custom resource ``NODE1``; node 2 carries
``NODE2``. Ask for a small amount (``resources={NODE2: 0.001}``) to pin a task
without using up the resource, or use ``NodeAffinitySchedulingStrategy(
cluster.node2_id, soft=False)``. Each node has ``num_cpus`` CPUs (1 by default)
and no GPU.

For the duration of the block the process environment carries
``cluster.env``: no usage stats, ``RAY_AUTH_MODE=disabled`` (unless it was
already ``token``, see ``_env``) and a private ``RAY_TMPDIR`` (sessions,
sockets and the "current cluster" file stay out of /tmp/ray). A driver started
as a subprocess inside the block inherits them; one started with a hand-made
environment needs ``cluster.env`` in it. The previous environment and ``ray``
logger level are restored on exit. Ray's SIGTERM handler is not kept: on
SIGTERM or SIGKILL of this process the kernel kills the GCS and raylets, the
task workers follow within seconds, the two per-node agents within ~2 minutes.

Both nodes use the node IP 127.0.0.2, so ``address`` is "127.0.0.2:PORT" and
all traffic stays on loopback: Ray rewrites "localhost"/"127.0.0.1" in an
address to the machine's outward IP before connecting. The GCS and raylets
still bind all interfaces (random ports), unauthenticated unless token auth
is on, for as long as the block lasts.

Call it from the main thread (Ray sets a SIGTERM handler while adding a node,
and the kernel ties the node processes to the thread that started them). It
may be used any number of times in one process, one cluster at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.cluster_utils import Cluster

# isort: split
import psutil  # after ray, which puts the copy it ships on sys.path

NODE1 = "test_node1"
NODE2 = "test_node2"
NODE_IP = "127.0.0.2"


def _env(tmpdir: str) -> dict[str, str]:
    env = {
        "RAY_TMPDIR": tmpdir,
        "RAY_USAGE_STATS_ENABLED": "0",
        # `ray start --block` and Ray's SIGTERM handler drain for 30 s by default.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # No autoscaler "(autoscaler +5s) ..." lines on the driver.
        "RAY_SCHEDULER_EVENTS": "0",
    }
    # Ray reads RAY_AUTH_MODE once, when `ray` is first imported, so it can't be
    # switched here: keep token auth if the environment asked for it before the
    # import (then RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH must be set too), else
    # say "disabled" outright so no ~/.ray/auth_token is picked up or written.
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def _restore_sigterm(handler) -> None:
    if handler is not None:  # None: set outside Python, can't be put back
        signal.signal(signal.SIGTERM, handler)


def _tree(node) -> list[psutil.Process]:
    """The node's own processes (gcs, raylet, ...) and all their descendants."""
    procs = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                p = psutil.Process(info.process.pid)
                procs.append(p)
                procs.extend(p.children(recursive=True))
            except psutil.Error:
                pass
    return procs


def _by_tmpdir(tmpdir: str) -> list[psutil.Process]:
    """This process's descendants started for the cluster (their command lines name tmpdir:
    gcs_server, raylet, dashboard), with their own descendants (workers, agents). Catches
    what a start-up that failed half-way left without a Node object to hold it."""
    procs: dict[int, psutil.Process] = {}
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(tmpdir in arg for arg in p.cmdline()):
                procs[p.pid] = p
                procs.update((c.pid, c) for c in p.children(recursive=True))
    return list(procs.values())


def _reap(procs: list[psutil.Process], timeout: float, terminate: bool = False) -> None:
    """Wait for procs to exit (SIGTERM them first if terminate); SIGKILL what is left."""
    if terminate:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


class TwoNodeCluster:
    """What ``two_node_cluster()`` yields."""

    def __init__(self, cluster: Cluster, node2: Any, env: dict[str, str]) -> None:
        self._cluster = cluster
        self._node2 = node2
        self.address: str = cluster.address  # for ray.init(address=...)
        self.env: dict[str, str] = dict(env)  # for drivers in subprocesses
        assert cluster.head_node is not None
        self.node1_id: str = cluster.head_node.node_id  # hex, as in ray.nodes()
        self.node2_id: str = node2.node_id

    @property
    def second_node_alive(self) -> bool:
        return self._node2 is not None

    @property
    def second_node_raylet_pid(self) -> int | None:
        if self._node2 is None:
            return None
        return self._node2.all_processes["raylet"][0].process.pid

    def stop_second_node(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Stop node 2 and everything on it (raylet, agents, task workers).

        graceful=True: the raylet gets SIGTERM and unregisters at once; a task
        running there fails on the driver with NodeDiedError within ~0.1 s.
        graceful=False: SIGKILL, like a crash; the driver still sees
        NodeDiedError within ~0.5 s, but the GCS marks the node dead only after
        its health checks fail (~15 s), and until then new work for NODE2 waits.
        Returns once every process of node 2 has exited. Idempotent.
        """
        node, self._node2 = self._node2, None
        if node is None:
            return
        procs = _tree(node)
        self._cluster.remove_node(node, allow_graceful=graceful)
        _reap(procs, timeout)

    def _shutdown(self, timeout: float) -> None:
        if ray.is_initialized():
            # A driver left connected would lose its GCS and, after a minute, exit.
            with contextlib.suppress(Exception):
                if ray.get_runtime_context().gcs_address == self.address:
                    ray.shutdown()
        procs = [p for node in self._cluster.list_all_nodes() for p in _tree(node)]
        try:
            self._cluster.shutdown()
        finally:
            self._node2 = None
            _reap(procs, timeout)


@contextlib.contextmanager
def two_node_cluster(
    num_cpus: int = 1,
    object_store_mb: int = 100,
    timeout: float = 60.0,
) -> Iterator[TwoNodeCluster]:
    """Start head (NODE1) and node 2 (NODE2); stop both and clean up on exit."""
    # Short path: unix socket paths under it must stay below 108 bytes.
    tmpdir = tempfile.mkdtemp(prefix="raytest-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = _env(tmpdir)
    saved_env = {k: os.environ.get(k) for k in env}
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    os.environ.update(env)
    ray_logger = logging.getLogger("ray")
    saved_level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)  # no "Overwriting previous Ray address" etc.
    cluster = handle = None
    try:
        common: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "object_store_memory": object_store_mb * 1024 * 1024,
            "node_ip_address": NODE_IP,
            "include_log_monitor": False,  # drivers get no worker stdout; one process less
        }
        deadline = time.monotonic() + timeout
        cluster = Cluster(shutdown_at_exit=True)  # ties node processes to this process
        cluster.add_node(  # each add_node sets Ray's SIGTERM handler; undone below
            resources={NODE1: 1},
            include_dashboard=False,
            dashboard_port=0,  # the minimal API server still starts; no fixed port
            no_monitor=True,  # no autoscaler monitor (saves ~90 MB and ~1.5 s)
            **common,
        )
        node2 = cluster.add_node(resources={NODE2: 1}, **common)
        _restore_sigterm(saved_sigterm)
        cluster.wait_for_nodes(timeout=max(1.0, deadline - time.monotonic()))
        handle = TwoNodeCluster(cluster, node2, env)
        ray_logger.setLevel(saved_level)
        yield handle
    finally:
        ray_logger.setLevel(logging.WARNING)
        try:
            if handle is not None:
                handle._shutdown(timeout=30.0)
            elif cluster is not None:  # failed half-way through start-up
                procs = [p for node in cluster.list_all_nodes() for p in _tree(node)]
                with contextlib.suppress(Exception):
                    cluster.shutdown()
                _reap(procs, 30.0)
        finally:
            _reap(_by_tmpdir(tmpdir), 5.0, terminate=True)  # whatever the above missed
            ray_logger.setLevel(saved_level)
            _restore_sigterm(saved_sigterm)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(tmpdir, ignore_errors=True)
