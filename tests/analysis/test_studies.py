"""``make studies``: every study that asks a question, one index page, finished studies skipped."""

from __future__ import annotations

import json

import pytest

from analysis import studies

# k1_k2_recall shrunk: 2 grid points of a tiny GRU on a short delayed_recall corpus.
TINY_RECALL = [
    "data.length=4000",
    "model.hidden_size=8",
    "model.embed_size=4",
    "trainer.max_tokens=2048",
    "trainer.eval_every_tokens=1024",
    "trainer.eval_max_tokens=512",
    "bptt.k1=choice(4)",
    "bptt.overlap=choice(0,8)",
    "seed=choice(0)",
    "hydra.sweeper.n_jobs=2",
    "trainer.threads=1",
]


def test_every_study_in_conf_asks_a_question_and_names_its_answer():
    found = studies.studies()
    assert set(found) == {
        "bptt_length",
        "clipping",
        "k1_k2",
        "k1_k2_recall",
        "lr_range",
        "random_bptt",
    }
    assert all(q.endswith("?") for q in found.values())


@pytest.mark.slow
def test_studies_write_one_index_and_skip_what_finished(tmp_path, capsys, monkeypatch):
    out = tmp_path / "multirun"
    assert studies.main(["--out", str(out), "--only", "k1_k2_recall", "--", *TINY_RECALL]) == 0
    index = (out / "index.md").read_text()
    assert "| k1_k2_recall | From which k2 does TBPTT learn" in index
    assert "- k1 = 4: " in index  # the answer itself, not only a link
    assert "[k1_k2_recall: the full report](k1_k2_recall/report.md)" in index
    assert "| lr_range | Which learning rates learn" in index and "not run" in index
    html = (out / "index.html").read_text()
    assert '<a href="k1_k2_recall/report.html">' in html and "<script" not in html
    record = json.loads((out / "studies.json").read_text())
    assert record["k1_k2_recall"]["exit_code"] == 0 and record["k1_k2_recall"]["wall_seconds"] > 0
    journal = out / "k1_k2_recall" / "study.journal"
    stamp = journal.stat().st_mtime_ns

    def no_run(*args, **kwargs):
        raise AssertionError("a finished study was run again")

    monkeypatch.setattr(studies.subprocess, "run", no_run)
    capsys.readouterr()
    assert studies.main(["--out", str(out), "--only", "k1_k2_recall", "--", *TINY_RECALL]) == 0
    assert "k1_k2_recall: finished before, skipped" in capsys.readouterr().out
    assert journal.stat().st_mtime_ns == stamp


def test_a_failed_or_changed_study_runs_again(tmp_path, monkeypatch):
    out = tmp_path / "multirun"
    (out / "lr_range").mkdir(parents=True)
    (out / "lr_range" / "report.md").write_text("# old\n")
    ran = []

    def fake_run(out_dir, name, overrides):
        ran.append(name)
        return studies.Run(exit_code=1, wall_seconds=1.0, finished_at=0.0)

    monkeypatch.setattr(studies, "run_study", fake_run)
    studies.write_runs(out, {"lr_range": studies.Run(1, 5.0, 0.0)})  # failed last time
    assert studies.main(["--out", str(out), "--only", "lr_range"]) == 1
    studies.write_runs(out, {"lr_range": studies.Run(0, 5.0, 0.0)})
    (out / "lr_range" / "study.journal").write_text("")  # the study changed after its report
    import os

    os.utime(out / "lr_range" / "report.md", (1, 1))
    assert studies.main(["--out", str(out), "--only", "lr_range"]) == 1
    assert ran == ["lr_range", "lr_range"]


def test_an_unknown_study_is_refused_by_name(tmp_path, capsys):
    assert studies.main(["--out", str(tmp_path), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only: no study ['nope']; the studies are ['bptt_length'")


@pytest.mark.parametrize("text", ["{not json", '{"lr_range": {"exit": 0}}'])
def test_a_damaged_record_names_its_file(tmp_path, capsys, text):
    (tmp_path / "studies.json").write_text(text)
    assert studies.main(["--out", str(tmp_path), "--only", "lr_range"]) == 2
    assert f"{tmp_path / 'studies.json'}: not a studies record" in capsys.readouterr().err
