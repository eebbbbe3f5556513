"""A pre-declared primary family of contrasts: validated up front, Holm within each family."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from benchmark.harness.experiment import ExperimentError, experiment_hash, load_experiment
from benchmark.harness.families import adjust, is_primary, primary_problem
from benchmark.harness.leaderboard import aggregate, build_leaderboard, render_markdown
from benchmark.harness.stats import holm
from tests.benchmark.harness.test_leaderboard_protocol import grid
from tests.benchmark.harness.test_runner import TINY

TASKS = {"t": ["linear", "finetune"]}


def records() -> list[dict]:
    """Real, VICReg-on-real, synthetic SimCLR and scratch at two fractions x 5 seeds."""
    return grid({"real-simclr": 0.45, "real-vicreg": 0.5, "synthetic-simclr": 0.42, "scratch": 0.3})


@pytest.mark.parametrize(
    ("primary", "message"),
    [
        ([], "non-empty list"),
        ({"kind": "method"}, "non-empty list"),
        ([{"kind": "methods"}], r"\[0\]\.kind: 'methods' is not one of"),
        ([{"kind": "real"}, {"fraction": 0.5}], r"\[1\]\.fraction: 0\.5 is not one of"),
        ([{"adapter": "knn"}], "adapter: 'knn'"),
        ([{"task": "busi-seg"}], "task: 'busi-seg'"),
        ([{"kind": "real", "seed": 0}], r"unknown key\(s\) \['seed'\]"),
        ([{"fraction": True}], r"fraction: True is not one of"),
    ],
)
def test_bad_declarations_name_the_selector(primary: object, message: str) -> None:
    problem = primary_problem(primary, TASKS, [0.1, 1.0], "evaluate.statistics.primary")
    assert problem is not None
    assert problem.startswith("evaluate.statistics.primary")
    assert re.search(message, problem), problem
    assert primary_problem([{"kind": "method", "fraction": 1}], TASKS, [0.1, 1.0], "x") is None


def test_selectors_match_every_given_field() -> None:
    c = {"reference_kind": "method", "task": "t", "adapter": "linear", "fraction": 0.1}
    assert is_primary(c, [{"kind": "method"}])
    assert is_primary(c, [{"kind": "real"}, {"adapter": "linear", "fraction": 0.1}])
    assert not is_primary(c, [{"kind": "method", "fraction": 1.0}])
    assert not is_primary(c, [{"kind": "scratch"}])


def test_holm_within_the_primary_family_and_over_all_for_the_rest() -> None:
    comps = [
        {"reference_kind": k, "task": "t", "adapter": "linear", "fraction": 0.1, "p_value": p}
        for k, p in (("method", 0.01), ("scratch", 0.02), ("method", 0.03), ("real", 0.5))
    ]
    one = [dict(c) for c in comps]
    adjust(one, None)
    overall = [round(p, 6) for p in holm([0.01, 0.02, 0.03, 0.5])]
    assert [c["p_adjusted"] for c in one] == overall
    assert not any("family" in c for c in one)
    two = [dict(c) for c in comps]
    adjust(two, [{"kind": "method"}])
    assert [c["family"] for c in two] == ["primary", "secondary", "primary", "secondary"]
    prim = holm([0.01, 0.03])
    # the declaration sharpens its own contrasts and relaxes nothing else
    assert [c["p_adjusted"] for c in two] == [prim[0], overall[1], prim[1], overall[3]]
    none = [dict(c) for c in comps]
    adjust(none, [{"kind": "unpruned"}])  # matches nothing: every contrast as before
    assert [c["p_adjusted"] for c in none] == overall
    assert {c["family"] for c in none} == {"secondary"}


def test_the_leaderboard_adjusts_the_declared_family_apart_and_says_so() -> None:
    recs = records()
    plain = aggregate(recs)
    declared = aggregate(recs, primary_family=[{"kind": "method"}])
    assert "families" not in plain and "family" not in plain["comparisons"][0]
    fam = declared["families"]
    methods = [c for c in declared["comparisons"] if c["reference_kind"] == "method"]
    assert fam["primary"] == len(methods) == 2  # VICReg vs SimCLR at 0.1 and 1.0
    assert fam["secondary"] == len(declared["comparisons"]) - 2
    assert all(c["family"] == "primary" for c in methods)
    raw = [c["p_value"] for c in methods]
    assert [c["p_adjusted"] for c in methods] == [round(p, 6) for p in holm(raw)]
    # the same differences and intervals; only the adjustment differs
    for a, b in zip(plain["comparisons"], declared["comparisons"], strict=True):
        assert a["mean_diff"] == b["mean_diff"] and a["diff_ci_low"] == b["diff_ci_low"]
        if b["family"] == "primary":
            assert b["p_adjusted"] <= a["p_adjusted"]
        else:
            assert b["p_adjusted"] == a["p_adjusted"]
    assert {f["family"] for f in declared["findings"]} == {"primary", "secondary"}
    text = render_markdown(declared, "demo", {"records": len(recs)})
    assert "### Primary family" in text and "### Secondary: exploratory" in text
    assert "primary family (2 contrasts; declared in the experiment: kind method)" in text
    assert "| p adj. | Wilcoxon p | n | family |" in text
    assert "### Primary family" not in render_markdown(plain, "demo", {"records": len(recs)})


def test_the_declaration_travels_with_the_experiment(tmp_path: Path) -> None:
    """Declared in the experiment: validated at load, read back by `sslbench leaderboard`;
    an experiment without one keeps its hash."""
    with pytest.raises(ExperimentError, match="statistics.primary"):
        load_experiment(TINY, ["evaluate.statistics.primary=[{kind: methd}]"])
    exp = load_experiment(TINY, ["evaluate.statistics.primary=[{kind: method}]"])
    assert exp.evaluate is not None
    assert exp.evaluate.statistics["primary"] == [{"kind": "method"}]
    assert experiment_hash(exp) != experiment_hash(load_experiment(TINY))
    folder = tmp_path / "run"
    for i, rec in enumerate(records()):
        path = folder / "evaluate" / "records" / f"r{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    (folder / "experiment.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    board = json.loads((build_leaderboard(folder) / "leaderboard.json").read_text())
    assert board["families"]["declared"] == [{"kind": "method"}]
