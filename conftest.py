"""Names the examples in the packages' docstrings use: they run as doctests (``pytest`` collects
``tbptt/``, ``sweeps/`` and ``analysis/`` with ``--doctest-modules``), so an example that no
longer works fails the test suite. Each example gets fresh, small, real objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _pytest.doctest import DoctestItem


def tiny_trainer(run_dir: Path):  # noqa: ANN201 - tbptt.trainer is imported lazily
    """A 16-unit LSTM on the ``count`` corpus, two evaluations of 256 tokens."""
    from tbptt.clipping import NoClip
    from tbptt.data import build_corpus, count_text
    from tbptt.metrics import MetricsLog
    from tbptt.model import CharRNN
    from tbptt.schedule import FixedSchedule
    from tbptt.trainer import Budget, Trainer

    torch.manual_seed(0)
    corpus = build_corpus(count_text(4000), source="count", val_fraction=0.1, batch_size=4,
                          eval_batch_size=2, window=8)  # fmt: skip
    model = CharRNN(len(corpus.vocab), hidden_size=16, layers=1)
    budget = Budget(eval_every=256, eval_max_tokens=64, eval_length=8, max_tokens=512)
    optimizer = torch.optim.Adam(model.parameters())
    return Trainer(model, optimizer, NoClip(), FixedSchedule(8), corpus, budget,
                   MetricsLog(run_dir))  # fmt: skip


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, doctest_namespace: dict) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    from tests.analysis.sweep_dirs import build_mixed_sweep

    torch.set_num_threads(1)
    tmp_path = request.getfixturevalue("tmp_path")  # empty: the example's own
    objects = request.getfixturevalue("tmp_path_factory").mktemp("doctest")
    sweep_dir = objects / "multirun" / "lr"
    build_mixed_sweep(sweep_dir)
    from tbptt.trainer import Events

    doctest_namespace.update(
        tmp_path=tmp_path, trainer=tiny_trainer(objects / "run"), sweep_dir=sweep_dir,
        Events=Events,
    )  # fmt: skip
