"""``sslbench demo``: the main job on the built-in phantom data.

Today the demo generates the procedural phantom datasets (2D images and 3D
volumes), verifies them and prints their summaries. Later stages (generator,
pretraining, task sweeps, leaderboard) plug in here as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmark.data.h5format import compute_content_hash
from benchmark.data.info import format_summary, summarize
from benchmark.errors import SSLBenchError
from benchmark.io import atomic_write_json, provenance


def run_demo(out: Path, overwrite: bool = False, quick: bool = False) -> int:
    """Run the demo into ``out``; returns a process exit code."""
    from benchmark.data.phantom import generate_phantom

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    n2d, n3d = (96, 24) if quick else (240, 60)
    files = {
        "phantom": out / "phantom.h5",
        "phantom3d": out / "phantom3d.h5",
    }
    for key, path in files.items():
        if path.exists() and not overwrite:
            print(f"[demo] reusing {path}")
            continue
        if key == "phantom":
            generate_phantom(path, n=n2d, size=64, dims=2, seed=0, overwrite=overwrite)
        else:
            generate_phantom(path, n=n3d, size=32, dims=3, seed=0, overwrite=overwrite)
        print(f"[demo] wrote {path}")
    summaries = {}
    for key, path in files.items():
        summary = summarize(path)
        if compute_content_hash(path) != summary["attributes"]["content_hash"]:
            raise SSLBenchError(f"{path}: content hash mismatch; rerun with --overwrite")
        summaries[key] = summary
        print(format_summary(summary))
    record = {
        "stage": "data",
        "datasets": {
            k: {"path": str(p), "content_hash": summaries[k]["attributes"]["content_hash"]}
            for k, p in files.items()
        },
        "wall_time_s": round(time.perf_counter() - start, 2),
        "provenance": provenance(),
    }
    atomic_write_json(out / "demo.json", record)
    print(f"[demo] done in {record['wall_time_s']}s; summary in {out / 'demo.json'}")
    return 0
