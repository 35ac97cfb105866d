"""Character corpora, split and batched into parallel streams for truncated BPTT.

Batch layout (as in PyTorch's word_language_model). The token sequence is cut into B equal,
contiguous streams, one per column, so row t holds the t-th character of every stream::

    a b c d e f g h i j k l m n o p q r s t u v w x     (24 tokens, B = 4)

    +---+---+---+---+
    | a | g | m | s |   row 0
    | b | h | n | t |   row 1
    | c | i | o | u |   ...
    | d | j | p | v |
    | e | k | q | w |
    | f | l | r | x |   row 5
    +---+---+---+---+       shape (T, B) = (6, 4)

A window of k rows ``data[i : i + k]`` is the input and ``data[i + 1 : i + k + 1]`` the target.
Windows are read in order, so the last hidden state of one window is the right initial state of
the next: that is what lets truncated BPTT carry context beyond the window it backpropagates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tbptt.errors import ConfigError


class Vocab:
    """A character vocabulary: sorted unique characters <-> integer ids."""

    def __init__(self, chars: str) -> None:
        self.chars = "".join(sorted(set(chars)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        # Vectorized: a per-character Python loop takes seconds on a 5 MB corpus.
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(table, points)
        unknown = (ids >= len(table)) | (table[np.minimum(ids, len(table) - 1)] != points)
        if unknown.any():
            bad = chr(int(points[unknown.argmax()]))
            raise ValueError(f"character {bad!r} is not in the vocabulary")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def read_text(path: str | Path, key: str = "data.path") -> str:
    """Read a UTF-8 corpus, failing with a message that names ``key`` and the file."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError(f"{key}: file not found: {file}")
    if not file.is_file():
        raise ConfigError(f"{key}: not a regular file: {file}")
    try:
        text = file.read_bytes().decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{key}: not UTF-8 text: {file} (invalid byte at offset {err.start})"
        ) from None
    if not text:
        raise ConfigError(f"{key}: file is empty: {file}")
    return text


def count_text(length: int, period: int = 3) -> str:
    """The sequence ``1 2 3 1 2 3 ...`` (``period`` symbols), ``length`` characters long."""
    cycle = " ".join(str(i % 10) for i in range(1, period + 1)) + " "
    return (cycle * (length // len(cycle) + 1))[:length]


def delayed_recall_text(length: int, delay: int, alphabet: int = 8, seed: int = 0) -> str:
    """Blocks of ``delay`` random lowercase letters, each followed by the same letters uppercased.

    Every uppercase character equals the character exactly ``delay`` steps earlier, so it can
    only be predicted by a model whose gradient reaches back at least ``delay`` steps (k2 > delay).
    The lowercase half is random: the best achievable loss is about half of ln(alphabet).
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"[:alphabet]
    blocks: list[str] = []
    for _ in range(-(-length // (2 * delay))):  # ceil(length / block length)
        block = "".join(rng.choice(letters) for _ in range(delay))
        blocks.append(block + block.upper())
    return "".join(blocks)[:length]


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (N // B, B): B contiguous streams, one per column (see the module docstring)."""
    rows = ids.numel() // batch_size
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()  # (T, B)


@dataclass(kw_only=True)
class Corpus:
    """A vocabulary and the batched train, validation and test streams."""

    vocab: Vocab
    train: torch.Tensor  # (T, B) token ids
    val: torch.Tensor  # (T_val, B_eval) token ids
    source: str
    test: torch.Tensor | None = None  # (T_test, B_eval); None: no test split, or withheld

    def to(self, device: torch.device | str) -> Corpus:
        test = None if self.test is None else self.test.to(device)
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=test)

    def without_test(self) -> Corpus:
        """The same corpus with the test split withheld (what training and sweeps get)."""
        return replace(self, test=None)


def build_corpus(
    text: str,
    *,
    source: str,
    val_fraction: float,
    test_fraction: float = 0.0,
    batch_size: int,
    eval_batch_size: int,
    window: int,
) -> Corpus:
    """Encode ``text``, split it into train | val | test (the last ``test_fraction`` is the
    test split, the ``val_fraction`` before it validation), and batch each.

    ``window`` is the longest BPTT window the trainer will ask for; the training split must
    hold at least one such window (plus its shifted target) in every stream.
    """
    split = split_text(
        text, source=source, val_fraction=val_fraction, test_fraction=test_fraction,
        batch_size=batch_size, eval_batch_size=eval_batch_size,
    )  # fmt: skip
    check_split(split, window)
    return split.corpus


@dataclass(frozen=True, kw_only=True)
class Split:
    """A corpus and what made it: its splits' lengths before batching, and the settings."""

    corpus: Corpus
    chars: dict[str, int]  # train, validation and test characters
    fractions: dict[str, float]  # validation and test
    batch_size: int
    eval_batch_size: int


def split_text(
    text: str,
    *,
    source: str,
    val_fraction: float,
    test_fraction: float,
    batch_size: int,
    eval_batch_size: int,
) -> Split:
    """The encoding, splitting and batching of ``build_corpus`` (``check_split`` checks it)."""
    vocab = Vocab(text)
    if len(vocab) < 2:
        raise ConfigError(f"{source}: vocabulary has {len(vocab)} character(s); need at least 2")
    ids = vocab.encode(text)
    n_val, n_test = int(len(ids) * val_fraction), int(len(ids) * test_fraction)
    n_train = len(ids) - n_val - n_test
    train_ids, val_ids = ids[:n_train], ids[n_train : n_train + n_val]
    test_ids = ids[n_train + n_val :]
    corpus = Corpus(
        vocab=vocab,
        train=batchify(train_ids, batch_size),
        val=batchify(val_ids, eval_batch_size),
        source=source,
        test=batchify(test_ids, eval_batch_size) if test_fraction else None,
    )
    return Split(
        corpus=corpus,
        chars={"train": n_train, "validation": n_val, "test": len(test_ids)},
        fractions={"validation": val_fraction, "test": test_fraction},
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )


def check_split(split: Split, window: int) -> None:
    """Every stream of the training split holds a ``window`` and its shifted target; the
    validation and test splits hold two characters per evaluation stream."""
    source, chars, batch = split.corpus.source, split.chars, split.batch_size
    need_train = batch * (window + 1)
    if chars["train"] < need_train:
        raise ConfigError(
            f"{source}: training split has {chars['train']} characters, but data.batch_size x "
            f"(window + 1) = {batch} x {window + 1} = {need_train} are needed; use a larger "
            "corpus or a smaller data.batch_size / bptt length"
        )
    need = split.eval_batch_size * 2
    for name, key in (("validation", "val_fraction"), ("test", "test_fraction")):
        fraction = split.fractions[name]
        if fraction and chars[name] < need:
            raise ConfigError(
                f"{source}: {name} split has {chars[name]} characters (data.{key}={fraction}), "
                f"need at least data.eval_batch_size x 2 = {need}"
            )


class LastSplit:
    """The last split made in this process, by what it was made from: a sweep's worker reuses
    it for its next trial of the same data (reading, encoding and batching the Shakespeare
    corpus takes about 0.35 s, most of a small trial's start-up).

    Example:
        >>> made = []
        >>> def make():
        ...     made.append(1)
        ...     return split_text(count_text(400), source="count", val_fraction=0.1,
        ...                       test_fraction=0.0, batch_size=4, eval_batch_size=2)
        >>> cache = LastSplit()
        >>> cache.get("count 400", make) is cache.get("count 400", make), len(made)
        (True, 1)
    """

    def __init__(self) -> None:
        self._key: object = None
        self._split: Split | None = None

    def holds(self, key: object) -> bool:
        """Whether the last split kept is ``key``'s (None: never)."""
        return key is not None and key == self._key and self._split is not None

    def get(self, key: object, make: Callable[[], Split]) -> Split:
        """The split made for ``key`` (None: not to be kept), made now if it is not the last."""
        if self.holds(key):
            assert self._split is not None
            return self._split
        self._key, self._split = None, None  # no stale split if make() fails
        split = make()
        if key is not None:
            self._key, self._split = key, split
        return split
