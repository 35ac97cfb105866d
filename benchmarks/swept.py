"""Benchmark ``swept``: our Trainer's throughput as a sweep trial runs it, against a plain loop.

A search trial of ``sweep=default`` trains with every diagnostic on: a ``steps`` row per update
(loss, pre- and post-clip gradient norm, the gradient norm of each layer, the hidden-state
norm), the gradient flow through time halfway through the trial's budget and at its end,
``checkpoint.pt`` (and ``best.pt`` when the loss improved) written at every evaluation, and the
Parquet tables rewritten at every evaluation. The arms, each a block of the same updates and
evaluations:

- ``ours``: ``tbptt.train.build_trainer`` on the composed config (``sweep=default`` and the
  point it enqueues first), then ``fit()``; only ``fit()`` is timed, in a fresh run directory.
- ``plain``: a hand-written loop a char-rnn user would write (:func:`plain_run`): a fused
  ``nn.LSTM`` of the same shape on the same batched streams, the same window, Adam at the same
  lr, ``clip_grad_norm_`` at the same threshold, and at the same updates the same evaluation
  (``tbptt.evaluate.mean_loss`` over the same validation characters), keeping the best weights
  in memory.
- ``ours, grad flow and checkpoints off``: what the trainer costs without its per-evaluation
  diagnostics. Where each cost goes is timed apart, call by call, on each ``ours`` block's
  trainer once its ``fit()`` returned: the per-update gradient norms and hidden norm (which no
  setting switches off, read in one transfer), grad flow, the checkpoint writes, a Parquet
  flush. Each cost is also given as its share of the plain block (cost x calls per block /
  plain seconds per block): the shares add up to about plain/ours - 1.

One thread each. A block is one full search trial: the default 9-minute sweep gives each search
trial about 25 s of one worker (135 s of search over 5 full trials) and 9 evaluations, every
~2e11 FLOPs at the ~80 GFLOP/s its calibration measures: about 47k characters of a 1x384 LSTM,
300k of a 1x128 per evaluation. The arms alternate block by block (ours, plain, bare, then the
reverse order), so that drift of the shared machine cancels in the ratios, taken repeat by
repeat. The ratios are given by wall time (what a sweep's budget
pays) and by this process's CPU time, which other load on a shared machine adds little to
(file writes to the page cache count, waits do not). Read ``ours / plain`` against 0.97;
``ours, grad flow and checkpoints off / plain`` is the trainer without them.
``python -m benchmarks.swept`` runs the full mode alone; ``--profile`` profiles one block of
``ours`` on the 1x128 case instead.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.nn.utils import clip_grad_norm_

from benchmarks.common import ROOT, Row, alternating, ratios, summarize
from benchmarks.plain import CharLSTM
from benchmarks.report import machine, markdown
from tbptt import checkpoint, config
from tbptt.data import Corpus
from tbptt.diagnostics import FLOW_AT, grad_norms, measure_flow
from tbptt.evaluate import mean_loss
from tbptt.model import detach, hidden_norm
from tbptt.train import build_trainer
from tbptt.trainer import Trainer

CONF = ROOT / "conf"
T = TypeVar("T")
# The point conf/sweep/default.yaml enqueues, so its first trial.
ENQUEUED = (
    "sweep=default", "model.hidden_size=384", "model.layers=1", "model.dropout=0",
    "optim.lr=0.004", "bptt=fixed", "bptt.length=64", "clip=norm", "clip.max_norm=5.0",
)  # fmt: skip
SMOKE_DATA = (
    "data=count", "data.batch_size=4", "data.eval_batch_size=2", "model.embed_size=8",
    "model.hidden_size=16", "bptt.length=8", "trainer.eval_max_tokens=256",
    "trainer.eval_length=16",
)  # fmt: skip
PLAIN = "plain"
ARMS = {  # arm -> (metric name, overrides); "ours" first, as the ratio rows are ordered
    "ours": ("ours, every diagnostic (a sweep trial)", ()),
    PLAIN: ("plain loop (same training and evaluations)", ()),
    "bare": ("ours, grad flow and checkpoints off",
             ("trainer.grad_flow=false", "trainer.checkpoint=false")),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    label: str
    overrides: tuple[str, ...]


FLOWS = len(FLOW_AT) + 1  # gradient-flow measurements in a run: at each share, and at the end


@dataclass(frozen=True)
class Settings:
    cases: tuple[Case, ...]
    eval_flops: float  # a search trial's evaluation cadence (see the module doc)
    evals: int = 9  # evaluations per block: a full search trial's
    repeats: int = 5  # blocks per arm
    calls: int = 50  # calls per timing of a per-update diagnostic


SHAKESPEARE = f"data.path={ROOT / 'data' / 'shakespeare.txt'}"  # wherever the suite runs from
FULL = Settings(
    cases=(
        Case("sweep=default trial", (*ENQUEUED, SHAKESPEARE)),
        Case("sweep=default trial at 1x128", (*ENQUEUED, SHAKESPEARE, "model.hidden_size=128")),
    ),
    eval_flops=2e11,
)
SMOKE = Settings(
    cases=(Case("smoke", (*ENQUEUED, *SMOKE_DATA)),), eval_flops=1e6, evals=3, repeats=1,
    calls=5,
)


def run(smoke: bool) -> list[Row]:
    torch.set_num_threads(1)
    config.register()
    settings = SMOKE if smoke else FULL
    return [row for case in settings.cases for row in _case(case, settings)]


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["trainer.device=cpu", "trainer.threads=1",
                                            *overrides])  # fmt: skip


@dataclass(frozen=True)
class Block:
    """A block's shape: ``updates`` windows of ``update_chars`` characters (all streams), an
    evaluation every ``every`` updates, the last one at the block's end."""

    updates: int
    every: int
    update_chars: int

    @property
    def chars(self) -> int:
        return self.updates * self.update_chars

    @property
    def evals(self) -> int:
        return self.updates // self.every

    def overrides(self) -> tuple[str, ...]:
        return (
            f"trainer.max_tokens={self.chars}",
            f"trainer.eval_every_tokens={self.every * self.update_chars}",
        )


@dataclass(frozen=True)
class Took:
    wall: float
    cpu: float  # this process's CPU seconds: what other load on the machine adds little to


def timed(fn: Callable[[], T]) -> tuple[T, Took]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Took(time.perf_counter() - wall, time.process_time() - cpu)


def per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _prepare(case: Case, settings: Settings) -> tuple[DictConfig, Corpus, Block]:
    """Warm both arms up (allocator, oneDNN primitives, file cache) on a 2-update block; the
    case's config, its corpus (for the plain arm) and its block at a search trial's cadence."""
    base = compose_config(*case.overrides)
    warm = Block(2, 1, base.data.batch_size * base.bptt.length)
    trainer = _ours_block(compose_config(*case.overrides, *warm.overrides()), warm)[1]
    _plain_block(base, trainer.corpus, warm)
    update_flops = 6 * trainer.model.n_eff() * warm.update_chars  # k1 = k2: span = window
    every = max(1, round(settings.eval_flops / update_flops))
    return base, trainer.corpus, Block(every * settings.evals, every, warm.update_chars)


def _case(case: Case, settings: Settings) -> list[Row]:
    base, corpus, block = _prepare(case, settings)
    cfgs = {arm: compose_config(*case.overrides, *block.overrides(), *extra)
            for arm, (_, extra) in ARMS.items() if arm != PLAIN}  # fmt: skip
    seconds: dict[str, list[Took]] = {arm: [] for arm in ARMS}
    costs: dict[str, list[float]] = {}
    for _, arm in alternating(list(ARMS), settings.repeats):
        if arm == PLAIN:
            seconds[arm].append(_plain_block(base, corpus, block))
            continue
        inspect = None
        if arm == "ours":
            inspect = partial(_add_costs, costs, base, settings.calls, block.evals)
        seconds[arm].append(_ours_block(cfgs[arm], block, inspect)[0])
    m, tc = base.model, base.trainer
    name = (
        f"{case.label}: lstm {m.layers}x{m.hidden_size} k1=k2={base.bptt.length} "
        f"B={base.data.batch_size}, {block.updates} updates, {block.evals} evals of "
        f"{tc.eval_max_tokens} chars"
    )
    return _rows(name, block, seconds, costs)


def _add_costs(
    costs: dict[str, list[float]], cfg: DictConfig, calls: int, evals: int, trainer: Trainer
) -> None:
    for name, value in diagnostic_costs(trainer, cfg, calls, evals).items():
        costs.setdefault(name, []).append(value)


def _ours_block(
    cfg: DictConfig, block: Block, inspect: Callable[[Trainer], None] | None = None
) -> tuple[Took, Trainer]:
    """Seconds of ``fit()`` alone, in a fresh run directory; ``inspect`` sees the trainer
    once ``fit()`` returned, its run directory still there."""
    with tempfile.TemporaryDirectory(prefix="bench-swept-") as tmp:
        trainer = build_trainer(cfg, Path(tmp), [])
        result, took = timed(trainer.fit)
        if inspect is not None:
            inspect(trainer)
    if result.tokens != block.chars or not result.completed:
        raise RuntimeError(
            f"ours trained {result.tokens} characters (stop: {result.stop_reason}), the block "
            f"is {block.chars}: the arms would not compare"
        )
    return took, trainer


def _plain_block(cfg: DictConfig, corpus: Corpus, block: Block) -> Took:
    torch.manual_seed(cfg.seed)
    model = CharLSTM(len(corpus.vocab), cfg.model.hidden_size, cfg.model.embed_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    tc = cfg.trainer
    chars, took = timed(partial(
        plain_run, model, optimizer, corpus, block.updates, block.every,
        window=cfg.bptt.length, max_norm=cfg.clip.max_norm, eval_tokens=tc.eval_max_tokens,
        eval_length=tc.eval_length,
    ))  # fmt: skip
    assert chars == block.chars, (chars, block.chars)
    return took


def plain_run(
    model: CharLSTM,
    optimizer: torch.optim.Optimizer,
    corpus: Corpus,
    updates: int,
    every: int,
    *,
    window: int,
    max_norm: float,
    eval_tokens: int,
    eval_length: int,
) -> int:
    """TBPTT(window, window) for ``updates`` windows, evaluating every ``every`` updates and
    keeping the best weights in memory; returns the characters trained on."""
    stream = corpus.train  # (T, B)
    if updates * window + 1 > stream.size(0):
        raise ValueError(f"{updates} windows of {window} overrun {stream.size(0)} rows")
    state = model.init_hidden(stream.size(1))
    best, best_weights = math.inf, None
    for update in range(1, updates + 1):
        position = (update - 1) * window
        model.train()
        # Keep the state's values (context flows on) but cut the graph behind them, or every
        # backward pass would run through the whole stream so far.
        state = detach(state)
        logits, state = model(stream[position : position + window], state)  # (k, B, V)
        target = stream[position + 1 : position + window + 1]  # (k, B)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if update % every == 0:
            val = mean_loss(model, corpus.val, eval_tokens, eval_length)  # type: ignore[arg-type]
            if val < best:
                best, best_weights = val, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_weights is not None
    return updates * window * stream.size(1)


def diagnostic_costs(
    trainer: Trainer, cfg: DictConfig, calls: int, evals: int
) -> dict[str, float]:
    """Seconds per call of each diagnostic (and of ``mean_loss``, which both arms run, for
    scale), on a trainer whose ``fit()`` returned: its last update's gradients, its optimizer
    state and its whole tables in place, through the functions the trainer calls."""
    model, hidden, tc = trainer.model, trainer.hidden, cfg.trainer

    def norms() -> list[float]:
        return torch.cat([grad_norms(model), hidden_norm(hidden).reshape(1)]).tolist()

    with tempfile.TemporaryDirectory(prefix="bench-swept-costs-") as tmp:
        save = per_call(lambda: checkpoint.save(trainer.state_dict(), Path(tmp) / "c.pt"), 2)
    flow = partial(measure_flow, model, trainer.corpus.val, cfg.bptt.length, tc.eval_length)
    return {
        "update: gradient and hidden norms, one read": per_call(norms, calls),
        f"eval: grad flow (at {FLOWS} of {evals} evaluations)": per_call(flow, 2),
        "eval: checkpoint.pt": save,
        "eval: Parquet flush (tables at the block's end)": per_call(trainer.log.flush, 2),
        "eval: mean_loss (both arms)": per_call(
            lambda: mean_loss(model, trainer.corpus.val, tc.eval_max_tokens, tc.eval_length), 1
        ),
    }


def _rows(
    case: str, block: Block, seconds: dict[str, list[Took]], costs: dict[str, list[float]]
) -> list[Row]:
    rate = {arm: [block.chars / t.wall for t in seconds[arm]] for arm in ARMS}
    cpu = {arm: [block.chars / t.cpu for t in seconds[arm]] for arm in ARMS}
    rows = [summarize("swept", case, ARMS[arm][0], rate[arm], "chars/s") for arm in ARMS]
    for suffix, by in (("", rate), (", CPU time", cpu)):
        rows += [
            summarize("swept", case, f"{ARMS[arm][0]} / plain{suffix}",
                      ratios(by[arm], by[PLAIN]), "ratio")
            for arm in ARMS if arm != PLAIN
        ]  # fmt: skip
    plain = statistics.median(t.wall for t in seconds[PLAIN])
    for name, values in costs.items():
        per_update, flow = name.startswith("update"), name.startswith("eval: grad flow")
        calls = block.updates if per_update else FLOWS if flow else block.evals
        unit, scale = ("us", 1e6) if per_update else ("ms", 1e3)
        cost = [v * scale for v in values]
        rows.append(summarize("swept", case, f"cost per {name}", cost, unit))
        shares = [v * calls / plain for v in values]
        rows.append(summarize("swept", case, f"share of plain block: {name}", shares, "fraction"))
    return rows


def profile_block(case: Case = FULL.cases[1], top: int = 40) -> None:
    """Print where one block of ``ours`` (every diagnostic) spends its time."""
    torch.set_num_threads(1)
    config.register()
    block = _prepare(case, FULL)[2]
    cfg = compose_config(*case.overrides, *block.overrides())
    with tempfile.TemporaryDirectory(prefix="bench-swept-profile-") as tmp:
        trainer = build_trainer(cfg, Path(tmp), [])
        profiler = cProfile.Profile()
        profiler.runcall(trainer.fit)
    for key in ("tottime", "cumulative"):
        pstats.Stats(profiler).sort_stats(key).print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.swept", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat")
    parser.add_argument("--profile", action="store_true", help="profile one block of ours")
    args = parser.parse_args()
    if args.profile:
        profile_block()
        return
    rows = run(args.smoke)
    print(markdown(rows, machine(), "python -m benchmarks.swept"))


if __name__ == "__main__":
    main()
