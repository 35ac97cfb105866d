from __future__ import annotations

import pytest
import torch

from tbptt.model import CharRNN, detach


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_forward_shapes(cell):
    model = CharRNN(vocab_size=11, cell=cell, embed_size=5, hidden_size=7, layers=2)
    x = torch.randint(0, 11, (9, 3))  # (T, B)
    logits, hidden = model(x, model.init_hidden(3))
    assert logits.shape == (9, 3, 11)
    states = hidden if cell == "lstm" else (hidden,)
    assert all(h.shape == (2, 3, 7) for h in states)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_detached_state_is_a_leaf_without_history(cell):
    model = CharRNN(vocab_size=5, cell=cell, hidden_size=4)
    _, hidden = model(torch.randint(0, 5, (6, 2)), model.init_hidden(2))
    states = hidden if cell == "lstm" else (hidden,)
    assert all(h.grad_fn is not None for h in states)
    cut = detach(hidden)
    cut_states = cut if cell == "lstm" else (cut,)
    assert all(h.grad_fn is None and h.is_leaf for h in cut_states)
    assert all(torch.equal(a, b) for a, b in zip(states, cut_states, strict=True))


def test_unknown_cell_names_the_key():
    with pytest.raises(ValueError, match="model.cell must be one of"):
        CharRNN(vocab_size=5, cell="transformer")
