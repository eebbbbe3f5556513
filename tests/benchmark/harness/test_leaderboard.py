"""Leaderboard aggregation on fixed records: rows, CIs, pairing, ranking, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.harness.leaderboard import aggregate, build_leaderboard
from benchmark.harness.stats import bootstrap_ci

SPEC = {"metrics": [{"name": "auc", "higher_is_better": True}]}


def record(strategy: str, fraction: float, seed: int, auc: float, pre_seed: int = 0) -> dict:
    if strategy in ("scratch", "supervised"):
        encoder = {"id": strategy, "metadata": {"encoder": {"name": "resnet18"}}}
        baseline = strategy
    else:
        source, method = strategy.split("-")
        encoder = {
            "id": f"{strategy}-{pre_seed}",
            "metadata": {
                "method": method,
                "encoder": {"name": "resnet18"},
                "config": {"source": source, "synthetic_ratio": 0.5, "seed": pre_seed},
            },
        }
        baseline = None
    return {
        "schema": "sslbench-cell/1",
        "task": {"name": "t", "spec": SPEC},
        "adapter": {"name": "linear"},
        "baseline": baseline,
        "fraction": fraction,
        "seed": seed,
        "primary_metric": "auc",
        "metrics": {"auc": auc, "accuracy": auc - 0.1},
        "encoder": encoder,
        "train_time_s": 1.0,
        "eval_time_s": 0.5,
        "provenance": {"git_commit": "abc", "versions": {"torch": "x"}, "hardware": {}},
    }


REAL = {0.1: [0.60, 0.62, 0.65, 0.61, 0.63], 1.0: [0.80, 0.82, 0.81, 0.83, 0.80]}
SCRATCH = {0.1: [0.55, 0.56, 0.60, 0.57, 0.58], 1.0: [0.70, 0.72, 0.71, 0.74, 0.70]}


def records() -> list[dict]:
    out = []
    for frac in (0.1, 1.0):
        for seed in range(5):
            out.append(record("real-simclr", frac, seed, REAL[frac][seed]))
            # two pretraining seeds of the mixed strategy: a row per pretraining seed
            out.append(record("mixed-simclr", frac, seed, REAL[frac][seed] + 0.01, pre_seed=0))
            out.append(record("mixed-simclr", frac, seed, REAL[frac][seed] + 0.03, pre_seed=1))
            out.append(record("scratch", frac, seed, SCRATCH[frac][seed]))
        out.append(record("supervised", 1.0, 0, 0.75)) if frac == 1.0 else None
    return out


def test_rows_cells_and_confidence_intervals() -> None:
    board = aggregate(records())
    names = [r["strategy"] for r in board["rows"]]
    assert names == [
        "real / simclr / resnet18",
        "mixed 0.5 / simclr / resnet18 · pretraining seed 0",
        "mixed 0.5 / simclr / resnet18 · pretraining seed 1",
        "scratch / resnet18",
        "supervised / resnet18",
    ]
    real = board["rows"][0]["cells"]["t/linear@0.1"]
    assert real["mean"] == pytest.approx(sum(REAL[0.1]) / 5)
    lo, hi = bootstrap_ci(REAL[0.1])
    assert (real["ci_low"], real["ci_high"]) == pytest.approx((lo, hi), abs=1e-6)
    for row, shift in zip(board["rows"][1:3], (0.01, 0.03), strict=True):
        mixed = row["cells"]["t/linear@0.1"]
        assert mixed["n"] == 5  # one encoder's evaluation seeds
        assert mixed["mean"] == pytest.approx(sum(REAL[0.1]) / 5 + shift)
        assert row["pooled"] == "mixed 0.5 / simclr / resnet18"
    # the spread of the pretraining seeds next to the evaluation seeds' SD
    variance = {e["cell"]: e for e in board["pretraining_variance"]}
    assert set(variance) == {"t/linear@0.1", "t/linear@1"}
    v = variance["t/linear@0.1"]
    assert v["strategy"] == "mixed 0.5 / simclr / resnet18"
    assert v["pretraining_spread"] == pytest.approx(0.02, abs=1e-6)
    assert v["evaluation_sd"] == pytest.approx(float(np.std(REAL[0.1], ddof=1)), abs=1e-6)
    assert list(v["pretraining_seed_means"]) == ["0", "1"]


def test_paired_comparisons_and_ranking() -> None:
    board = aggregate(records())
    comp = {(c["strategy"], c["reference_kind"], c["fraction"]): c for c in board["comparisons"]}
    vs_scratch = comp[("real / simclr / resnet18", "scratch", 0.1)]
    diff = [a - b for a, b in zip(REAL[0.1], SCRATCH[0.1], strict=True)]
    assert vs_scratch["p_value"] == pytest.approx(sps.wilcoxon(diff).pvalue, abs=1e-6)
    assert vs_scratch["mean_diff"] == pytest.approx(sum(diff) / 5, abs=1e-6)
    for seed, shift in ((0, 0.01), (1, 0.03)):
        vs_real = comp[(f"mixed 0.5 / simclr / resnet18 · pretraining seed {seed}", "real", 1.0)]
        assert vs_real["reference"] == "real / simclr / resnet18"
        assert vs_real["mean_diff"] == pytest.approx(shift, abs=1e-6)
    assert ("real / simclr / resnet18", "real", 0.1) not in comp
    ranks = [e["strategy"] for e in board["ranking"]]
    assert ranks == [
        "mixed 0.5 / simclr / resnet18 · pretraining seed 1",
        "mixed 0.5 / simclr / resnet18 · pretraining seed 0",
        "real / simclr / resnet18",
        "scratch / resnet18",
    ]
    real_rank = next(e for e in board["ranking"] if e["strategy"].startswith("real"))
    assert real_rank["fraction_to_match_scratch_full"] is not None
    assert real_rank["fraction_to_match_scratch_full"] < 1.0


def test_files_are_regenerated_identically(tmp_path: Path) -> None:
    rec_dir = tmp_path / "results" / "records"
    rec_dir.mkdir(parents=True)
    for i, r in enumerate(records()):
        (rec_dir / f"r{i}.json").write_text(json.dumps(r))
    a = build_leaderboard(tmp_path / "results", out=tmp_path / "a")
    b = build_leaderboard(tmp_path / "results", out=tmp_path / "b")
    for name in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "curves_t.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    md = (a / "LEADERBOARD.md").read_text()
    assert "| mixed 0.5 / simclr / resnet18 · pretraining seed 1 | **0.652**" in md
    assert "## Pretraining variance" in md
    assert "| mixed 0.5 / simclr / resnet18 | t/linear@0.1 | s0: 0.632, s1: 0.652 | 0.020 |" in md
    assert "![learning curves of t](curves_t.png)" in md


def test_added_and_weighted_mixed_arms_are_rows_of_their_own() -> None:
    """A mixed arm in mode ``add`` with real weight 10 (no ratio) is its own row (after
    the replace arm), labelled from its encoder's config, compared with real-only and
    scratch."""
    recs = []
    for seed in range(3):
        recs.append(record("real-simclr", 0.1, seed, 0.70 + 0.01 * seed))
        recs.append(record("scratch", 0.1, seed, 0.60 + 0.01 * seed))
        recs.append(record("mixed-simclr", 0.1, seed, 0.72 + 0.01 * seed))
        added = record("mixed-simclr", 0.1, seed, 0.75 + 0.01 * seed)
        added["encoder"]["id"] = f"added-{seed}"
        added["encoder"]["metadata"]["config"].update(
            mixing_mode="add", real_weight=10.0, synthetic_ratio=None
        )
        recs.append(added)
    board = aggregate(recs)
    names = [r["strategy"] for r in board["rows"]]
    assert names.index("mixed 0.5 / simclr / resnet18") < names.index(
        "mixed+add x10 / simclr / resnet18"
    )
    row = next(r for r in board["rows"] if r["strategy"].startswith("mixed+add"))
    assert (row["mode"], row["real_weight"]) == ("add", 10.0)
    refs = {c["reference_kind"] for c in board["comparisons"] if c["strategy"] == row["strategy"]}
    assert refs == {"scratch", "real"}


def test_weak_view_arms_are_compared_with_their_real_counterpart() -> None:
    """A weak-view mixed arm is compared with the weak-view real arm (same views), and the
    weak-view real arm with the standard one (reference kind ``real-standard``)."""
    recs = []
    for seed in range(3):
        for strategy, value, strength in (
            ("real-simclr", 0.70, None), ("real-simclr", 0.71, "weak"),
            ("mixed-simclr", 0.73, "weak"), ("scratch", 0.6, None),
        ):  # fmt: skip
            rec = record(strategy, 0.1, seed, value + 0.01 * seed)
            if strength:
                rec["encoder"]["id"] += "-weak"
                rec["encoder"]["metadata"]["config"]["strength"] = strength
            recs.append(rec)
    board = aggregate(recs)
    names = {r["strategy"] for r in board["rows"]}
    assert {"real / simclr-weak / resnet18", "mixed 0.5 / simclr-weak / resnet18"} <= names
    refs = {(c["strategy"], c["reference_kind"], c["reference"]) for c in board["comparisons"]}
    assert ("mixed 0.5 / simclr-weak / resnet18", "real", "real / simclr-weak / resnet18") in refs
    assert (
        "real / simclr-weak / resnet18", "real-standard", "real / simclr / resnet18"
    ) in refs  # fmt: skip
    # without a weak-view real arm, the weak mixed arm meets the standard one under its own kind
    alone = aggregate([r for r in recs if r["encoder"]["id"] != "real-simclr-0-weak"])
    kinds = {(c["strategy"], c["reference_kind"]) for c in alone["comparisons"]}
    assert ("mixed 0.5 / simclr-weak / resnet18", "real-standard") in kinds
    assert ("mixed 0.5 / simclr-weak / resnet18", "real") not in kinds
