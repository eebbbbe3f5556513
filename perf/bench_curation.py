"""Curation benchmark: throughput of Less is More's dHash pruning and the near-real filter.

Converts BUSI (2D, 64 px) and MSD hippocampus (3D, 48 x 64 x 48) from the shared data
folder into a temporary folder, then times :func:`benchmark.data.curation.curate_file`
with the ``dhash`` curator (threshold 6) on their train splits, as ``sslbench data
curate`` and the experiments' ``curate`` jobs run it:

* BUSI images, scope volume (= patient) and dataset;
* hippocampus slices (the paper's unit: a 2D file of the kept slices), scope volume
  and dataset;
* hippocampus whole volumes (``unit="volume"``, scope dataset: for 3D encoders);
* the near-real filter (``prune=False``) of the BUSI train images against the BUSI
  file pruned at scope dataset, and of the hippocampus volumes against the
  volume-pruned file: every train item is a copy or a near copy of a kept one, so the
  filter drops them all and the call is refused (``kept`` 0), after the whole
  comparison, which is what is timed.

Printed per case: train items in, kept, the wall time of the whole call (reading,
hashing, selecting, writing the output file) and items per second. Single process;
the hashing is numpy, so the thread count hardly matters.

Usage::

    python perf/bench_curation.py [--shared ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.errors import DataError
from benchmark.data.converters import CONVERTERS
from benchmark.data.curation import CURATORS, curate_file
from benchmark.data.curation.base import CurationError
from benchmark.data.h5format import open_h5, read_split


def _case(
    name: str, src: Path, out: Path, *, near: Path | None = None, **kw: Any
) -> dict[str, Any]:
    options = {k: kw.pop(k) for k in ("threshold", "scope") if k in kw}
    curator = CURATORS.create("dhash", **options)
    start = time.perf_counter()
    try:
        rec = curate_file(src, out, curator, drop_near=near, overwrite=True, **kw)
    except (CurationError, DataError) as exc:  # a filter that drops every item is refused
        seconds = time.perf_counter() - start
        if "would drop every one" not in str(exc):
            raise
        with open_h5(src) as f:  # sample-level cases only: one item per train sample
            n = int(np.sum(read_split(f) == "train"))
        return {
            "case": name,
            "unit": kw.get("unit", "image"),
            "train_in": n,
            "kept": "0 (refused)",
            "seconds": round(seconds, 2),
            "items_per_s": round(n / seconds, 1),
        }
    seconds = time.perf_counter() - start
    return {
        "case": name,
        "unit": rec["unit"],
        "train_in": rec["train_in"],
        "kept": rec["train_kept"],
        "seconds": round(seconds, 2),
        "items_per_s": round(rec["train_in"] / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        busi = CONVERTERS.create("busi", size=64).convert(shared / "busi_256", work / "busi.h5")
        hippo = CONVERTERS.create("msd").convert(shared / "msd_hippocampus", work / "hippo.h5")
        out = work / "out.h5"
        rows = [
            _case("BUSI 64 px, images, scope volume", busi, out, scope="volume"),
            _case("BUSI 64 px, images, scope dataset", busi, work / "b6d.h5", scope="dataset"),
            _case("hippocampus, slices, scope volume", hippo, out, scope="volume"),
            _case("hippocampus, slices, scope dataset", hippo, out, scope="dataset"),
            _case(
                "hippocampus, volumes, scope dataset",
                hippo,
                work / "h6d.h5",
                scope="dataset",
                unit="volume",
            ),
            _case("BUSI near-real vs pruned BUSI", busi, out, near=work / "b6d.h5", prune=False),
            _case(
                "hippocampus volumes near-real vs pruned volumes",
                hippo,
                out,
                near=work / "h6d.h5",
                prune=False,
                unit="volume",
            ),
        ]
    print("| case | unit | train in | kept | s | items/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['unit']} | {r['train_in']} | {r['kept']} | "
            f"{r['seconds']} | {r['items_per_s']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
