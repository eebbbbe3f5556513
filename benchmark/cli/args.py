"""Argument helpers shared by the subcommands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmark.core.errors import SSLBenchError


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` with YAML scalar parsing."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SSLBenchError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out
