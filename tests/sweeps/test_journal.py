"""A damaged journal: a broken last line is cut off (a copy kept), one with records after it is
refused by name; either way nothing recorded is lost and the study stays readable."""

from __future__ import annotations

import optuna
import pytest

from analysis.report import main as report_main
from sweeps.storage import open_storage
from tbptt.errors import ConfigError


def journal_with_trials(tmp_path, n=3):
    study = optuna.create_study(study_name="s", storage=open_storage(None, tmp_path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return tmp_path / "study.journal"


def load(tmp_path):
    return optuna.load_study(study_name="s", storage=open_storage(None, tmp_path))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-25],  # a write cut short by a crash
        lambda data: data + b'{"op_code": 5, "trial_id"',  # a write cut short, whole file kept
        lambda data: data + b"garbage\n",
        lambda data: data + b"[1, 2]\n",
        lambda data: data + b"\xff\xfe\n\n",
    ],
    ids=["truncated", "partial record", "garbage line", "not a record", "binary"],
)
def test_a_broken_last_line_is_cut_off_and_the_study_goes_on(tmp_path, damage):
    path = journal_with_trials(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(damage(whole))
    damaged = path.read_bytes()
    study = load(tmp_path)
    before = len(study.trials)
    assert before == 3
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(load(tmp_path).trials) == 5  # readable after writing on, by a fresh reader
    kept = list(tmp_path.glob("study.journal.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the file as found


def test_a_broken_line_with_records_after_it_is_refused_and_left_alone(tmp_path):
    path = journal_with_trials(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"garbage\n")
    path.write_bytes(b"".join(lines))
    with pytest.raises(ConfigError, match=r"study.journal: line 4 is not a journal record"):
        open_storage(None, tmp_path)
    assert path.read_bytes() == b"".join(lines)
    assert not list(tmp_path.glob("study.journal.damaged-*"))


def test_the_report_names_a_journal_it_cannot_read(tmp_path, capsys):
    path = journal_with_trials(tmp_path)
    path.write_bytes(b"{bad\n" + path.read_bytes())
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "line 1 is not a journal record" in err
