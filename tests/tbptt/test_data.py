from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tbptt.data import (
    Vocab,
    batchify,
    build_corpus,
    count_text,
    delayed_recall_text,
    read_text,
)
from tbptt.errors import ConfigError


def test_batchify_makes_contiguous_streams_one_per_column():
    ids = torch.arange(26)
    streams = batchify(ids, 4)  # 26 // 4 = 6 rows; the last 2 tokens do not fit
    assert streams.shape == (6, 4)
    assert streams[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert streams[:, 1].tolist() == [6, 7, 8, 9, 10, 11]
    assert streams[0].tolist() == [0, 6, 12, 18]


def test_validation_split_comes_from_the_end():
    text = "ab" * 500 + "cd" * 500  # "cd" only in the last half
    corpus = build_corpus(
        text, source="t", val_fraction=0.5, batch_size=2, eval_batch_size=2, window=8
    )
    val_chars = set(corpus.vocab.decode(corpus.val.flatten()))
    train_chars = set(corpus.vocab.decode(corpus.train.flatten()))
    assert val_chars == {"c", "d"} and train_chars == {"a", "b"}
    assert corpus.train.numel() == 1000 and corpus.val.numel() == 1000


def test_vocab_round_trip_and_unknown_character():
    vocab = Vocab("hello world")
    assert vocab.chars == " dehlorw"
    assert vocab.decode(vocab.encode("low")) == "low"
    with pytest.raises(ValueError, match="'z'"):
        vocab.encode("z")


def test_count_corpus_repeats_its_cycle():
    assert count_text(14) == "1 2 3 1 2 3 1 "
    assert count_text(8, period=2) == "1 2 1 2 "


def test_delayed_recall_uppercase_repeats_the_character_delay_steps_back():
    delay = 7
    text = delayed_recall_text(1000, delay=delay, alphabet=4, seed=1)
    assert len(text) == 1000 and set(text.lower()) <= set("abcd")
    uppers = [i for i, c in enumerate(text) if c.isupper()]
    assert 490 <= len(uppers) <= 500  # the final block may be cut off in its lowercase half
    assert all(text[i] == text[i - delay].upper() for i in uppers)
    assert text == delayed_recall_text(1000, delay=delay, alphabet=4, seed=1)


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make_path, message",
    [
        (lambda tmp: tmp / "missing.txt", "data.path: file not found: .*missing.txt"),
        (lambda tmp: tmp, "data.path: not a regular file"),
        (lambda tmp: _write(tmp, b""), "data.path: file is empty: .*corpus.txt"),
        (lambda tmp: _write(tmp, b"abc\xff\xfe"), "data.path: not UTF-8 text: .*offset 3"),
    ],
)
def test_unreadable_corpus_files_name_the_key_and_file(tmp_path, make_path, message):
    with pytest.raises(ConfigError, match=message):
        read_text(make_path(tmp_path))


def test_corpus_too_small_for_batch_and_window():
    with pytest.raises(ConfigError, match=r"data.batch_size x \(window \+ 1\) = 8 x 33"):
        build_corpus(
            "abcdefgh" * 30,
            source="s",
            val_fraction=0.1,
            batch_size=8,
            eval_batch_size=2,
            window=32,
        )


def test_validation_split_too_small():
    with pytest.raises(ConfigError, match="validation split has 2 characters"):
        build_corpus(
            "ab" * 100, source="s", val_fraction=0.01, batch_size=2, eval_batch_size=4, window=4
        )


def test_single_character_vocabulary_is_rejected():
    with pytest.raises(ConfigError, match="vocabulary has 1 character"):
        build_corpus(
            "a" * 1000, source="s", val_fraction=0.1, batch_size=2, eval_batch_size=2, window=4
        )


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffTo be, or not to be".encode())
    assert read_text(path) == "To be, or not to be"
