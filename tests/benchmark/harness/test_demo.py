"""``sslbench demo --quick``: the main job as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_quick_writes_a_leaderboard_and_offline_wandb_runs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    cmd = [
        sys.executable,
        "-m",
        "benchmark.cli",
        "demo",
        "--quick",
        "--no-progress",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LEADERBOARD.md" in proc.stdout and "wandb sync" in proc.stdout
    board = json.loads((out / "leaderboard" / "leaderboard.json").read_text())
    assert set(board["tasks"]) == {"phantom-cls", "phantom-seg"}
    assert any(r["kind"] == "supervised" for r in board["rows"])
    assert list((out / "wandb").glob("offline-run-*"))
    # --overwrite starts again; a folder that is not a results folder is never deleted
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "keep.txt").write_text("mine")
    bad = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "demo", "--quick", "--overwrite", "-o", str(stray)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "refusing to delete" in bad.stderr
    assert (stray / "keep.txt").read_text() == "mine"
