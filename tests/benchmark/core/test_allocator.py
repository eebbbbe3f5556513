"""glibc allocator tuning: recorded in provenance, opt-out honoured, numbers unchanged."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.core.allocator import ENV, allocator_state, tune_allocator
from tests.pretrain.test_train import tiny_file, weights

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run_pretrain(tmp_path: Path, name: str, env_value: str) -> Path:
    """A real ``sslbench pretrain`` subprocess with ``SSLBENCH_MALLOC_TUNING=env_value``."""
    real = tmp_path / "real.h5"
    if not real.exists():
        tiny_file(real)
    out = tmp_path / name
    cmd = [
        sys.executable, "-m", "benchmark.cli", "pretrain", "--data", str(real),
        "--method", "simclr", "--encoder", "resnet18", "--steps", "3", "--batch-size", "4",
        "--size", "32", "--no-progress", "--device", "cpu", "-o", str(out),
    ]  # fmt: skip
    env = {**os.environ, ENV: env_value, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def allocator_of(out: Path) -> str:
    summary = json.loads((out / "pretrain.json").read_text())
    state: str = summary["provenance"]["hardware"]["allocator"]
    return state


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc only")
def test_tuned_and_default_runs_record_the_allocator_and_give_identical_weights(
    tmp_path: Path,
) -> None:
    tuned = run_pretrain(tmp_path, "tuned", "1")
    default = run_pretrain(tmp_path, "default", "0")
    assert allocator_of(tuned) == "glibc-tuned"
    assert allocator_of(default) == f"default ({ENV}=0)"
    enc = json.loads((tuned / "encoder" / "encoder.json").read_text())
    assert enc["provenance"]["hardware"]["allocator"] == "glibc-tuned"
    wt, wd = weights(tuned), weights(default)
    assert wt.keys() == wd.keys()
    assert all(torch.equal(wt[k], wd[k]) for k in wt), "allocation must not change numbers"


def test_tune_allocator_is_idempotent_and_reported() -> None:
    first = tune_allocator()
    assert tune_allocator() == first == allocator_state()
    if GLIBC and os.environ.get(ENV, "1") not in {"0", "off", "false", "no"}:
        assert first == "glibc-tuned"
    else:
        assert first.startswith("default (")


def test_opt_out_in_a_fresh_process() -> None:
    code = (
        "from benchmark.core.allocator import allocator_state, tune_allocator;"
        "print(allocator_state()); print(tune_allocator())"
    )
    for value, expected in (("off", f"default ({ENV}=0)"), ("1", "glibc-tuned")):
        env = {**os.environ, ENV: value}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        before, after = proc.stdout.strip().splitlines()
        assert before == "default"
        assert after == expected or (not GLIBC and after.startswith("default ("))
