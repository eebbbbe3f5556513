"""``sslbench synth``: in-process through the parser, and as real subprocesses."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmark.cli.synth import add_synth_command
from benchmark.core.errors import DataError, OutputExistsError
from benchmark.data.h5format import compute_content_hash, read_meta


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_synth_command(sub)
    args = parser.parse_args(["synth", *argv])
    return int(args.handler(args))


def _wired() -> bool:
    from benchmark.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return any("synth" in a.choices for a in actions)


def sslbench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True, timeout=600
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sslbench: error: ")
    return lines[0]


wired = pytest.mark.skipif(
    not _wired(),
    reason="`sslbench synth` is not wired into benchmark/cli/main.py yet (add_synth_command)",
)


def test_train_sample_import_phantom_in_process(tiny_real: Path, tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    assert (
        run(
            "train",
            "--data",
            str(tiny_real),
            "-o",
            str(gen),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--channels",
            "8,16",
            "--attention-levels",
            "0,0",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        )
        == 0
    )
    meta = json.loads((gen / "generator.json").read_text())
    assert meta["model_config"]["attention_levels"] == [False, False]
    assert meta["config"]["steps"] == 2 and meta["config"]["batch_size"] == 4
    out = tmp_path / "s.h5"
    assert (
        run(
            "sample",
            str(gen),
            "-n",
            "3",
            "-o",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--no-progress",
        )
        == 0
    )
    assert read_meta(out)["extra"]["generator"]["steps"] == 2
    with pytest.raises(OutputExistsError):
        run("sample", str(gen), "-n", "3", "-o", str(out), "--steps", "2", "--no-progress")
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(0).random((5, 8, 8)))
    imp = tmp_path / "imp.h5"
    assert (
        run(
            "import",
            str(tmp_path / "x.npz"),
            "-o",
            str(imp),
            "--like",
            str(tiny_real),
            "--size",
            "16",
        )
        == 0
    )
    assert read_meta(imp)["extra"]["generator"]["like"]["image_shape"] == [1, 16, 16]
    assert compute_content_hash(imp) == read_meta(imp)["content_hash"]
    ph = tmp_path / "ph.h5"
    assert run("phantom", "-n", "6", "-o", str(ph), "--size", "16", "--no-progress") == 0
    assert read_meta(ph)["n"] == 6


def test_cli_user_errors_in_process(tiny_gen: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such generator checkpoint"):
        run("sample", str(tmp_path / "none"), "-n", "2", "-o", str(tmp_path / "a.h5"))
    with pytest.raises(SystemExit):  # argparse: bad list
        run("train", "--data", "x.h5", "-o", "g", "--channels", "8,x")


@wired
def test_subprocess_errors_are_one_line(tmp_path: Path, make_tiny: Any) -> None:
    out = tmp_path / "s.h5"
    err = one_line_error(
        sslbench("synth", "sample", str(tmp_path / "missing"), "-n", "2", "-o", str(out))
    )
    assert "missing" in err and "no such generator checkpoint" in err and not out.exists()
    no_train = make_tiny(tmp_path / "no_train.h5", ["val", "test", "test"])
    err = one_line_error(
        sslbench(
            "synth", "train", "--data", str(no_train), "-o", str(tmp_path / "gen"), "--steps", "1"
        )
    )
    assert "no_train.h5" in err and "train split" in err
    assert not (tmp_path / "gen").exists()
    bad = np.zeros((3, 16, 16), np.float32)
    bad[1, 0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", bad)
    err = one_line_error(
        sslbench("synth", "import", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "bad.h5"))
    )
    assert "bad.npz" in err and "NaN or infinite" in err and not (tmp_path / "bad.h5").exists()


def test_sample_on_the_grid_of_a_real_file(tiny_gen: Path, make_tiny: Any, tmp_path: Path) -> None:
    big = make_tiny(tmp_path / "big.h5", ["train"] * 4, size=24)
    out = tmp_path / "s.h5"
    args = ["sample", str(tiny_gen), "-n", "2", "-o", str(out), "--steps", "2", "--no-progress"]
    assert run(*args, "--like", str(big)) == 0
    meta = read_meta(out)
    assert meta["image_shape"] == [1, 24, 24]
    assert meta["extra"]["generator"]["model_image_shape"] == [1, 16, 16]
