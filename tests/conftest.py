"""Shared fixtures: the real datasets in ../shared/data and tiny generated files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning
# threads slow small models down by orders of magnitude. Must precede torch's import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSLBENCH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Two cores: keep intra-op threads predictable and tests deterministic.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, restoring the previous setting afterwards.

    On the shared 2-core machine, two OpenMP threads of a tiny model spin at
    barriers while the other core is busy: measured 4.4 s per training step with
    2 threads vs 0.03 s with 1. The results are deterministic for either setting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real datasets (../shared/data); fails loudly if absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.fail(
            f"real datasets not found at {SHARED_DATA}; clone the project beside shared/ "
            "or set SSLBENCH_SHARED_DATA"
        )
    return SHARED_DATA
