"""A character-level recurrent language model on the fused ``torch.nn`` RNN modules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CELLS = {"rnn_tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn_tanh": 1, "gru": 3, "lstm": 4}  # weight blocks of a cell's input and recurrence

# LSTM state is a pair (h, c); RNN_TANH and GRU state is h alone. Each is (layers, B, H).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_shape(cell: str, embed_size: int, hidden_size: int, layers: int, dropout: float) -> None:
    """The model's arguments, as ``model.*`` keys name them (``ModelConfig`` checks a config
    with this before any data is read; ``CharRNN`` on construction)."""
    if cell not in CELLS:
        raise ValueError(f"model.cell must be one of {sorted(CELLS)}, got {cell!r}")
    for key, value in (("embed_size", embed_size), ("hidden_size", hidden_size),
                       ("layers", layers)):  # fmt: skip
        if value < 1:
            raise ValueError(f"model.{key} must be >= 1, got {value}")
    if not 0 <= dropout < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")


class CharRNN(nn.Module):
    """Embedding -> multi-layer RNN (rnn_tanh | gru | lstm) -> linear decoder over the vocabulary.

    Args:
        vocab_size: number of distinct characters.
        cell: ``rnn_tanh``, ``gru`` or ``lstm``.
        embed_size: embedding width.
        hidden_size: recurrent state width H.
        layers: stacked recurrent layers.
        dropout: dropout on embeddings, between layers and before the decoder.

    Example:
        >>> model = CharRNN(vocab_size=65, cell="lstm", hidden_size=128, layers=2)
        >>> x = torch.zeros(10, 32, dtype=torch.long)  # (T, B) character ids
        >>> logits, hidden = model(x, model.init_hidden(batch_size=32))
        >>> logits.shape, hidden[0].shape
        (torch.Size([10, 32, 65]), torch.Size([2, 32, 128]))
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        embed_size: int = 64,
        hidden_size: int = 128,
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_shape(cell, embed_size, hidden_size, layers, dropout)
        self.cell, self.hidden_size, self.layers = cell, hidden_size, layers
        self.embed = nn.Embedding(vocab_size, embed_size)
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn_tanh" else {}
        # One fused single-layer module per layer (not one multi-layer module), so that each
        # layer's output sequence is a tensor that error clipping and diagnostics can hook.
        self.rnns = nn.ModuleList(
            CELLS[cell](embed_size if i == 0 else hidden_size, hidden_size, 1, **kwargs)
            for i in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.output_hooks: list[Callable[[torch.Tensor], torch.Tensor | None]] = []

    def n_eff(self) -> int:
        """Weights every character passes through: sum over layers of G x H x (I + H) for a cell
        of G gate blocks (LSTM 4, GRU 3, tanh 1), plus the decoder's H x V. Embedding lookups
        and biases are not counted. A forward and backward pass costs about 6 x n_eff FLOPs per
        character and step (2 forward, 4 backward), as in ``benchmarks/``."""
        inputs = [self.embed.embedding_dim, *[self.hidden_size] * (self.layers - 1)]
        gates = GATES[self.cell]
        rnn = sum(gates * self.hidden_size * (i + self.hidden_size) for i in inputs)
        return rnn + self.hidden_size * self.decoder.out_features

    def init_hidden(self, batch_size: int) -> Hidden:
        weight = self.decoder.weight
        h = weight.new_zeros(self.layers, batch_size, self.hidden_size)  # (L, B, H)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def forward(self, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        out = self.drop(self.embed(x))  # (T, B, E)
        states = []
        for i, rnn in enumerate(self.rnns):
            out, state = rnn(out, layer_state(hidden, i))  # (T, B, H); state (1, B, H)
            if out.requires_grad:
                for hook in self.output_hooks:
                    out.register_hook(hook)
            states.append(state)
            out = self.drop(out)
        logits = self.decoder(out)  # (T, B, V)
        return logits, stack_states(states)


def layer_state(hidden: Hidden, i: int) -> Hidden:
    if isinstance(hidden, tuple):
        return (hidden[0][i : i + 1], hidden[1][i : i + 1])
    return hidden[i : i + 1]


def stack_states(states: list) -> Hidden:
    if isinstance(states[0], tuple):
        return (torch.cat([h for h, _ in states]), torch.cat([c for _, c in states]))
    return torch.cat(states)


def detach(hidden: Hidden) -> Hidden:
    """Cut the autograd graph at ``hidden``: the values flow on, the gradient stops here."""
    if isinstance(hidden, tuple):
        return (hidden[0].detach(), hidden[1].detach())
    return hidden.detach()


def hidden_norm(hidden: Hidden) -> torch.Tensor:
    """The L2 norm of h over every layer and stream (a 0-d tensor, read with other values)."""
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    return h.detach().norm()
