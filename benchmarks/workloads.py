"""The shared workloads: a synthetic corpus, our Trainer built from objects, the GEMM rate.

Every training benchmark runs the same character LSTM (embedding -> LSTM layers -> linear
decoder) on the same batched streams, once through ``tbptt.trainer.Trainer`` and once through a
hand-written PyTorch loop (``benchmarks.baselines``), so that any difference is the harness.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tbptt.clipping import NormClip
from tbptt.data import Corpus, build_corpus
from tbptt.metrics import MetricsLog
from tbptt.model import CharRNN
from tbptt.schedule import FixedSchedule
from tbptt.trainer import Budget, Divergence, Trainer

VOCAB = "".join(chr(32 + i) for i in range(65))  # 65 symbols, the size of Shakespeare's
BATCH = 32
EVAL_BATCH = 8
LR = 2e-3
MAX_NORM = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """An LSTM language model's shape: ``layers`` x ``hidden`` on an ``embed``-wide input."""

    hidden: int
    layers: int = 2
    embed: int = 64
    vocab: int = len(VOCAB)

    @property
    def name(self) -> str:
        return f"lstm {self.layers}x{self.hidden}"

    @property
    def n_eff(self) -> int:
        """Weights touched per character: sum over layers of 4H(I + H), plus H x V."""
        inputs = [self.embed, *[self.hidden] * (self.layers - 1)]
        rnn = sum(4 * self.hidden * (i + self.hidden) for i in inputs)
        return rnn + self.hidden * self.vocab


def synthetic_corpus(rows: int, batch: int = BATCH, window: int = 64) -> Corpus:
    """``rows`` training rows of ``batch`` streams of random symbols (speed ignores content)."""
    val_chars = EVAL_BATCH * (window + 2)
    rng = random.Random(0)
    text = "".join(rng.choices(VOCAB, k=rows * batch + val_chars))
    fraction = val_chars / len(text)
    return build_corpus(
        text, source="synthetic", val_fraction=fraction, batch_size=batch,
        eval_batch_size=EVAL_BATCH, window=window,
    )  # fmt: skip


def rows_needed(updates: int, k1: int, k2: int) -> int:
    """Training rows for ``updates`` windows without wrapping to the top of the streams."""
    return updates * k1 + k2 + 2


def our_trainer(
    corpus: Corpus, spec: ModelSpec, k1: int, k2: int, updates: int, run_dir: Path
) -> Trainer:
    """Our Trainer from plain objects: Adam, norm clipping, no grad flow, no checkpoints, and
    a single tiny evaluation at the end (the run always ends on one)."""
    torch.manual_seed(0)
    model = CharRNN(spec.vocab, "lstm", spec.embed, spec.hidden, spec.layers)
    tokens = updates * k1 * corpus.train.size(1)
    budget = Budget(
        eval_every=tokens + 1, eval_max_tokens=EVAL_BATCH * k2, eval_length=k2, max_tokens=tokens
    )
    return Trainer(
        model, torch.optim.Adam(model.parameters(), lr=LR), NormClip(MAX_NORM),
        FixedSchedule(k1, k2), corpus, budget, MetricsLog(run_dir),
        divergence=Divergence(None),
    )  # fmt: skip


def gemm_shapes(spec: ModelSpec, batch: int, window: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of the forward GEMMs of one window: per layer the input projection
    over all steps at once and the recurrent product once per step; then the decoder."""
    shapes = []
    inputs = [spec.embed, *[spec.hidden] * (spec.layers - 1)]
    for i in inputs:
        shapes.append((window * batch, i, 4 * spec.hidden, 1))
        shapes.append((batch, spec.hidden, 4 * spec.hidden, window))
    shapes.append((window * batch, spec.hidden, spec.vocab, 1))
    return shapes


class GemmPass:
    """One call runs each GEMM of ``shapes`` (m, k, n, count) once per count; ``flops`` is what
    a call computes. Timing calls between training updates gives R, the matmul rate of the
    model's own GEMM shapes under the same machine load.

    Args:
        shapes: from :func:`gemm_shapes`.
        backend: ``mm`` (``torch.mm``, MKL on this build) or ``onednn`` (oneDNN's linear on
            oneDNN-layout tensors, the library behind the fused CPU LSTM kernels).

    Example:
        >>> gemm = GemmPass(gemm_shapes(ModelSpec(128), 32, 64)); gemm(); gemm.flops
    """

    def __init__(self, shapes: list[tuple[int, int, int, int]], backend: str = "mm") -> None:
        if backend not in ("mm", "onednn"):
            raise ValueError(f"backend must be 'mm' or 'onednn', got {backend!r}")
        self._onednn = backend == "onednn"
        self._operands = [self._operand(m, k, n) + (count,) for m, k, n, count in shapes]
        self.flops = sum(2 * m * k * n * count for m, k, n, count in shapes)

    def _operand(self, m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
        x, w = torch.randn(m, k), torch.randn(n, k)
        if self._onednn:
            return x.to_mkldnn(), w.to_mkldnn()
        return x, w.t(), torch.empty(m, n)

    def __call__(self) -> None:
        for *tensors, count in self._operands:
            for _ in range(count):
                if self._onednn:
                    torch._C._nn.mkldnn_linear(tensors[0], tensors[1], None)
                else:
                    torch.mm(tensors[0], tensors[1], out=tensors[2])
