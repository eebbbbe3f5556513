"""Canonical JSON and content digests: the keys of jobs, records and checkpoints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, n: int = 64) -> str:
    """SHA-256 of the canonical JSON of ``obj``, first ``n`` hex digits."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]
