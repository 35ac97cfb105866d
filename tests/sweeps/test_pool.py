from __future__ import annotations

import os
import signal
import time

from sweeps.pool import Died, Finished, WorkerPool


def nap(seconds: float) -> tuple[float, int]:
    time.sleep(seconds)
    return time.time(), os.getpid()


def drain(pool: WorkerPool, queue: list, timeout: float = 60.0) -> list:
    events, deadline = [], time.time() + timeout
    while (queue or pool.busy()) and time.time() < deadline:
        while queue and pool.free_slots():
            pool.submit(queue.pop(0))
        events += pool.wait(timeout=0.5)
    return events


def test_a_slow_job_does_not_hold_a_free_worker_idle():
    with WorkerPool(nap, size=2) as pool:
        events = drain(pool, [3.0, 0.2, 0.2, 0.2, 0.2])
    finished = {e.job: e.result for e in events if isinstance(e, Finished)}
    assert len(events) == 5 and all(isinstance(e, Finished) for e in events)
    slow_end = max(r[0] for j, r in [(e.job, e.result) for e in events] if j == 3.0)
    fast_ends = [e.result[0] for e in events if e.job == 0.2]
    assert max(fast_ends) < slow_end  # all short jobs ran on the other worker meanwhile
    assert len({pid for _, pid in finished.values()}) == 2


def test_workers_are_reused_across_jobs():
    with WorkerPool(nap, size=1) as pool:
        events = drain(pool, [0.0, 0.0, 0.0])
    assert len({e.result[1] for e in events}) == 1


def suicide(job: str) -> str:
    if job == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)
    return job


def test_a_killed_worker_fails_its_job_only_and_is_replaced():
    with WorkerPool(suicide, size=2) as pool:
        events = drain(pool, ["a", "die", "b", "c"])
    died = [e for e in events if isinstance(e, Died)]
    assert [(e.job, e.exitcode) for e in died] == [("die", -signal.SIGKILL)]
    assert sorted(e.result for e in events if isinstance(e, Finished)) == ["a", "b", "c"]


def crash(job: str) -> str:
    if job == "crash":
        raise OSError(28, "No space left on device")
    return job


def test_a_worker_that_dies_of_an_exception_says_which():
    with WorkerPool(crash, size=1) as pool:
        events = drain(pool, ["crash", "after"])
    died = [e for e in events if isinstance(e, Died)]
    assert [(e.job, e.exitcode) for e in died] == [("crash", 1)]
    assert died[0].reason == "OSError: [Errno 28] No space left on device"
    assert [e.result for e in events if isinstance(e, Finished)] == ["after"]
