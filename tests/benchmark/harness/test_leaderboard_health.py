"""The leaderboard flags encoders that did not learn and labels the calibrated scratch arm."""

from __future__ import annotations

import csv
import io
from typing import Any

from benchmark.harness.findings import finding_line, render_findings
from benchmark.harness.health import LEGEND
from benchmark.harness.leaderboard import (
    CALIBRATED_LABEL,
    aggregate,
    render_csv,
    render_markdown,
)
from tests.benchmark.harness.test_leaderboard_protocol import current


def health(verdict: str, init: float, end: float) -> dict[str, Any]:
    """A pretraining run's ``health`` entry (as :func:`pretrain.monitor.health` writes it)."""
    reasons = [] if verdict == "learned" else [f"kNN accuracy rose by {end - init:+.3f} (< 0.02)"]
    return {
        "verdict": verdict,
        "reasons": reasons,
        "knn": {"init": init, "end": end, "gain": end - init, "margin": 0.02, "note": None},
        "loss": {"first": 4.2, "last": 4.19, "chance": 4.14},
        "collapse": {"collapsed": False},
    }


def records(
    verdicts: tuple[str, ...] = ("did not learn",), calibrated: bool = True
) -> list[dict[str, Any]]:
    out = []
    for frac in (0.1, 1.0):
        for s in range(5):
            for pre_seed, verdict in enumerate(verdicts):
                rec = current("real-simclr", frac, s, 0.6 + 0.01 * pre_seed)
                rec["encoder"]["id"] = f"real-{pre_seed}"
                rec["encoder"]["hash"] = f"weights{pre_seed}"
                rec["encoder"]["metadata"]["health"] = health(verdict, 0.60, 0.59 + 0.05 * pre_seed)
                out.append(rec)
            rec = current("scratch", frac, s, 0.1)
            if calibrated:
                rec["encoder"]["metadata"]["bn_calibration"] = {
                    "calibrated": True,
                    "split": "train",
                }
            out.append(rec)
    return out


def test_an_encoder_that_did_not_learn_is_flagged_everywhere() -> None:
    board = aggregate(records())
    real = next(r for r in board["rows"] if r["kind"] == "pretrained")
    assert real["pretraining"] == {
        "verdict": "did not learn",
        "encoders": 1,
        "did_not_learn": 1,
        "knn_init": 0.6,
        "knn_end": 0.59,
        "reasons": ["kNN accuracy rose by -0.010 (< 0.02)"],
    }
    # the findings keep their verdict but carry the flag, and their lines say so
    assert {f["verdict"] for f in board["findings"]} == {"better"}
    assert all(f["did_not_learn"] == ["real / simclr / resnet18"] for f in board["findings"])
    line = finding_line(board["findings"][0])
    assert line.endswith(
        "-> better ⚠ not comparable: real / simclr / resnet18 did not learn during pretraining"
    )
    assert any("⚠ 2 of them involve an encoder" in x for x in render_findings(board))
    md = render_markdown(board, "demo", {"records": 20})
    assert LEGEND in md
    assert "| real / simclr / resnet18 ⚠ | " in md  # the table
    assert "| linear | 1 | real / simclr / resnet18 ⚠ |" in md  # the ranking
    assert "| real / simclr / resnet18 ⚠ | scratch | linear | 0.1 |" in md  # comparisons
    rows = list(csv.DictReader(io.StringIO(render_csv(board))))
    mine = [r for r in rows if r["strategy"] == "real / simclr / resnet18"]
    assert mine and all(r["pretrain_verdict"] == "did not learn" for r in mine)
    assert {(r["knn_init"], r["knn_end"]) for r in mine} == {("0.6", "0.59")}
    assert all(r["pretrain_verdict"] == r["knn_init"] == "" for r in rows if r["kind"] == "scratch")


def test_pooled_pretraining_seeds_count_the_encoders_that_did_not_learn() -> None:
    board = aggregate(records(("learned", "did not learn")))
    real = next(r for r in board["rows"] if r["kind"] == "pretrained")
    assert real["pretraining"]["verdict"] == "did not learn"
    assert (real["pretraining"]["encoders"], real["pretraining"]["did_not_learn"]) == (2, 1)
    assert "| real / simclr / resnet18 ⚠1/2 | " in render_markdown(board, "d", {"records": 30})
    healthy = aggregate(records(("learned", "learned")))
    row = next(r for r in healthy["rows"] if r["kind"] == "pretrained")
    assert row["pretraining"]["verdict"] == "learned"
    md = render_markdown(healthy, "d", {"records": 30})
    assert "⚠" not in md and LEGEND not in md
    assert not any("did_not_learn" in f for f in healthy["findings"])


def test_the_calibrated_scratch_arm_is_labelled_and_old_records_keep_their_label() -> None:
    board = aggregate(records())
    scratch = next(r for r in board["rows"] if r["kind"] == "scratch")
    assert scratch["strategy"] == "scratch / resnet18"  # the comparisons' reference name
    assert scratch["init"] == CALIBRATED_LABEL
    assert scratch["cells"]["t/linear@0.1"]["bn_calibrated"] == 5
    md = render_markdown(board, "demo", {"records": 20})
    assert f"| scratch / resnet18 ({CALIBRATED_LABEL}) | " in md
    assert f"{CALIBRATED_LABEL}: the frozen-feature probes (linear) of the scratch" in md

    old_records = records(calibrated=False)
    for r in old_records:  # from before the monitor and the calibration
        r["encoder"]["metadata"].pop("health", None)
    old = aggregate(old_records)
    assert [r["strategy"] for r in old["rows"]] == [r["strategy"] for r in board["rows"]]
    for row in old["rows"]:
        assert "pretraining" not in row and "init" not in row
        assert not any("bn_calibrated" in c for c in row["cells"].values())
    md = render_markdown(old, "old", {"records": 20})
    assert "| scratch / resnet18 | " in md and CALIBRATED_LABEL not in md and "⚠" not in md


def test_every_pretrained_encoder_gets_a_line_in_the_health_table() -> None:
    """Two encoders of one row (``learned`` and ``did not learn``): one entry each, with
    the kNN monitor init -> end and the loss against chance, in the JSON and the Markdown."""
    board = aggregate(records(verdicts=("learned", "did not learn")))
    table = board["pretraining_health"]
    assert [(e["strategy"], e["verdict"]) for e in table] == [
        ("real / simclr / resnet18", "learned"),
        ("real / simclr / resnet18", "did not learn"),
    ]
    assert [e["knn_end"] for e in table] == [0.59, 0.64]
    assert all(e["loss_chance"] == 4.14 for e in table)
    md = render_markdown(board, "demo", {"records": 30})
    assert "## Pretraining health" in md
    assert "| real / simclr / resnet18 | 0.600 -> 0.640 | – -> – | 4.200 -> 4.190 (4.140) |" in md
    # baselines and records from before the monitor add nothing
    scratch_only = [r for r in records() if r["baseline"] == "scratch"]
    assert "pretraining_health" not in aggregate(scratch_only)
    assert "dense-probe Dice" not in md  # the column only appears where the monitor ran


def test_the_health_table_shows_the_dense_probe_of_a_mask_only_dataset() -> None:
    """Encoders pretrained on a dataset without classes (hippocampus): no kNN figures,
    the dense-probe monitor's Dice init -> end in its own column."""
    recs = records(verdicts=("learned",))
    for rec in recs:
        h = rec["encoder"]["metadata"].get("health")
        if h:
            h["knn"] = {"init": None, "end": None, "gain": None, "margin": 0.02, "note": None}
            h["dense"] = {"metric": "dense_dice", "init": 0.379, "end": 0.434, "gain": 0.055}
            h["loss"]["chance"] = None
    board = aggregate(recs)
    (entry,) = board["pretraining_health"]
    assert (entry["dense_init"], entry["dense_end"], entry["verdict"]) == (0.379, 0.434, "learned")
    md = render_markdown(board, "demo", {"records": 20})
    assert "| dense-probe Dice init -> end |" in md
    assert "| real / simclr / resnet18 | – -> – | – -> – | 0.379 -> 0.434 | 4.200 -> 4.190 |" in md
