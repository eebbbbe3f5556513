"""Shared fixtures: the real datasets in ../shared/data and tiny generated files."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real datasets (../shared/data); fails loudly if absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.fail(
            f"real datasets not found at {SHARED_DATA}; clone the project beside shared/ "
            "or set SSLBENCH_SHARED_DATA"
        )
    return SHARED_DATA
