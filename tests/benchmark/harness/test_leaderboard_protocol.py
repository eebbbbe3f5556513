"""The leaderboard under the current protocol: case-level intervals, Holm, findings, legacy."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmark.harness.findings import findings, headline, render_findings, verdict
from benchmark.harness.leaderboard import aggregate, protocol_of, render_markdown
from tests.benchmark.harness.test_leaderboard import record

N_CASES = 120
LABELS = np.random.default_rng(0).integers(0, 2, N_CASES)


def current(strategy: str, fraction: float, seed: int, shift: float, best_step: int = 40) -> dict:
    """A current-protocol record whose test probabilities separate the classes by ``shift``."""
    rng = np.random.default_rng([seed, int(fraction * 100), int(shift * 1000)])
    score = np.clip(0.5 + (LABELS - 0.5) * shift + rng.normal(0, 0.25, N_CASES), 0.001, 0.999)
    probs = np.stack([1 - score, score], axis=1)
    rec = record(strategy, fraction, seed, float(roc_auc_score(LABELS, score)))
    rec.update(
        schema="sslbench-cell/2",
        per_case={
            "ids": [str(i) for i in range(N_CASES)],
            "labels": LABELS.tolist(),
            "probs": probs.tolist(),
        },
        subset={"train_sha256": f"{fraction}-{seed}"},
        extra={"best_step": best_step},
    )
    rec["metrics"]["auc"] = float(roc_auc_score(LABELS, score))
    return rec


def grid(shifts: dict[str, float], seeds: int = 5) -> list[dict]:
    """Current-protocol records of each arm (strategy -> class separation) at fractions
    0.1 and 1.0 x ``seeds`` evaluation seeds, in run order."""
    return [
        current(strategy, frac, s, shift)
        for frac in (0.1, 1.0)
        for s in range(seeds)
        for strategy, shift in shifts.items()
    ]


def board_of(strong: float = 0.6, weak: float = 0.1, seeds: int = 5) -> dict:
    recs = []
    for frac in (0.1, 1.0):
        for s in range(seeds):
            recs.append(current("real-simclr", frac, s, strong))
            recs.append(current("scratch", frac, s, weak, best_step=0 if frac == 0.1 else 40))
    return aggregate(recs)


def test_current_records_get_case_level_intervals_holm_and_findings() -> None:
    board = board_of()
    assert board["protocol"] == "current" and board["multiplicity"] == "Holm"
    assert "test cases" in board["interval_method"]
    cell = next(r for r in board["rows"] if r["kind"] == "pretrained")["cells"]["t/linear@0.1"]
    assert cell["n_cases"] == N_CASES and cell["ci_low"] < cell["mean"] < cell["ci_high"]
    comps = board["comparisons"]
    assert comps and all(c["protocol"] == "current" for c in comps)
    raw = [c["p_value"] for c in comps]
    assert all(a >= r for a, r in zip([c["p_adjusted"] for c in comps], raw, strict=True))
    verdicts = {f["fraction"]: f["verdict"] for f in board["findings"]}
    assert verdicts == {0.1: "better", 1.0: "better"}
    scratch = next(r for r in board["rows"] if r["kind"] == "scratch")["cells"]
    assert scratch["t/linear@0.1"]["first_weights_kept"] == 5  # best step 0: flagged
    text = render_markdown(board, "demo", {"records": 20})
    assert "## Findings (generated)" in text and "⚑5" in text and "p adj." in text


def test_equal_arms_are_not_resolved() -> None:
    board = board_of(strong=0.3, weak=0.3)
    assert {f["verdict"] for f in findings(board)} <= {"not resolved", "better", "worse"}
    assert any(f["verdict"] == "not resolved" for f in findings(board))


def test_legacy_records_are_marked_and_never_assessed() -> None:
    legacy = [record("real-simclr", 0.1, s, 0.6 + s / 100) for s in range(3)]
    legacy += [record("scratch", 0.1, s, 0.5 + s / 100) for s in range(3)]
    assert {protocol_of(r) for r in legacy} == {"legacy"}
    board = aggregate(legacy)
    assert board["protocol"] == "legacy"
    assert {f["verdict"] for f in board["findings"]} == {"legacy protocol: not assessed"}
    text = render_markdown(board, "old", {"records": 6})
    assert "Legacy protocol" in text and "none assessed" in "\n".join(render_findings(board))


def test_mixed_protocols_are_never_compared() -> None:
    recs = [current("real-simclr", 0.1, s, 0.6) for s in range(3)]
    recs += [record("scratch", 0.1, s, 0.5) for s in range(3)]  # legacy scratch only
    board = aggregate(recs)
    assert board["protocol"] == "mixed"
    assert [r["kind"] for r in board["rows"]] == ["pretrained"]  # legacy rows left out
    assert board["comparisons"] == []


def test_verdict_rules() -> None:
    c = {"diff_ci_low": 0.01, "diff_ci_high": 0.05, "p_adjusted": 0.01}
    assert verdict(c, True) == "better" and verdict(c, False) == "worse"
    assert verdict({**c, "p_adjusted": 0.2}, True) == "not resolved"
    assert verdict({**c, "diff_ci_low": -0.01}, True) == "not resolved"
    assert verdict({**c, "protocol": "legacy"}, True) == "legacy protocol: not assessed"


def test_headline_block_quotes_the_best_gain_at_the_smallest_fraction() -> None:
    """The block printed after a run: every number is one of the leaderboard's comparisons."""
    board = board_of()
    lines = headline(board)
    best = next(
        c for c in board["comparisons"] if c["fraction"] == 0.1 and c["reference_kind"] == "scratch"
    )
    assert lines[0].startswith("t (auc), 0.1 of the labels: best gain over scratch")
    assert f"{best['mean_diff']:+.3f}" in lines[0]
    assert f"[{best['diff_ci_low']:+.3f}, {best['diff_ci_high']:+.3f}]" in lines[0]
    assert lines[0].endswith("-> better")
    assert not any("did not learn" in x for x in lines)
    assert headline({"comparisons": [], "tasks": {}}) == []


def test_intervals_are_clipped_to_the_metric_range_and_say_so() -> None:
    """Two seeds far apart near AUC 1: the seed level's t interval passes 1; the cell's
    interval stops at 1, the cell says it was clipped and the table says so once."""
    recs = [current("real-simclr", 0.1, s, shift) for s, shift in ((0, 0.98), (1, 0.6))]
    recs += [current("scratch", 0.1, s, 0.1) for s in (0, 1)]
    board = aggregate(recs)
    cell = next(r for r in board["rows"] if r["kind"] == "pretrained")["cells"]["t/linear@0.1"]
    assert cell["ci_high"] == 1.0 and cell["ci_clipped"] is True
    assert cell["ci_low"] < cell["mean"] < 1.0
    scratch = next(r for r in board["rows"] if r["kind"] == "scratch")["cells"]["t/linear@0.1"]
    assert "ci_clipped" not in scratch  # inside the range: left as computed
    text = render_markdown(board, "demo", {"records": 4})
    assert text.count("and is clipped to it.") == 1  # the legend, under its task
    assert "1.000] †" in text
    # HD95 has no upper bound: only its lower one (0) clips
    from benchmark.harness.leaderboard import _clip

    assert _clip(-3.0, 250.0, "hd95") == (0.0, 250.0)
    assert _clip(-0.1, 1.2, "dice") == (0.0, 1.0)
    assert _clip(-0.1, 1.2, "unknown-metric") == (-0.1, 1.2)


def test_pretraining_seeds_get_rows_case_level_intervals_and_same_seed_contrasts() -> None:
    """Real and synthetic SimCLR pretrained with seeds 0 and 1, mixed with seed 0 only: one
    row per pretraining seed, each with a two-level interval; synthetic seed k is compared
    with real seed k, mixed (seed 0) with real seed 0; the variance section lists both."""
    recs = []
    shifts = {("real", 0): 0.5, ("real", 1): 0.45, ("synthetic", 0): 0.3, ("synthetic", 1): 0.2}
    for frac in (0.1, 1.0):
        for s in range(5):
            for (source, pre), shift in shifts.items():
                rec = current(f"{source}-simclr", frac, s, shift)
                rec["encoder"]["metadata"]["config"]["seed"] = pre
                rec["encoder"]["id"] = f"{source}-{pre}"
                recs.append(rec)
            recs.append(current("mixed-simclr", frac, s, 0.4))
            recs.append(current("scratch", frac, s, 0.1))
    board = aggregate(recs)
    rows = {r["strategy"]: r for r in board["rows"]}
    seeded = [
        f"{src} / simclr / resnet18 · pretraining seed {k}"
        for src in ("real", "synthetic")
        for k in (0, 1)
    ]
    assert set(seeded) <= set(rows)
    assert "mixed 0.5 / simclr / resnet18" in rows
    for name in seeded:
        cell = rows[name]["cells"]["t/linear@0.1"]
        assert cell["n_cases"] == N_CASES and "interval_note" not in cell
    vs_real = {
        c["strategy"]: c["reference"]
        for c in board["comparisons"]
        if c["reference_kind"] == "real" and c["fraction"] == 0.1
    }
    real = "real / simclr / resnet18 · pretraining seed {}"
    assert vs_real == {
        "synthetic / simclr / resnet18 · pretraining seed 0": real.format(0),
        "synthetic / simclr / resnet18 · pretraining seed 1": real.format(1),
        "mixed 0.5 / simclr / resnet18": real.format(0),
    }
    assert all(c["p_value"] is not None for c in board["comparisons"])
    spread = {(e["strategy"], e["cell"]): e for e in board["pretraining_variance"]}
    assert set(spread) == {
        (f"{src} / simclr / resnet18", f"t/linear@{f:g}")
        for src in ("real", "synthetic")
        for f in (0.1, 1.0)
    }
    md = render_markdown(board, "seeds", {"records": len(recs)})
    assert "## Pretraining variance" in md


def test_another_method_is_compared_with_simclr_on_the_same_real_images() -> None:
    """Wolf et al.'s question (masked vs contrastive): the real arm of every other method
    gets a pre-declared contrast against the real SimCLR arm, in the findings and headline."""
    board = aggregate(grid({"real-simclr": 0.3, "real-spark": 0.6, "scratch": 0.1}))
    method = [c for c in board["comparisons"] if c["reference_kind"] == "method"]
    assert [(c["strategy"], c["reference"], c["fraction"]) for c in method] == [
        ("real / spark / resnet18", "real / simclr / resnet18", 0.1),
        ("real / spark / resnet18", "real / simclr / resnet18", 1.0),
    ]
    assert all(c["mean_diff"] > 0 for c in method)
    # SimCLR's own real arm is the anchor: it is compared with scratch only
    simclr = [c for c in board["comparisons"] if c["strategy"] == "real / simclr / resnet18"]
    assert {c["reference_kind"] for c in simclr} == {"scratch"}
    lines = render_findings(board)
    assert any("every other method vs SimCLR" in line for line in lines)
    assert any("real / spark / resnet18 vs real / simclr / resnet18" in line for line in lines)
    assert any("other methods vs SimCLR on real images at 0.1" in h for h in headline(board))
    assert "| real / spark / resnet18 | simclr | linear | 0.1 |" in render_markdown(
        board, "demo", {"records": 30}
    )
    # a leaderboard of SimCLR arms only gets no such contrast and keeps its findings text
    assert "every other method" not in "".join(render_findings(board_of()))
