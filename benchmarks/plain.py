"""What a user would write instead of sweeping: one plain char-rnn training loop.

The classic defaults (Karpathy's char-rnn, with Adam as most PyTorch ports use): a 1-layer LSTM,
Adam at 2e-3, gradient norm clipped at 5, windows of 64 characters, 50 streams, a constant
learning rate. It trains for a wall-clock time, evaluates the whole validation split every
``eval_every_s`` seconds and keeps the weights of its best validation loss (as char-rnn users
keep their best checkpoint); at the end those weights are scored on the test split. The splits
are the project's own (``tbptt.data.build_corpus``), so the test split is the same characters
the sweep is scored on.

``python -m benchmarks.plain --hidden 256 --seconds 600`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tbptt.data import Corpus, build_corpus
from tbptt.evaluate import mean_loss


@dataclass(frozen=True)
class PlainResult:
    hidden: int
    seconds: float
    chars: int
    best_val_loss: float  # whole validation split, at its best evaluation
    test_loss: float  # whole test split, with the best-validation weights
    last_test_loss: float  # ... with the last weights


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int, embed: int = 64) -> None:
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, embed), nn.LSTM(embed, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        self.hidden_size, self.layers = hidden, 1

    def init_hidden(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(1, batch, self.hidden_size)  # (1, B, H)
        return h, torch.zeros_like(h)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        out, state = self.lstm(self.embed(x), state)  # (T, B, H)
        return self.decoder(out), state  # (T, B, V)


def load(path: Path, val_fraction: float, test_fraction: float, batch: int) -> Corpus:
    text = path.read_text(encoding="utf-8")
    return build_corpus(
        text, source=str(path), val_fraction=val_fraction, test_fraction=test_fraction,
        batch_size=batch, eval_batch_size=16, window=64,
    )  # fmt: skip


def train(
    corpus: Corpus,
    hidden: int,
    seconds: float,
    eval_every_s: float = 60.0,
    lr: float = 2e-3,
    window: int = 64,
) -> PlainResult:
    torch.manual_seed(0)
    model = CharLSTM(len(corpus.vocab), hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    stream = corpus.train  # (T, B)
    start, next_eval, position, chars = time.perf_counter(), eval_every_s, 0, 0
    state = model.init_hidden(stream.size(1))
    best, best_weights = math.inf, None
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        if position + window + 1 > stream.size(0):
            position, state = 0, model.init_hidden(stream.size(1))
        model.train()
        state = (state[0].detach(), state[1].detach())  # carry the values, cut the graph
        logits, state = model(stream[position : position + window], state)
        target = stream[position + 1 : position + window + 1]
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        position, chars = position + window, chars + window * stream.size(1)
        if elapsed >= next_eval:
            best, best_weights = keep_best(model, corpus, best, best_weights)
            next_eval += eval_every_s
    best, best_weights = keep_best(model, corpus, best, best_weights)
    assert corpus.test is not None and best_weights is not None
    last_test = mean_loss(model, corpus.test)  # type: ignore[arg-type]
    model.load_state_dict(best_weights)
    return PlainResult(
        hidden=hidden,
        seconds=time.perf_counter() - start,
        chars=chars,
        best_val_loss=best,
        test_loss=mean_loss(model, corpus.test),  # type: ignore[arg-type]
        last_test_loss=last_test,
    )


def keep_best(model: CharLSTM, corpus: Corpus, best: float, weights: dict | None) -> tuple:
    val = mean_loss(model, corpus.val)  # type: ignore[arg-type]
    if val < best:
        return val, {k: v.clone() for k, v in model.state_dict().items()}
    return best, weights


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain", description=__doc__)
    parser.add_argument("--corpus", type=Path, default=Path("data/shakespeare.txt"))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--eval-every", type=float, default=60.0)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = load(args.corpus, args.val_fraction, args.test_fraction, args.batch)
    print(json.dumps(asdict(train(corpus, args.hidden, args.seconds, args.eval_every))))


if __name__ == "__main__":
    main()
