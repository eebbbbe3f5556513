"""The demo's promise, checked on its records on every CI run (issue 21).

``sslbench demo`` runs the shipped ``demo`` experiment (phantom variant ``birads``,
a DDPM trained on its train split, SimCLR on real / synthetic / mixed images,
classification and segmentation at 10 % of the labels). Its leaderboard must show the
phenomenon the suite measures: the task is learnable (supervised with every label
reaches AUC >= 0.95 and Dice >= 0.7), and at the smallest label fraction every
pretrained arm beats scratch (margins below). The wall-time
target (5 minutes on 2 idle cores) is a benchmark figure (README), not asserted
here: the project never times tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_board(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "benchmark.cli", "demo", "--no-progress", "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "leaderboard" / "leaderboard.json").read_text()), proc.stdout


def _cell(board: dict[str, Any], kind: str, key: str) -> dict[str, Any]:
    (row,) = [r for r in board["rows"] if r["kind"] == kind]
    return dict(row["cells"][key])


def test_supervised_with_every_label_solves_both_tasks(
    demo_board: tuple[dict[str, Any], str],
) -> None:
    board, _ = demo_board
    assert _cell(board, "supervised", "phantom-birads-cls/finetune@1")["mean"] >= 0.95
    assert _cell(board, "supervised", "phantom-birads-seg/segmentation@1")["mean"] >= 0.7


def test_every_pretrained_arm_beats_scratch_at_the_smallest_fraction(
    demo_board: tuple[dict[str, Any], str],
) -> None:
    """Every pretrained arm (real, synthetic, mixed) beats scratch at the smallest fraction.

    Asserted with margins that survive another CPU's floating point (the chain generator
    -> SimCLR -> fine-tuning is not bit-identical across instruction sets): every
    end-to-end contrast (finetune, segmentation) gains >= 0.1 and every linear-probe
    contrast is positive; per task the best contrast's interval excludes 0. On the idle
    reference run (README) all 9 intervals exclude 0, the closest being the real arm's
    linear probe, +0.076 [0.007, 0.142]: too close to assert on another CPU.
    """
    board, _ = demo_board
    pretrained = {r["strategy"] for r in board["rows"] if r["kind"] == "pretrained"}
    assert {s.split(" / ")[0].split()[0] for s in pretrained} == {"real", "synthetic", "mixed"}
    for task, spec in board["tasks"].items():
        smallest = min(spec["fractions"])
        comps = [
            c
            for c in board["comparisons"]
            if c["task"] == task and c["fraction"] == smallest and c["reference_kind"] == "scratch"
        ]
        # one contrast per pretrained strategy and adapter, none missing
        assert {(c["strategy"], c["adapter"]) for c in comps} == {
            (s, a) for s in pretrained for a in spec["adapters"]
        }
        for c in comps:
            floor = 0.0 if c["adapter"] == "linear" else 0.1
            assert c["mean_diff"] > floor, (task, c["strategy"], c["adapter"], c)
        best = max(comps, key=lambda c: c["mean_diff"])
        assert best["diff_ci_low"] > 0, (task, best)
    # no encoder of the demo is flagged as not having learned
    assert not [
        r for r in board["rows"] if int((r.get("pretraining") or {}).get("did_not_learn") or 0)
    ]


def test_the_supervised_reference_says_it_has_fewer_seeds(
    demo_board: tuple[dict[str, Any], str],
) -> None:
    """The demo runs its full-label reference at ``supervised_seeds`` (2 seeds, the most
    expensive cells); the leaderboard marks those cells and ranks nothing (one fraction)."""
    board, stdout = demo_board
    md = Path(stdout.split("\nleaderboard: ")[1].split()[0]).read_text()
    for key in ("phantom-birads-cls/finetune@1", "phantom-birads-seg/segmentation@1"):
        assert _cell(board, "supervised", key)["seeds"] == [0, 1]
    assert _cell(board, "scratch", "phantom-birads-cls/finetune@0.1")["seeds"] == [0, 1, 2, 3, 4]
    assert md.count("(2 seeds)") == 2 and "(k seeds): a cell with fewer" in md
    assert board["ranking"] == [] and "Label efficiency" not in md
    # a t interval over 2 seeds leaves [0, 1]; the leaderboard clips it to the metric's range
    for row in board["rows"]:
        for cell in row["cells"].values():
            assert 0.0 <= cell["ci_low"] <= cell["mean"] <= cell["ci_high"] <= 1.0, row["strategy"]


def test_the_demo_says_its_result_in_words(demo_board: tuple[dict[str, Any], str]) -> None:
    board, stdout = demo_board
    for task in board["tasks"]:
        assert f"{task} (" in stdout and "best gain over scratch" in stdout
    assert "LEADERBOARD.md" in stdout
