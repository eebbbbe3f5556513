"""Statistics benchmark: the cost of the two-level bootstrap for a BUSI-sized leaderboard.

A BUSI-sized leaderboard: ~110 cells (strategy x adapter x fraction) of 5 seeds x
156 test cases, 3-class probabilities for classification (AUC, the primary metric)
and per-case Dice for segmentation, and ~150 paired comparisons (strategy vs
reference on the same seeds and test cases); 2000 resamples each. Synthetic
per-case outputs with realistic structure (a case difficulty shared by every
strategy and seed, seed-to-seed and seed x case variation). Reported per kind:
count, seconds, milliseconds per item, and resamples/s (items x resamples / s).
Target: the whole leaderboard in under 30 s on 2 cores.

The bootstrap's matrix products are small; by default they run on one BLAS thread
(``--blas-threads 0`` leaves the BLAS default, which can be much slower on a busy
2-core machine because the BLAS threads compete for the cores).

Usage::

    python perf/bench_stats.py [--cls-cells 90] [--seg-cells 20] [--cls-pairs 120]
                               [--seg-pairs 30] [--resamples 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmark.harness.casestats import CaseOutputs, cell_interval, paired_interval


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[str]:
    """Limit the BLAS threads to ``n`` (0: leave the default); yields what was done."""
    if n <= 0:
        yield "BLAS default threads"
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "BLAS default threads (threadpoolctl missing)"
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield f"{n} BLAS thread(s)"


def classification_cells(
    rng: np.random.Generator, n: int, seeds: int, cases: int, classes: int = 3
) -> list[CaseOutputs]:
    """``n`` cells of one 3-class task: softmax probabilities around a shared case difficulty."""
    labels = rng.integers(0, classes, cases)
    difficulty = rng.normal(0, 1.0, (1, cases, 1))
    onehot = np.eye(classes)[labels][None]
    out = []
    for _ in range(n):
        skill = 1.5 + rng.normal(0, 0.3) + rng.normal(0, 0.2, (seeds, 1, 1))
        logits = onehot * (skill + difficulty) + rng.normal(0, 1.0, (seeds, cases, classes))
        probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        out.append(CaseOutputs.classification(labels, probs, "auc"))
    return out


def segmentation_cells(
    rng: np.random.Generator, n: int, seeds: int, cases: int
) -> list[CaseOutputs]:
    """``n`` cells of per-case Dice (``None`` for ~10 % empty references)."""
    difficulty = rng.normal(0, 1.0, (1, cases))
    empty = rng.random(cases) < 0.1
    out = []
    for _ in range(n):
        logit = 1.0 + rng.normal(0, 0.3) + rng.normal(0, 0.15, (seeds, 1)) + difficulty
        dice = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, (seeds, cases)))))
        dice[:, empty] = np.nan
        out.append(CaseOutputs.segmentation(dice, "dice"))
    return out


def timed(fn: Any, items: list[Any]) -> float:
    """Seconds to run ``fn`` on every item."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cls-cells", type=int, default=90, help="classification cells")
    parser.add_argument("--seg-cells", type=int, default=20, help="segmentation cells")
    parser.add_argument("--cls-pairs", type=int, default=120, help="classification comparisons")
    parser.add_argument("--seg-pairs", type=int, default=30, help="segmentation comparisons")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=156, help="test cases (BUSI: 156)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--blas-threads", type=int, default=1, help="0: the BLAS default")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cls = classification_cells(rng, max(args.cls_cells, 2), args.seeds, args.cases)
    seg = segmentation_cells(rng, max(args.seg_cells, 2), args.seeds, args.cases)
    cls_pairs = [(cls[k % len(cls)], cls[(k + 1) % len(cls)]) for k in range(args.cls_pairs)]
    seg_pairs = [(seg[k % len(seg)], seg[(k + 1) % len(seg)]) for k in range(args.seg_pairs)]
    b = args.resamples

    jobs: list[tuple[str, Any, list[Any]]] = [
        ("cell AUC (3-class)", lambda c: cell_interval(c, n_resamples=b), cls[: args.cls_cells]),
        ("cell Dice", lambda c: cell_interval(c, n_resamples=b), seg[: args.seg_cells]),
        ("paired AUC (3-class)", lambda p: paired_interval(p[0], p[1], n_resamples=b), cls_pairs),
        ("paired Dice", lambda p: paired_interval(p[0], p[1], n_resamples=b), seg_pairs),
    ]
    rows: list[tuple[str, int, float]] = []
    with blas_threads(args.blas_threads) as threads:
        total = time.perf_counter()
        for name, fn, work in jobs:
            rows.append((name, len(work), timed(fn, work)))
        total = time.perf_counter() - total

    print(
        f"two-level bootstrap, {args.seeds} seeds x {args.cases} test cases, {b} resamples, "
        f"{threads}"
    )
    print(f"{'what':<22} {'items':>6} {'seconds':>9} {'ms/item':>9} {'resamples/s':>13}")
    figures: dict[str, Any] = {"config": vars(args), "blas": threads, "rows": []}
    for name, n, sec in rows:
        rate = n * b / sec if sec > 0 else float("inf")
        print(f"{name:<22} {n:>6} {sec:>9.2f} {1e3 * sec / max(n, 1):>9.1f} {rate:>13,.0f}")
        figures["rows"].append({"what": name, "items": n, "seconds": round(sec, 3)})
    items = sum(n for _, n, _ in rows)
    print(
        f"{'total':<22} {items:>6} {total:>9.2f} {1e3 * total / max(items, 1):>9.1f} "
        f"{items * b / total:>13,.0f}   (target < 30 s)"
    )
    figures["total_seconds"] = round(total, 3)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
