"""TBPTT learns a dependency only if its gradient reaches back that far: k2 must exceed it.

In ``data=delayed_recall`` every uppercase letter repeats the lowercase letter DELAY steps back;
the lowercase half is random. Predicting an uppercase letter needs the last DELAY inputs, and of
the k1 losses of an update the earliest backpropagates through only k2 - k1 + 1 inputs, so every
loss reaches far enough iff k2 >= DELAY + k1 - 1. Both runs use the same k1 (same updates, same
token budget) and differ only in k2::

    learned:      k1=4, k2=16   every loss sees >= 13 inputs (needs 8)   -> ~ ln(a) / 2 per char
    not learned:  k1=4, k2=6    no loss sees more than 6 inputs          -> ~ ln(a) per char

Measured on 2 CPU cores (seed 0/1, 200k tokens): best validation loss 0.75/0.76 for k2=16 and
1.46/1.51 for k2=6, against floor 0.69 and chance 1.39; about 15 s per seed for both runs.
"""

from __future__ import annotations

import math

import pytest

from tbptt.train import build_trainer

DELAY, ALPHABET, K1 = 8, 4, 4
CHANCE = math.log(ALPHABET)  # uppercase letters no better than the random lowercase ones
FLOOR = CHANCE / 2  # the lowercase half is random, the uppercase half fully predictable
MARGIN = 0.1

SETUP = [
    "data=delayed_recall",
    f"data.delay={DELAY}",
    f"data.alphabet={ALPHABET}",
    "data.length=60000",
    "data.batch_size=32",
    # Evaluation starts from a zero state, which takes a few blocks to find the phase: read
    # long validation streams (all 6000 characters) so that warm-up barely counts.
    "data.eval_batch_size=4",
    "trainer.eval_max_tokens=6000",
    "trainer.eval_length=64",
    "model=gru",
    "model.embed_size=16",
    "model.hidden_size=64",
    "optim.lr=0.01",
    f"bptt.k1={K1}",
    "trainer.max_tokens=200000",
    "trainer.eval_every_tokens=50000",
    "trainer.grad_flow=false",
    "trainer.divergence_factor=null",
    "trainer.checkpoint=false",
]


def best_val_loss(tiny_cfg, tmp_path, k2: int, seed: int) -> float:
    cfg = tiny_cfg(*SETUP, f"bptt.k2={k2}", f"seed={seed}")
    result = build_trainer(cfg, tmp_path / f"k2={k2}", []).fit()
    assert result.completed, result.stop_reason
    return result.best_val_loss


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_delayed_recall_is_learned_only_when_k2_exceeds_the_delay(tiny_cfg, tmp_path, seed):
    reaching = best_val_loss(tiny_cfg, tmp_path, k2=2 * DELAY, seed=seed)
    short = best_val_loss(tiny_cfg, tmp_path, k2=DELAY - 2, seed=seed)
    assert reaching < (FLOOR + CHANCE) / 2 - MARGIN, (reaching, FLOOR, CHANCE)
    assert short > CHANCE - MARGIN / 2, (short, FLOOR, CHANCE)
