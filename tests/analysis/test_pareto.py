"""Multi-objective sweeps in ``analysis``: the value columns, the Pareto front (Optuna's rule, in
each direction), the report's Pareto section and figure, and no section that ranks by one value.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from analysis import plots, report
from analysis.load import SweepResults, load
from analysis.rungs import at_rung, effects_view
from tbptt.errors import ConfigError
from tests.analysis.sweep_dirs import build_mixed_sweep, build_multi_objective_sweep
from tests.analysis.test_plots import assert_png
from tests.analysis.test_report import section

MIN_MIN = ["minimize", "minimize"]
# Binh and Korn's trade-off at 11 points (hydra-optuna-sweeper's multi-objective example), trial 3
# failed: 0, 2 and 11 are dominated; 5 and 6 are on the front with equal values.
TRADE_OFF = [(53.0, 18.25), (13.0, 28.25), (16.0, 34.0), None, (29.0, 22.25), (34.0, 18.5),
             (34.0, 18.5), (41.0, 15.25), (5.0, 36.25), (116.0, 9.0), (61.0, 10.25),
             (65.0, 11.25)]  # fmt: skip
SINGLE_ONLY = ["Best configuration", "Top 10 trials", "Did it learn the character names?",
               "Does the ranking hold at a longer budget?"]  # fmt: skip


@pytest.fixture(scope="module")
def trade_off(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path, str]:
    """The sweep, and its report as the CLI writes it (its Markdown)."""
    sweep_dir = tmp_path_factory.mktemp("pareto") / "sweep"
    study = build_multi_objective_sweep(sweep_dir, MIN_MIN, TRADE_OFF)
    assert report.main([str(sweep_dir)]) == 0
    return study, sweep_dir, (sweep_dir / "report.md").read_text()


def table_column(markdown: str, title: str, column: int = 0) -> list[str]:
    """One column of the first table in section ``title``, its header row first."""
    rows = [r for r in section(markdown, title).splitlines() if r.startswith("| ")]
    cells = [re.split(r" (?<!\\)\| ", r.strip("| ")) for r in rows]
    return [c[column] for i, c in enumerate(cells) if i != 1]  # row 1: the --- line


def test_load_gives_one_value_column_per_objective(trade_off):
    study, sweep_dir, _ = trade_off
    results = load(sweep_dir)
    columns = list(results.trials.columns)
    assert columns[columns.index("value") + 1 :][:2] == ["value_0", "value_1"]
    assert results.directions == ("minimize", "minimize") and results.multi_objective
    assert results.objective_columns() == ["value_0", "value_1"]
    assert results.trials["value"].isna().all()
    told = {t.number: t.values for t in study.trials if t.values is not None}
    frame = results.trials.set_index("number")
    assert {n: [frame.loc[n, "value_0"], frame.loc[n, "value_1"]] for n in told} == told
    assert frame.loc[3, ["value_0", "value_1"]].isna().all()  # the failed trial


def test_the_pareto_section_lists_exactly_the_front(trade_off):
    study, sweep_dir, md = trade_off
    trials = table_column(md, "Pareto front")
    assert trials[0] == "trial"
    assert sorted(int(n) for n in trials[1:]) == sorted(t.number for t in study.best_trials)
    assert sorted(int(n) for n in trials[1:]) == [1, 4, 5, 6, 7, 8, 9, 10]
    header = section(md, "Pareto front").split("\n| ---")[0].splitlines()[-1]
    assert header.startswith("| trial | value_0 (minimize) | value_1 (minimize) | optim.lr |")
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    commands = {str(t["trial"]): t["command"] for t in best["pareto_front"]}
    shown = table_column(md, "Pareto front", -1)[1:]
    assert dict(zip(trials[1:], shown, strict=True)) == commands


def test_the_pareto_plot_is_a_png_in_both_documents(trade_off):
    _, sweep_dir, md = trade_off
    assert_png(sweep_dir / "report" / "pareto.png")
    assert "](report/pareto.png)" in section(md, "Pareto front")
    page = (sweep_dir / "report.html").read_text()
    assert 'alt="Every complete trial by value_0 (minimize) and value_1 (minimize)' in page


def test_what_ranks_by_one_value_is_left_out_or_taken_per_objective(trade_off):
    _, _, md = trade_off
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert not set(SINGLE_ONLY) & set(headings)
    knobs = section(md, "What each knob did")
    assert "### Objective `value_0 (minimize)`" in knobs
    assert "### Objective `value_1 (minimize)`" in knobs
    assert "computed from the 11 complete trials" in knobs
    assert "value (pruned: best val loss)" not in section(md, "Gradient health")
    assert "*Objective per clip mode*" in section(md, "Figures")
    assert "(report/clip_modes.png)" not in md and "(report/val_curves.png)" in md
    assert "2 objectives (a multi-objective study): `value_0` minimized" in md


@pytest.mark.parametrize(
    ("directions", "values", "on_front"),
    [
        (MIN_MIN, [(1, 1), (2, 2), (3, 0)], [0, 2]),
        (["minimize", "maximize"], [(1, 1), (2, 2), (3, 0)], [0, 1]),
        (["maximize", "maximize"], [(1, 1), (2, 2), (3, 0)], [1, 2]),
        (["maximize", "minimize"], [(1, 1), (2, 2), (3, 0)], [2]),
        (["minimize"] * 3, [(1, 1, 1), (0, 2, 2), (2, 2, 2), (1, 1, 0)], [1, 3]),
        (["minimize", "maximize", "minimize"], [(1, 1, 1), (1, 2, 1), None, (0, 0, 5)], [1, 3]),
    ],
    ids=["min-min", "min-max", "max-max", "max-min", "3 objectives", "3 mixed, one failed"],
)  # fmt: skip
def test_the_front_respects_each_objectives_direction(tmp_path, directions, values, on_front):
    study = build_multi_objective_sweep(tmp_path / "sweep", directions, values)
    assert sorted(t.number for t in study.best_trials) == on_front
    shutil.copytree(tmp_path / "sweep", tmp_path / "remote", ignore=lambda *_: ["study.journal"])
    for results in (load(tmp_path / "sweep"), load(tmp_path / "remote")):  # the remote: best.yaml
        assert results.directions == tuple(directions)
        assert sorted(plots.front(results)["number"]) == on_front
        labels = [f"value_{i} ({d})" for i, d in enumerate(directions)]
        assert list(report.pareto_table(results).columns[1 : 1 + len(labels)]) == labels


def test_three_objectives_are_drawn_in_the_first_two_and_the_caption_says_so(tmp_path):
    values = [(1, 1, 1), (0, 2, 2), (2, 2, 2), (1, 1, 0), (3, 0, 1)]
    build_multi_objective_sweep(tmp_path, ["minimize"] * 3, values)
    md = report.write_report(tmp_path).read_text()
    assert sorted(int(n) for n in table_column(md, "Pareto front")[1:]) == [1, 3, 4]
    assert "the first two of 3 objectives: the front is over all of them" in md
    assert_png(tmp_path / "report" / "pareto.png")


def test_the_front_is_best_first_on_the_first_objective(tmp_path):
    build_multi_objective_sweep(tmp_path, ["maximize", "minimize"], [(1, 0), (3, 2), (2, 1)])
    assert list(plots.front(load(tmp_path))["number"]) == [1, 2, 0]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SweepResults:
    sweep_dir = tmp_path_factory.mktemp("small") / "sweep"
    build_multi_objective_sweep(sweep_dir, ["minimize", "maximize"], [(1, 1), (2, 2)])
    return load(sweep_dir)


@pytest.mark.parametrize(
    "call",
    [report.top_trials, report.knob_effects, lambda r: report.value_effects(r, "optim.lr"),
     plots.param_importances, effects_view, lambda r: at_rung(r, 1),
     lambda r: plots.clip_modes(r, "x.png")],
    ids=["top trials", "knob effects", "value effects", "importances", "effects view",
         "a rung", "clip modes"],
)  # fmt: skip
def test_what_ranks_by_one_value_says_so_for_several(small, call):
    with pytest.raises(ValueError, match=r"needs one objective, .* is a multi-objective study "
                       r"\(value_0 \(minimize\), value_1 \(maximize\)\)"):  # fmt: skip
        call(small)


def test_each_objective_alone_is_a_single_objective_sweep(small):
    first, second = small.objective_views()
    assert first.directions == ("minimize",) and second.directions == ("maximize",)
    assert list(second.trials["value"]) == [1.0, 2.0]
    assert report.knob_effects(second).set_index("knob").loc["optim.lr", "best trial's value"] \
        == pytest.approx(2e-3)  # fmt: skip


def test_a_single_objective_sweep_has_no_front(tmp_path):
    build_mixed_sweep(tmp_path)
    with pytest.raises(ValueError, match="has one objective: a Pareto front needs several"):
        plots.front(load(tmp_path))


def test_best_yaml_directions_that_do_not_fit_the_value_columns_name_the_file(tmp_path):
    build_multi_objective_sweep(tmp_path, MIN_MIN, [(1, 1)])
    (tmp_path / "study.journal").unlink()
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({**best, "directions": ["minimize"]}))
    said = (r"best\.yaml: directions must be minimize or maximize for each of the 2 "
            r"objective\(s\) of trials\.parquet, got \['minimize'\]")  # fmt: skip
    with pytest.raises(ConfigError, match=said):
        load(tmp_path)
