"""A sweep inside a wall-clock budget: ``hydra.sweeper.budget=9m``.

Three phases share the budget T, start-up included and counted across re-runs of the sweep::

    0 .......... search .......... S | ... candidates ... C | ........... final ........... T
      Optuna trials of r0 FLOPs each,   the k best search      the best candidate (by the
      pruned by the pruner (ASHA:       trials trained on to   full validation split) trained
      r0/9, r0/3, r0); a trial starts   r1 FLOPs side by side, on for the time left on every
      only if it can reach r0 by S      then scored on the     core, its lr annealed to 0;
                                        full validation split  best.pt scored on val and test

Why three: short trials mislead (short-horizon bias: small models and large step sizes look best
early), so the cheap search rung only filters, the candidates are compared again at several times
its compute, and the winner gets the largest share of the budget. Budgets are FLOPs (``6 x
n_eff`` per character and step), so trials of different widths, depths and windows are compared
at equal compute. FLOPs become seconds through a rate measured at the start on every worker
(``measure_rate``), then through each trial's own measured rate.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tbptt.errors import ConfigError

SEARCH, CANDIDATE, FINAL = "search", "candidate", "final"
TRANSFER = "transfer"  # an n_trials sweep's best trials trained on longer (sweeps/policy.py)
START_SECONDS = 2.0  # a trial's start-up (config, corpus, model) before its first update
END_SECONDS = 3.0  # outputs written after the final run, before the budget ends
EVAL_RESERVE = 0.02  # share of the budget kept for scoring candidates on the full val split
RATE_MARGIN = 0.9  # plan with 90% of a measured rate: rates drift (other load, shapes, evals)
LATE = 0.02  # share of the budget a continuation may run past its phase (it is nearly done)
MAX_CANDIDATES = 4
FINAL_SHARE = 0.1  # of the budget, at least, for the final run
SEARCH_SHARE = 0.25  # of the budget, for a search whose trials all train to r0
PRUNED_SEARCH_SHARE = 0.125  # ... with a pruner: as many configurations, about half the compute
# Pruners that stop trials for being worse than others (not only for diverging): with one, a
# search configuration costs about half of r0 on average at the default sweep's scale.
NOT_SAVING = ("optuna.pruners.NopPruner", "optuna.pruners.ThresholdPruner")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(value: Any, key: str = "hydra.sweeper.budget") -> float:
    """Seconds in ``540``, ``"90s"``, ``"9m"`` or ``"1h30m"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip().lower())
        if not match or not any(match.groups()):
            raise ConfigError(f"{key} must be seconds or a duration such as 9m, got {value!r}")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key} must be a finite number of seconds > 0, got {value!r}")
    return seconds


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The phases of a budgeted sweep (seconds on the budget clock) and the search rung.

    Args:
        budget: T, the whole sweep's seconds.
        search_end, candidates_end: S and C.
        trial_flops: r0, the compute of a full search trial.
        eval_every_flops: the search trials' evaluation (pruning) cadence.
        rate: FLOP/s of one worker thread while every worker trains (measured).
        speedup: one worker on every thread, the others idle, over ``rate`` (measured).
        candidates: k, search trials trained on.
        anneal: share of the final continuation over which its lr decays to 0.

    Example:
        >>> from sweeps.config import PlanConfig
        >>> plan = make_plan(540, PlanConfig(), workers=2, rate=8e10, speedup=1.7, started=8)
        >>> plan.trial_flops  # 8e10 FLOP/s x 0.25 x 540 s / 5 full trials (no pruner)
        2160000000000
    """

    budget: float
    search_end: float
    candidates_end: float
    trial_flops: int
    eval_every_flops: int
    rate: float
    speedup: float
    candidates: int
    anneal: float

    def candidate_deadline(self) -> float:
        """When a candidate still running is stopped: a little past C (it is nearly done)."""
        return self.candidates_end + LATE * self.budget

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Plan:
        return Plan(**data)


def search_share(cfg: Any, pruner: str | None) -> float:
    """``plan.search``, or its default for the pruner (``_target_``) the sweep uses."""
    if cfg.search is not None:
        return float(cfg.search)
    return SEARCH_SHARE if pruner is None or pruner in NOT_SAVING else PRUNED_SEARCH_SHARE


def make_plan(
    budget: float,
    cfg: Any,
    workers: int,
    rate: float,
    speedup: float,
    started: float,
    pruner: str | None = None,
) -> Plan:
    """``cfg``: the ``hydra.sweeper.plan`` settings; ``started``: seconds already spent
    (start-up, calibration): the search's share begins after them; ``pruner``: the pruner's
    ``_target_`` (None: no pruner)."""
    search = budget * search_share(cfg, pruner)
    search_end = started + search
    candidates_end = search_end + budget * cfg.candidate_share
    final = budget - candidates_end
    if search < max(budget * 0.05, 3 * START_SECONDS) or final < FINAL_SHARE * budget:
        raise ConfigError(
            f"hydra.sweeper.budget={budget:g}s leaves {search:.0f} s to search and {final:.0f} s "
            f"to the final run after {started:.0f} s of start-up; give a larger budget"
        )
    # r0 is what an unpruned search's trials get: a pruner shortens the search, not the trials
    # (which would rank configurations after less training: short-horizon bias).
    trial_flops = int(rate * budget * search_share(cfg, None) / cfg.full_trials)
    k = cfg.candidates or min(workers, MAX_CANDIDATES)
    return Plan(
        budget=budget,
        search_end=search_end,
        candidates_end=candidates_end if k > 1 else search_end,
        trial_flops=trial_flops,
        eval_every_flops=max(1, trial_flops // cfg.trial_evals),
        rate=rate,
        speedup=speedup,
        candidates=k,
        anneal=cfg.anneal,
    )


def calibration_seconds(budget: float) -> float:
    """How long each worker measures its speed: longer is steadier, but it is budget spent."""
    return min(2.0, max(0.5, budget * 0.004))


def check_plan_settings(cfg: Any) -> None:
    search = search_share(cfg, None)  # the larger default, if unset
    for key, low, high in (("search", 0, 1), ("candidate_share", 0, 1), ("anneal", 0, 1)):
        value = search if key == "search" else getattr(cfg, key)
        if not low <= value <= high or (key == "search" and value == 0):
            raise ConfigError(f"hydra.sweeper.plan.{key} must be in ({low}, {high}], got {value}")
    if search + cfg.candidate_share >= 1 - FINAL_SHARE:
        raise ConfigError(
            "hydra.sweeper.plan.search + plan.candidate_share must leave at least 10% of the "
            f"budget to the final run, got {search} + {cfg.candidate_share}"
        )
    for key in ("full_trials", "trial_evals"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"hydra.sweeper.plan.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.candidates is not None and cfg.candidates < 1:
        raise ConfigError(f"hydra.sweeper.plan.candidates must be >= 1, got {cfg.candidates}")


class Clock:
    """Seconds of the budget spent: what earlier runs of this sweep used, plus this run's.

    Args:
        used: seconds recorded by earlier runs (0 for a new sweep).
        now: a monotonic clock (tests pass a fake one).
    """

    def __init__(self, used: float = 0.0, now: Callable[[], float] = time.monotonic) -> None:
        self._used, self._now = used, now
        self._start = now()

    def elapsed(self) -> float:
        return self._used + self._now() - self._start

    def wall_at(self, budget_seconds: float) -> float:
        """The ``time.time()`` at which the budget clock reads ``budget_seconds`` (for workers,
        which compare deadlines with their own wall clock)."""
        return time.time() + budget_seconds - self.elapsed()


@dataclass(frozen=True)
class Observed:
    """What a finished job tells about speed: FLOPs trained in how many seconds of training,
    and the seconds of its whole job (start-up and evaluations included)."""

    flops: int
    train_seconds: float
    seconds: float


class Timeline:
    """Decides, from the plan and the clock, what may start and with which compute.

    Args:
        plan: the phases and the search rung.
        clock: the budget clock.

    Example:
        >>> from sweeps.config import PlanConfig
        >>> plan = make_plan(540, PlanConfig(), workers=2, rate=8e10, speedup=1.7, started=8)
        >>> timeline = Timeline(plan, Clock())
        >>> timeline.search_open()  # a full search trial still fits before S
        True
    """

    def __init__(self, plan: Plan, clock: Clock) -> None:
        self.plan, self.clock = plan, clock
        self._seen: list[Observed] = []

    def observe(self, seen: Observed) -> None:
        if seen.flops > 0 and 0 < seen.train_seconds <= seen.seconds:
            self._seen.append(seen)

    def trial_seconds(self) -> float:
        """How long a full search trial takes: the median start-up of the trials seen plus r0
        at their median training rate (before any: the calibrated rate, a default start-up)."""
        if not self._seen:
            return START_SECONDS + self.plan.trial_flops / (RATE_MARGIN * self.plan.rate)
        rate = statistics.median(s.flops / s.train_seconds for s in self._seen)
        start = statistics.median(s.seconds - s.train_seconds for s in self._seen)
        return start + self.plan.trial_flops / rate

    def search_open(self) -> bool:
        return self.clock.elapsed() + self.trial_seconds() <= self.plan.search_end

    def candidate_flops(self, start_flops: int, rates: Sequence[float]) -> int | None:
        """r1: the same compute for every candidate, so that they compare fairly: what the
        slowest can train before C (None: no time left to train them on)."""
        reserve = START_SECONDS + EVAL_RESERVE * self.plan.budget
        seconds = self.plan.candidates_end - self.clock.elapsed() - reserve
        if seconds <= 0 or not rates or not all(math.isfinite(r) for r in rates):
            return None
        return start_flops + int(RATE_MARGIN * min(rates) * seconds)

    def final_seconds(self, eval_seconds: float) -> float:
        """Training seconds the final run has before T, start-up and scoring kept aside."""
        reserve = START_SECONDS + eval_seconds + END_SECONDS
        return self.plan.budget - self.clock.elapsed() - reserve

    def remaining(self, until: float) -> float:
        return until - self.clock.elapsed()


def measure_rate(threads: int, seconds: float = 1.5) -> float:
    """Training FLOP/s of a reference model (LSTM 1x256, 32 streams, windows of 64) on
    ``threads`` torch threads: what plans turn seconds into FLOPs with. Run in a worker."""
    import torch
    import torch.nn.functional as F

    from tbptt.model import CharRNN
    from tbptt.trainer import update_flops

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        model = CharRNN(81, "lstm", embed_size=64, hidden_size=256, layers=1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randint(0, 81, (65, 32), generator=generator)  # (T + 1, B)

        def update() -> None:
            logits, _ = model(x[:-1], model.init_hidden(32))  # (T, B, V)
            loss = F.cross_entropy(logits.flatten(0, 1), x[1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        update()  # warm-up: allocations, kernel selection
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            update()
            count += 1
        elapsed = time.perf_counter() - start
        return count * update_flops(model.n_eff(), 32, 64) / elapsed
    finally:
        torch.set_num_threads(previous)
