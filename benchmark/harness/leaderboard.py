"""``sslbench leaderboard RESULTS``: aggregate cell records into a leaderboard.

Rows are strategies (source x method x encoder; plus the ``scratch`` and
``supervised`` baselines), columns are task x adapter x label fraction, cells
are the mean of the task's primary metric over evaluation seeds with a 95 %
interval. A strategy pretrained with several seeds gets one row per
pretraining seed (``real / simclr / resnet18 · pretraining seed 1``), each with
its own intervals and comparisons (a pretrained row is compared with the real
arm of its own pretraining seed where there is one), and the section
"Pretraining variance" sets the spread of its pretraining seeds' means next to
the spread over evaluation seeds within one encoder.

Two protocols. Records of the current protocol (``sslbench-cell/2``: one recipe
for every arm, per-case test outputs) get two-level intervals that resample
seeds and test cases (:mod:`benchmark.harness.casestats`), paired two-level
comparisons on the same seeds, subsets and test cases, Holm-adjusted p-values
over the leaderboard's family of comparisons, and generated findings
(:mod:`benchmark.harness.findings`). Records of the legacy protocol
(``sslbench-cell/1``, no per-case outputs) are still read and shown, with the
old percentile bootstrap over seeds (with 3 seeds: their min and max) and a
"legacy protocol" note; they are never compared with current records and
their comparisons carry no verdict. A cell whose restored weights are those of
its first evaluation (legacy) or of step 0 (current) is flagged.

Pretrained rows carry the health verdict of their encoders' pretraining (from
the checkpoint metadata each record keeps; :mod:`benchmark.harness.health`):
a row with an encoder that did not learn is flagged ⚠ wherever it appears
(tables, ranking, comparisons, findings), and the JSON and CSV exports carry
the verdict and the kNN accuracy at step 0 and at the end. Scratch rows whose
frozen-feature cells used the random init with batch norms calibrated on the
train split (:mod:`tasks.taskdata`) are labelled so; records from before that
keep their old label.
Written to ``LEADERBOARD.md``, ``leaderboard.csv`` (long format, every metric),
``leaderboard.json`` (everything, including paired tests) and one
learning-curve PNG per task.

The output depends only on the records (and ``index.json`` /
``experiment.json`` when present): no timestamps, fixed bootstrap seeds, so
regenerating a committed leaderboard reproduces it byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.core.errors import DataError
from benchmark.core.io import atomic_path, atomic_write_json, atomic_write_text
from benchmark.harness import casestats, families
from benchmark.harness.findings import findings, render_findings
from benchmark.harness.health import DID_NOT_LEARN, FLAG, LEGEND, compact, did_not_learn
from benchmark.harness.stats import (
    StatsInputError,
    aulc,
    fraction_to_match,
    paired_comparison,
    rounded,
    summarize,
)
from pretrain.strength import strength_label

SCHEMA = "sslbench-leaderboard/3"  # 3: the paired p-value is the two-level Welch t-test
CURRENT_SCHEMA = "sslbench-cell/2"
LEGACY_NOTE = (
    "Legacy protocol: these records predate the evaluation protocol of one recipe for every "
    "arm (scratch fine-tuning got a 10x encoder learning rate; small fractions trained for a "
    "few epochs with early stopping on tiny validation sets) and keep no per-case outputs. "
    "Their intervals are percentile bootstraps over evaluation seeds only (with 3 seeds: the "
    "min and max) and their comparisons carry no verdict."
)
SOURCE_ORDER = {"real": 0, "synthetic": 1, "mixed": 2}
#: Label of a scratch row whose frozen-feature cells used batch norms calibrated on train.
CALIBRATED_LABEL = "random init, BN calibrated on train"
CALIBRATED_NOTE = (
    f"{CALIBRATED_LABEL}: the frozen-feature probes ({{adapters}}) of the scratch baseline use "
    "the random encoder with its batch-norm statistics recomputed on the task's train split "
    "(a raw random init normalises with statistics no image has); adapters that train the "
    "encoder start from the raw random init."
)
KIND_ORDER = {"pretrained": 0, "scratch": 1, "supervised": 2}


def load_records(results: str | Path) -> list[dict[str, Any]]:
    """Cell records of a results folder: those listed in ``index.json``, else every record."""
    root = Path(results)
    if root.is_file():
        raise DataError(f"{root}: expected a results folder")
    index = root / "index.json"
    if index.exists():
        paths = [root / p for p in json.loads(index.read_text())["records"]]
    else:
        paths = sorted(p for p in root.rglob("*.json") if "records" in p.parts)
    records = []
    for p in paths:
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: unreadable record ({exc})") from None
        if rec.get("schema", "").startswith("sslbench-cell/"):
            records.append(rec)
    if not records:
        raise DataError(
            f"{root}: no cell records found (run `sslbench run` or `sslbench evaluate`)"
        )
    return records


def protocol_of(record: dict[str, Any]) -> str:
    """``current`` for records with per-case outputs under the current protocol, else ``legacy``."""
    if record.get("schema") == CURRENT_SCHEMA and record.get("per_case"):
        return "current"
    return "legacy"


def first_weights_kept(record: dict[str, Any]) -> bool:
    """Whether a cell restored the weights of step 0 (current) or of its first evaluation
    (legacy records: segmentation ``best_epoch`` 0, fine-tuning ``best_epoch`` 1)."""
    extra = record.get("extra") or {}
    if "best_step" in extra:
        return int(extra["best_step"]) == 0
    if "best_epoch" in extra:
        first = 1 if record["adapter"]["name"] == "finetune" else 0
        return int(extra["best_epoch"]) <= first
    return False


def strategy_of(record: dict[str, Any]) -> dict[str, Any]:
    """The row a record belongs to (its strategy), from the encoder metadata."""
    enc = record["encoder"]
    meta = enc.get("metadata") or {}
    arch = (meta.get("encoder") or {}).get("name", "?")
    if record.get("baseline"):
        kind = record["baseline"]
        return {"strategy": enc.get("label") or f"{kind} / {arch}", "kind": kind, "encoder": arch}
    cfg = meta.get("config") or {}
    source = cfg.get("source", "?")
    ratio = cfg.get("synthetic_ratio") if source == "mixed" else None
    method = meta.get("method", cfg.get("method", "?"))
    src = f"mixed {ratio:g}" if ratio is not None else source
    mode, weight = cfg.get("mixing_mode", "replace"), cfg.get("real_weight", 1.0)
    extra: dict[str, Any] = {}
    if source == "mixed" and (mode, weight) != ("replace", 1.0):
        # "mixed+add x10": the synthetic pool added, real images weighted 10 (no ratio);
        # "mixed 0.5 x4": replace at ratio 0.5 with real images weighted 4
        src = (f"mixed+{mode}" if ratio is None else f"mixed {ratio:g}") + (
            f" x{weight:g}" if weight != 1.0 else ""
        )
        extra = {"mode": mode, "real_weight": weight}
    views = strength_label(cfg.get("strength", "standard"))
    if views:  # e.g. "simclr-weak": the method's views at another strength
        extra["strength"] = views
    curation = cfg.get("curation") or {}
    if curation:  # "real dhash6": the real pool pruned (Less is More)
        src += f" {curation['label']}"
        extra["curation"] = curation["label"]
        extra["pool_kept"] = f"{curation['train_kept']}/{curation['train_in']}"
    return {
        "strategy": f"{src} / {method}{'-' + views if views else ''} / {arch}",
        "kind": "pretrained",
        "source": source,
        "ratio": ratio,
        "method": method,
        "encoder": arch,
        **extra,
    }


def pretraining_health(record: dict[str, Any]) -> dict[str, Any] | None:
    """The compact pretraining health of a record's encoder (None for baselines and for
    checkpoints from before the kNN monitor)."""
    if record.get("baseline"):
        return None
    return compact((record["encoder"].get("metadata") or {}).get("health"))


def bn_calibrated(record: dict[str, Any]) -> bool:
    """Whether a record's random encoder had its batch norms calibrated (issue 23)."""
    calibration = (record["encoder"].get("metadata") or {}).get("bn_calibration") or {}
    return bool(calibration.get("calibrated"))


def _encoder_health(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(health, first record)`` of each distinct encoder (by weights hash) among
    ``records`` whose health is recorded, in hash order."""
    per_encoder: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for rec in records:
        h = pretraining_health(rec)
        if h is not None:
            key = str(rec["encoder"].get("hash") or rec["encoder"]["id"])
            per_encoder.setdefault(key, (h, rec))
    return [per_encoder[k] for k in sorted(per_encoder)]


def _pretraining(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A row's pretraining health over its encoders (pretraining seeds), if recorded.

    ``verdict`` is ``did not learn`` if any encoder did not learn, ``learned`` if all
    learned, else ``not checked``; the kNN accuracies are means over the encoders.
    """
    hs = [h for h, _ in _encoder_health(records)]
    if not hs:
        return None
    bad = sum(did_not_learn(h) for h in hs)
    learned = all(h["verdict"] == "learned" for h in hs)

    def mean(key: str) -> float | None:
        vals = [float(h[key]) for h in hs if h.get(key) is not None]
        return rounded(sum(vals) / len(vals)) if vals else None

    return {
        "verdict": DID_NOT_LEARN if bad else ("learned" if learned else "not checked"),
        "encoders": len(hs),
        "did_not_learn": bad,
        "knn_init": mean("knn_init"),
        "knn_end": mean("knn_end"),
        "reasons": sorted({r for h in hs for r in h["reasons"]}),
    }


#: Suffix of the row of one pretraining seed of a strategy pretrained with several.
SEED_SUFFIX = " · pretraining seed {seed}"


def pretraining_seed(record: dict[str, Any]) -> int | None:
    """The pretraining seed of a record's encoder (None for baselines)."""
    if record.get("baseline"):
        return None
    meta = record["encoder"].get("metadata") or {}
    seed = meta.get("seed", (meta.get("config") or {}).get("seed"))
    return None if seed is None else int(seed)


def _split_by_pretraining_seed(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """``id(record) -> row info`` for every record: strategies with several pretraining
    seeds get one row per seed (:data:`SEED_SUFFIX`), the others their plain row."""
    seeds: dict[str, set[int]] = defaultdict(set)
    infos = {}
    for rec in records:
        info = strategy_of(rec)
        infos[id(rec)] = info
        seed = pretraining_seed(rec)
        if seed is not None:
            seeds[info["strategy"]].add(seed)
    for rec in records:
        info = infos[id(rec)]
        if len(seeds.get(info["strategy"], ())) > 1:
            seed = pretraining_seed(rec)
            infos[id(rec)] = {
                **info,
                "strategy": info["strategy"] + SEED_SUFFIX.format(seed=seed),
                "pooled": info["strategy"],
                "pretrain_seed": seed,
            }
    return infos


def _health_table(
    rows: list[dict[str, Any]], by_row: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One entry per pretrained encoder whose records carry its pretraining health: the
    row, the encoder's pretraining seed and weights hash, and the compact health."""
    return [
        {
            "strategy": r["strategy"],
            "pretrain_seed": pretraining_seed(rec),
            "encoder_hash": rec["encoder"].get("hash"),
            **{k: rounded(v) for k, v in h.items()},
        }
        for r in rows
        for h, rec in _encoder_health(by_row[r["strategy"]])
    ]


def _pretraining_variance(
    rows: list[dict[str, Any]], per_seed: dict[tuple[str, str, str, float], dict[int, float]]
) -> list[dict[str, Any]]:
    """Per strategy with several pretraining seeds and cell: each pretraining seed's mean
    over evaluation seeds, their spread (max - min), and the standard deviation over
    evaluation seeds within one encoder (mean over the pretraining seeds)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("pooled"):
            groups[r["pooled"]].append(r)
    out = []
    for pooled, members in groups.items():
        cells = sorted({c for m in members for c in m["cells"]})
        for cell in cells:
            task, rest = cell.split("/", 1)
            adapter, frac = rest.split("@")
            means, sds = {}, []
            for m in members:
                vals = per_seed.get((m["strategy"], task, adapter, float(frac)))
                xs = [v for v in (vals or {}).values() if v == v]  # drop NaN
                if not xs:
                    continue
                means[str(m["pretrain_seed"])] = rounded(statistics.fmean(xs))
                if len(xs) > 1:
                    sds.append(statistics.stdev(xs))
            if len(means) < 2:
                continue
            out.append(
                {
                    "strategy": pooled,
                    "cell": cell,
                    "pretraining_seed_means": means,
                    "pretraining_spread": rounded(max(means.values()) - min(means.values())),
                    "evaluation_sd": rounded(statistics.fmean(sds)) if sds else None,
                }
            )
    return out


def _row_order(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        KIND_ORDER.get(row["kind"], 9),
        row.get("encoder", ""),
        row.get("method", ""),
        SOURCE_ORDER.get(row.get("source", ""), 9),
        row.get("mode") == "add",  # inflated arms after the replacing ones
        row.get("ratio") or 0.0,
        row.get("real_weight") or 1.0,
        row.get("strength") or "",
        row.get("curation") or "",
        row.get("pretrain_seed") or 0,
    )


def aggregate(
    records: list[dict[str, Any]],
    resamples: int = 2000,
    confidence: float = 0.95,
    primary_family: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The leaderboard as a JSON-able dict (see the module docstring).

    ``resamples`` and ``confidence`` set the current protocol's intervals and tests
    (an experiment's ``evaluate.statistics``); legacy records keep their old statistics.
    ``primary_family``: the experiment's pre-declared primary family of contrasts, adjusted
    apart from the others (``evaluate.statistics.primary``).
    """
    stats_kw = {"n_resamples": int(resamples), "confidence": float(confidence)}
    tasks: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    # values[(strategy, task, adapter, fraction)][eval seed] -> list over pretraining seeds
    values: dict[tuple[str, str, str, float], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    all_metrics: dict[tuple[str, str, str, float], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    protocols = sorted({protocol_of(r) for r in records})
    protocol = protocols[0] if len(protocols) == 1 else "mixed"
    if protocol == "mixed":  # never mix protocols in one table or comparison
        records = [r for r in records if protocol_of(r) == "current"]
    by_cell: dict[tuple[str, str, str, float], list[dict[str, Any]]] = defaultdict(list)
    by_row: dict[str, list[dict[str, Any]]] = defaultdict(list)
    infos = _split_by_pretraining_seed(records)
    for rec in records:
        task, adapter, frac = rec["task"]["name"], rec["adapter"]["name"], float(rec["fraction"])
        primary = rec["primary_metric"]
        spec_metrics = rec["task"]["spec"].get("metrics", [])
        hib = next((m["higher_is_better"] for m in spec_metrics if m["name"] == primary), True)
        t = tasks.setdefault(
            task,
            {
                "primary_metric": primary,
                "higher_is_better": hib,
                "adapters": set(),
                "fractions": set(),
            },
        )
        t["adapters"].add(adapter)
        t["fractions"].add(frac)
        info = infos[id(rec)]
        rows.setdefault(info["strategy"], info)
        by_row[info["strategy"]].append(rec)
        value = rec["metrics"].get(primary)
        key = (info["strategy"], task, adapter, frac)
        by_cell[key].append(rec)
        values[key][int(rec["seed"])].append(float("nan") if value is None else float(value))
        for m, v in rec["metrics"].items():
            if isinstance(v, int | float):
                all_metrics[key][m].append(float(v))
    for t in tasks.values():
        t["adapters"] = sorted(t["adapters"])
        t["fractions"] = sorted(t["fractions"])
    ordered = sorted(rows.values(), key=_row_order)
    per_seed = {k: {s: sum(v) / len(v) for s, v in d.items()} for k, d in values.items()}
    cells: dict[str, dict[str, Any]] = defaultdict(dict)
    for (strategy, task, adapter, frac), seeds in sorted(per_seed.items()):
        key = (strategy, task, adapter, frac)
        stats = summarize(list(seeds.values()))
        cell = {
            **{k: rounded(v) for k, v in stats.items()},
            "seeds": sorted(seeds),
            "values": [rounded(seeds[s]) for s in sorted(seeds)],
            "metrics": {m: rounded(sum(v) / len(v)) for m, v in sorted(all_metrics[key].items())},
            "first_weights_kept": sum(first_weights_kept(r) for r in by_cell[key]),
        }
        calibrated = sum(bn_calibrated(r) for r in by_cell[key])
        if calibrated:  # only then: leaderboards of older records stay byte-identical
            cell["bn_calibrated"] = calibrated
        if protocol != "legacy":
            cell.update(_case_interval(by_cell[key], stats_kw))
        cells[strategy][f"{task}/{adapter}@{frac:g}"] = cell
    out_rows = []
    for row in ordered:
        extra: dict[str, Any] = {}
        health = _pretraining(by_row[row["strategy"]])
        if health is not None:
            extra["pretraining"] = health
        if any(bn_calibrated(r) for r in by_row[row["strategy"]]):
            extra["init"] = CALIBRATED_LABEL
        out_rows.append({**row, **extra, "cells": cells[row["strategy"]]})
    row_seed = {
        i["strategy"]: pretraining_seed(rec) or 0 for rec in records for i in [infos[id(rec)]]
    }
    comparisons = _comparisons(
        tasks, out_rows, per_seed, by_cell, protocol, stats_kw, row_seed, primary_family
    )
    variance = _pretraining_variance(out_rows, per_seed)
    health_table = _health_table(out_rows, by_row)
    board = {
        "schema": SCHEMA,
        "protocol": protocol,
        "interval_method": (
            "percentile bootstrap of the mean over evaluation seeds (legacy protocol)"
            if protocol == "legacy"
            else casestats.method_name(int(resamples), float(confidence))
        ),
        "multiplicity": "Holm" if protocol != "legacy" else "none (legacy protocol)",
        "test_method": (
            "Wilcoxon signed-rank over evaluation seeds (legacy protocol)"
            if protocol == "legacy"
            else casestats.TEST_METHOD
        ),
        "tasks": tasks,
        "rows": out_rows,
        "ranking": _ranking(tasks, out_rows),
        "comparisons": comparisons,
    }
    declared = families.summary(comparisons, primary_family) if protocol != "legacy" else None
    if declared:  # only then: leaderboards without a declaration stay byte-identical
        board["families"] = declared
    if variance:  # only then: leaderboards of single-seed runs stay byte-identical
        board["pretraining_variance"] = variance
    if health_table:  # records from before the kNN monitor have none
        board["pretraining_health"] = health_table
    board["findings"] = findings(board)
    return board


def _case_interval(records: list[dict[str, Any]], stats_kw: dict[str, Any]) -> dict[str, Any]:
    """A current-protocol cell's two-level interval (replaces the seed-only one)."""
    if len({r["seed"] for r in records}) != len(records):
        return {"interval_note": "several pretraining seeds per evaluation seed: seed-level only"}
    try:
        ci = casestats.cell_interval_from_records(records, **stats_kw)
    except StatsInputError as exc:
        return {"interval_note": str(exc)}
    low, high = _clip(ci["low"], ci["high"], records[0].get("primary_metric"))
    out = {
        "ci_low": rounded(low),
        "ci_high": rounded(high),
        "deterministic": bool(ci["deterministic"]),
        "n_cases": ci["n_cases"],
    }
    if (low, high) != (ci["low"], ci["high"]):
        out["ci_clipped"] = True
    if ci.get("reason"):
        out["interval_note"] = ci["reason"]
    return out


def _clip(low: Any, high: Any, metric: str | None) -> tuple[Any, Any]:
    """An interval clipped to its metric's range (``Metric.bounds``, e.g. [0, 1] for AUC
    and Dice). The seed level's t interval is symmetric and can leave the range (a Dice
    of 0 on some seeds and 0.8 on others); clipping never drops a value the mean can
    take, so the interval covers what it covered before."""
    from tasks.metrics import METRICS

    if metric is None or metric not in METRICS or low is None or high is None:
        return low, high
    lo, hi = METRICS.get(metric).bounds
    return min(max(low, lo), hi), max(min(high, hi), lo)


def _curve(row: dict[str, Any], task: str, adapter: str, fractions: list[float]) -> list[Any]:
    return [row["cells"].get(f"{task}/{adapter}@{f:g}", {}).get("mean") for f in fractions]


def _ranking(tasks: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task x adapter: AULC and the label fraction needed to match scratch at 100 %."""
    out = []
    for task, t in tasks.items():
        for adapter in t["adapters"]:
            fr = t["fractions"]
            scratch_full = {
                r["encoder"]: r["cells"].get(f"{task}/{adapter}@1", {}).get("mean")
                for r in rows
                if r["kind"] == "scratch"
            }
            entries = []
            for r in rows:
                if r["kind"] == "supervised":
                    continue
                curve = _curve(r, task, adapter, fr)
                if all(v is None for v in curve):
                    continue
                target = scratch_full.get(r["encoder"])
                match = (
                    fraction_to_match(fr, curve, target, t["higher_is_better"])
                    if target is not None
                    else None
                )
                entries.append(
                    {
                        "strategy": r["strategy"],
                        "aulc": rounded(aulc(fr, curve)),
                        "fraction_to_match_scratch_full": rounded(match),
                    }
                )
            if all(e["aulc"] is None for e in entries):
                continue  # one fraction per strategy: no curve, nothing to rank
            sign = -1.0 if t["higher_is_better"] else 1.0
            entries.sort(
                key=lambda e: (e["aulc"] is None, sign * (e["aulc"] or 0.0), e["strategy"])
            )
            for i, e in enumerate(entries, 1):
                out.append({"task": task, "adapter": adapter, "rank": i, **e})
    return out


#: The method every other method's real-data arm is compared with (kind ``method``): the
#: contrastive anchor of the suite, as in Wolf et al. 2023 (masked vs contrastive).
REFERENCE_METHOD = "simclr"


def _comparisons(
    tasks: dict[str, Any],
    rows: list[dict[str, Any]],
    per_seed: dict[tuple[str, str, str, float], dict[int, float]],
    by_cell: dict[tuple[str, str, str, float], list[dict[str, Any]]],
    protocol: str,
    stats_kw: dict[str, Any],
    row_seed: dict[str, int] | None = None,
    primary: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Paired comparisons of each pretrained strategy vs scratch and vs real-only (same
    method, encoder; the real row of the same pretraining seed where real was pretrained
    with several), of a pruned pool vs the full one, and of every other method's real arm
    vs :data:`REFERENCE_METHOD`'s (same encoder): the pre-declared contrasts. Current protocol: two-level paired
    bootstrap and Holm-adjusted p-values over all of them, or within the primary and the
    secondary family where the experiment declared one (:mod:`benchmark.harness.families`);
    legacy: the old seed-level test."""
    by_name = {r["strategy"]: r for r in rows}
    row_seed = row_seed or {}
    out = []
    for r in rows:
        if r["kind"] != "pretrained":
            continue
        refs = [("scratch", f"scratch / {r['encoder']}")]
        suffix = SEED_SUFFIX.format(seed=row_seed.get(r["strategy"], 0))

        def same_seed(name: str, suffix: str = suffix) -> str:
            """Row ``name`` itself, else its row of this row's pretraining seed."""
            return name if name in by_name or name + suffix not in by_name else name + suffix

        base = r.get("pooled", r["strategy"])  # the strategy without the seed suffix
        if r.get("curation"):
            # a pruned pool against the same arm on the full pool (Less is More's question),
            # kept out of the "vs real-only" findings
            full = base.replace(f" {r['curation']} /", " /", 1)
            refs.append(("unpruned", same_seed(full)))
        else:
            views = f"-{r['strength']}" if r.get("strength") else ""
            real, kind = same_seed(f"real / {r['method']}{views} / {r['encoder']}"), "real"
            if views and (real not in by_name or real == r["strategy"]):
                # no real arm at these views (or this is it): the standard-view real arm, a
                # contrast of data and views together, kept out of the "vs real-only" findings
                real, kind = same_seed(f"real / {r['method']} / {r['encoder']}"), "real-standard"
            if r["strategy"] != real:
                refs.append((kind, real))
            elif r["method"] != REFERENCE_METHOD and not views:
                # another method on the same real pool and encoder against the contrastive
                # anchor (Wolf et al. 2023: masked vs contrastive as labels shrink)
                refs.append(("method", same_seed(f"real / {REFERENCE_METHOD} / {r['encoder']}")))
        for task, t in tasks.items():
            for adapter in t["adapters"]:
                for frac in t["fractions"]:
                    mine = per_seed.get((r["strategy"], task, adapter, frac))
                    if not mine:
                        continue
                    for ref_kind, ref in refs:
                        theirs = per_seed.get((ref, task, adapter, frac))
                        if ref not in by_name or not theirs:
                            continue
                        seeds = sorted(set(mine) & set(theirs))
                        if protocol == "legacy":
                            test = {
                                **paired_comparison(
                                    [mine[s] for s in seeds], [theirs[s] for s in seeds]
                                ),
                                "protocol": "legacy",
                            }
                        else:
                            test = _case_paired(
                                by_cell[(r["strategy"], task, adapter, frac)],
                                by_cell[(ref, task, adapter, frac)],
                                stats_kw,
                            )
                        if not t["higher_is_better"] and test["mean_diff"] is not None:
                            test["note"] = (
                                "lower is better: a negative difference favours the strategy"
                            )
                        out.append(
                            {
                                "strategy": r["strategy"],
                                "reference": ref,
                                "reference_kind": ref_kind,
                                "task": task,
                                "adapter": adapter,
                                "fraction": frac,
                                "seeds": seeds,
                                **{k: rounded(v) for k, v in test.items()},
                            }
                        )
    if protocol != "legacy":
        families.adjust(out, primary)
    return out


def _case_paired(
    a: list[dict[str, Any]], b: list[dict[str, Any]], stats_kw: dict[str, Any]
) -> dict[str, Any]:
    """Two-level paired comparison of two current-protocol cells (same seeds, subsets, cases)."""
    try:
        t = casestats.paired_from_records(a, b, **stats_kw)
    except StatsInputError as exc:
        return {"protocol": "current", "n": 0, "mean_diff": None, "reason": str(exc)}
    return {
        "protocol": "current",
        "n": t.get("n_seeds"),
        "mean_diff": t.get("mean_diff"),
        "diff_ci_low": t.get("low"),
        "diff_ci_high": t.get("high"),
        "p_value": t.get("p_value"),
        "wilcoxon_p": t.get("wilcoxon_p"),
        "note": t.get("wilcoxon_reason") or t.get("reason"),
    }


def _fmt(x: Any, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def health_flag(row: dict[str, Any] | None) -> str:
    """`` ⚠`` after a row with an encoder that did not learn (`` ⚠1/3`` for 1 of 3)."""
    p = (row or {}).get("pretraining") or {}
    bad, n = int(p.get("did_not_learn") or 0), int(p.get("encoders") or 0)
    if not bad:
        return ""
    return f" {FLAG}" if bad == n else f" {FLAG}{bad}/{n}"


def _flagged(board: dict[str, Any], strategy: str) -> str:
    """The strategy name with its health flag."""
    row = next((r for r in board["rows"] if r["strategy"] == strategy), None)
    return strategy + health_flag(row)


def _flagged_reference(board: dict[str, Any], comparison: dict[str, Any]) -> str:
    """A comparison's reference kind, flagged when the reference encoder did not learn."""
    row = next((r for r in board["rows"] if r["strategy"] == comparison["reference"]), None)
    kind = comparison["reference_kind"]
    return (REFERENCE_METHOD if kind == "method" else kind) + health_flag(row)


def render_markdown(board: dict[str, Any], title: str, provenance: dict[str, Any]) -> str:
    """The Markdown leaderboard."""
    lines = [f"# Leaderboard: {title}", ""]
    lines += _provenance_lines(provenance)
    protocol = board.get("protocol", "legacy")
    if protocol == "legacy":
        lines += ["", f"> {LEGACY_NOTE}"]
    elif protocol == "mixed":
        lines += [
            "",
            "> Legacy-protocol records were left out: they are never mixed with current ones.",
        ]
    flagged = any(c.get("first_weights_kept") for r in board["rows"] for c in r["cells"].values())
    same = any(c.get("deterministic") for r in board["rows"] for c in r["cells"].values())
    for task, t in board["tasks"].items():
        direction = "higher is better" if t["higher_is_better"] else "lower is better"
        lines += ["", f"## {task}: {t['primary_metric']} ({direction})", ""]
        lines.append(
            f"Mean over evaluation seeds with 95 % interval ({board.get('interval_method')}); "
            "best mean per column in bold."
            + (
                " ⚑k: k seeds of the cell kept the weights of their first evaluation "
                "(legacy) or of step 0 (current), i.e. barely trained."
                if flagged
                else ""
            )
            + (
                " ≡: identical across seeds (deterministic): one value, its interval from the "
                "test cases only, and no seed-level test."
                if same
                else ""
            )
        )
        cols = [f"{a}@{f:g}" for a in t["adapters"] for f in t["fractions"]]
        keys = [f"{task}/{c}" for c in cols]
        n_seeds = [len(r["cells"].get(k, {}).get("seeds", [])) for r in board["rows"] for k in keys]
        most = max(n_seeds, default=0)
        if any(r["cells"].get(k, {}).get("ci_clipped") for r in board["rows"] for k in keys):
            lines[-1] += (
                " †: the interval left the metric's range (a symmetric seed-level interval "
                "over few or spread-out seeds) and is clipped to it."
            )
        if any(0 < n < most for n in n_seeds):
            lines[-1] += (
                f" (k seeds): a cell with fewer evaluation seeds than the others ({most}); "
                "its interval resamples those seeds only."
            )
        lines.append("")
        best: dict[str, float] = {}
        for k in keys:
            means = [
                r["cells"][k]["mean"]
                for r in board["rows"]
                if r["cells"].get(k, {}).get("mean") is not None
            ]
            if means:
                best[k] = max(means) if t["higher_is_better"] else min(means)
        frozen = sorted(
            {
                k.split("/", 1)[1].split("@")[0]
                for r in board["rows"]
                for k, c in r["cells"].items()
                if k in keys and c.get("bn_calibrated")
            }
        )
        if any(health_flag(r) and any(k in r["cells"] for k in keys) for r in board["rows"]):
            lines += [LEGEND + ".", ""]
        if frozen:
            lines += [CALIBRATED_NOTE.format(adapters=", ".join(frozen)), ""]
        lines.append("| strategy | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for r in board["rows"]:
            if not any(k in r["cells"] for k in keys):
                continue
            cells = []
            for k in keys:
                c = r["cells"].get(k)
                if not c or c["mean"] is None:
                    cells.append("")
                    continue
                m = _fmt(c["mean"])
                m = f"**{m}**" if best.get(k) == c["mean"] else m
                ci = (
                    f" [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]"
                    if c["ci_low"] is not None
                    else ""
                )
                flag = f" ⚑{c['first_weights_kept']}" if c.get("first_weights_kept") else ""
                flag += " ≡" if c.get("deterministic") else ""
                flag += " †" if c.get("ci_clipped") else ""
                k_seeds = len(c.get("seeds", []))
                flag += f" ({k_seeds} seeds)" if 0 < k_seeds < most else ""
                cells.append(f"{m}{ci}{flag}")
            name = r["strategy"] + health_flag(r)
            if r.get("pool_kept"):  # a curated real pool: train images kept / of
                name += f" (pool {r['pool_kept']})"
            if any(r["cells"].get(k, {}).get("bn_calibrated") for k in keys):
                name += f" ({CALIBRATED_LABEL})"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"![learning curves of {task}](curves_{task}.png)", ""]
        lines += _ranking_lines(board, task)
        lines += _comparison_lines(board, task)
    lines += _health_lines(board)
    lines += _variance_lines(board)
    lines += ["", *render_findings(board)]
    return "\n".join(lines).rstrip() + "\n"


def _health_lines(board: dict[str, Any]) -> list[str]:
    """The "Pretraining health" section: every pretrained encoder's monitor and loss."""
    entries = board.get("pretraining_health") or []
    if not entries:
        return []
    dense = any(e.get("dense_init") is not None for e in entries)
    lines = [
        "",
        "## Pretraining health",
        "",
        "Every pretrained encoder, from its checkpoint: the online kNN monitor's balanced "
        "accuracy (and its linear-probe AUC) on the labelled dataset's validation split at "
        "step 0 (batch norm calibrated) and at the end, the loss first -> last against its "
        "chance level, collapse, and the verdict (`did not learn`: neither monitor rose by "
        "the margin, the loss stayed at chance, or the embeddings collapsed).",
    ]
    if dense:  # a mask-only dataset: the dense-probe monitor replaces the kNN monitor
        lines.append(
            "A dataset without class labels has no kNN monitor; its encoders carry the "
            "dense-probe monitor instead: mean validation foreground Dice of a logistic "
            "probe on frozen multi-scale features, step 0 (batch norm calibrated) -> end, "
            "with the same margin."
        )
    lines += [
        "",
        "| strategy | kNN init -> end | linear AUC init -> end "
        + ("| dense-probe Dice init -> end " if dense else "")
        + "| loss first -> last (chance) | collapse | verdict |",
        "|---|---|---|---|---|" + ("---|" if dense else "") + "---|",
    ]
    for e in entries:
        chance = f" ({_fmt(e['loss_chance'])})" if e.get("loss_chance") is not None else ""
        probe = f"{_fmt(e.get('dense_init'))} -> {_fmt(e.get('dense_end'))} | " if dense else ""
        lines.append(
            f"| {e['strategy']} | {_fmt(e.get('knn_init'))} -> {_fmt(e.get('knn_end'))} | "
            f"{_fmt(e.get('linear_init'))} -> {_fmt(e.get('linear_end'))} | {probe}"
            f"{_fmt(e.get('loss_first'))} -> {_fmt(e.get('loss_last'))}{chance} | "
            f"{'yes' if e.get('collapsed') else 'no'} | {e['verdict']} |"
        )
    return lines


def _variance_lines(board: dict[str, Any]) -> list[str]:
    """The "Pretraining variance" section (strategies pretrained with several seeds)."""
    entries = board.get("pretraining_variance") or []
    if not entries:
        return []
    lines = [
        "",
        "## Pretraining variance",
        "",
        "Strategies pretrained with several seeds: each pretraining seed's mean over the "
        "evaluation seeds, their spread (max - min), and the standard deviation over "
        "evaluation seeds within one encoder (mean over its pretraining seeds). A spread "
        "near or above the evaluation SD means the choice of pretraining run moves the cell "
        "as much as the evaluation seed does: read single-pretraining-seed rows with that "
        "in mind.",
        "",
        "| strategy | cell | mean per pretraining seed | spread | evaluation SD |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        means = ", ".join(f"s{k}: {_fmt(v)}" for k, v in e["pretraining_seed_means"].items())
        lines.append(
            f"| {e['strategy']} | {e['cell']} | {means} | {_fmt(e['pretraining_spread'])} | "
            f"{_fmt(e['evaluation_sd'])} |"
        )
    return lines


def _provenance_lines(p: dict[str, Any]) -> list[str]:
    compute = p.get("compute_s") or {}
    split = ", ".join(f"{k} {v / 60:.1f} min" for k, v in compute.items()) or "not recorded"
    exp = (
        f"- experiment: `{p.get('experiment')}` (hash `{str(p.get('experiment_hash'))[:12]}`)"
        if p.get("experiment")
        else "- experiment: not recorded (records aggregated without `sslbench run`)"
    )
    return [
        exp,
        f"- git commit(s): {', '.join(f'`{c}`' for c in p.get('git_commits', []))}",
        f"- hardware: {'; '.join(p.get('hardware', []))}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in p.get('versions', {}).items())}",
        f"- compute time: {split} (evaluation cells: {p.get('eval_cell_s', 0) / 60:.1f} min)",
        f"- records: {p.get('records')}",
    ]


def _ranking_lines(board: dict[str, Any], task: str) -> list[str]:
    rows = [e for e in board["ranking"] if e["task"] == task]
    if not rows:
        return []
    out = [
        "Label efficiency: AULC = mean metric over log10(label fraction); "
        "'to match' = label fraction at which the strategy reaches scratch at 100 %.",
        "",
        "| adapter | rank | strategy | AULC | to match scratch@100% |",
        "|---|---|---|---|---|",
    ]
    for e in rows:
        match = e["fraction_to_match_scratch_full"]
        m = "never" if match is None else f"{match:.3g}"
        name = _flagged(board, e["strategy"])
        out.append(f"| {e['adapter']} | {e['rank']} | {name} | {_fmt(e['aulc'])} | {m} |")
    return [*out, ""]


def _comparison_lines(board: dict[str, Any], task: str) -> list[str]:
    rows = [c for c in board["comparisons"] if c["task"] == task]
    if not rows:
        return []
    if board.get("protocol", "legacy") != "legacy":
        return _current_comparison_lines(board, rows)
    n_max = max(c["n"] for c in rows)
    out = [
        "Paired comparisons (same evaluation seeds and subsets): difference of means with paired "
        "bootstrap 95 % CI, two-sided Wilcoxon signed-rank p-value, rank-biserial effect size.",
    ]
    if n_max < 6:
        out.append(
            f"With {n_max} seeds the smallest possible two-sided Wilcoxon p-value is "
            f"{2 / 2**n_max:.3g}: no difference can reach p < 0.05; read the CIs."
        )
    out += [
        "",
        "| strategy | vs | adapter | fraction | Δ [95% CI] | p | r | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        ci = (
            f" [{_fmt(c['diff_ci_low'])}, {_fmt(c['diff_ci_high'])}]"
            if c["diff_ci_low"] is not None
            else ""
        )
        name, ref = _flagged(board, c["strategy"]), _flagged_reference(board, c)
        out.append(
            f"| {name} | {ref} | {c['adapter']} | {c['fraction']:g} | "
            f"{_fmt(c['mean_diff'])}{ci} | {_fmt(c['p_value'])} | {_fmt(c['rank_biserial'], 2)} | {c['n']} |"
        )
    return [*out, ""]


def _current_comparison_lines(board: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "Paired comparisons (same evaluation seeds, subsets and test cases, checked): difference "
        f"of means with a 95 % interval ({board.get('interval_method')}), p-value of the "
        "two-level Welch t-test (the interval's standard error and degrees of freedom) "
        + (
            f"adjusted by {board.get('multiplicity')} over all comparisons of this leaderboard "
            if "families" not in board
            else f"adjusted by Holm: {families.describe(board['families'])} "
        )
        + "(p adj.); the Wilcoxon signed-rank test over seeds only with >= 6 seeds.",
        "",
        "| strategy | vs | adapter | fraction | Δ [95% CI] | p adj. | Wilcoxon p | n |"
        + (" family |" if "families" in board else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if "families" in board else ""),
    ]
    for c in rows:
        ci = (
            f" [{_fmt(c.get('diff_ci_low'))}, {_fmt(c.get('diff_ci_high'))}]"
            if c.get("diff_ci_low") is not None
            else ""
        )
        name, ref = _flagged(board, c["strategy"]), _flagged_reference(board, c)
        out.append(
            f"| {name} | {ref} | {c['adapter']} | {c['fraction']:g} | "
            f"{_fmt(c.get('mean_diff'))}{ci} | {_fmt(c.get('p_adjusted'))} | "
            f"{_fmt(c.get('wilcoxon_p'))} | {c.get('n')} |"
            + (f" {c.get('family')} |" if "families" in board else "")
        )
    return [*out, ""]


def _blank(x: Any) -> Any:
    return "" if x is None else x


def render_csv(board: dict[str, Any]) -> str:
    """Long-format CSV: one line per strategy x task x adapter x fraction x metric.

    The last columns are the row's pretraining health (:func:`_pretraining`): verdict and
    mean kNN accuracy at the calibrated step 0 and at the end (empty for baselines and
    for encoders pretrained before the kNN monitor).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "task",
            "adapter",
            "fraction",
            "strategy",
            "kind",
            "source",
            "ratio",
            "method",
            "encoder",
            "metric",
            "primary",
            "mean",
            "ci_low",
            "ci_high",
            "std",
            "n",
            "pretrain_verdict",
            "knn_init",
            "knn_end",
        ]
    )
    for r in board["rows"]:
        health = r.get("pretraining") or {}
        for key, c in r["cells"].items():
            task, rest = key.split("/", 1)
            adapter, frac = rest.split("@")
            primary = board["tasks"][task]["primary_metric"]
            for metric, mean in c["metrics"].items():
                is_primary = metric == primary
                w.writerow(
                    [
                        task,
                        adapter,
                        frac,
                        r["strategy"],
                        r["kind"],
                        r.get("source", ""),
                        r.get("ratio") if r.get("ratio") is not None else "",
                        r.get("method", ""),
                        r["encoder"],
                        metric,
                        int(is_primary),
                        mean,
                        c["ci_low"] if is_primary else "",
                        c["ci_high"] if is_primary else "",
                        c["std"] if is_primary else "",
                        c["n"],
                        health.get("verdict", ""),
                        _blank(health.get("knn_init")),
                        _blank(health.get("knn_end")),
                    ]
                )
    return buf.getvalue()


def plot_curves(board: dict[str, Any], task: str, path: Path) -> Path:
    """Learning curves (metric vs label fraction, log x, CI bands), one panel per adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = board["tasks"][task]
    adapters = t["adapters"]
    fig, axes = plt.subplots(1, len(adapters), figsize=(5 * len(adapters), 4), squeeze=False)
    for ax, adapter in zip(axes[0], adapters, strict=True):
        for r in board["rows"]:
            pts = [
                (f, r["cells"][f"{task}/{adapter}@{f:g}"])
                for f in t["fractions"]
                if f"{task}/{adapter}@{f:g}" in r["cells"]
                and r["cells"][f"{task}/{adapter}@{f:g}"]["mean"] is not None
            ]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            style = {"pretrained": "-", "scratch": "--", "supervised": ":"}.get(r["kind"], "-.")
            marker = "*" if r["kind"] == "supervised" else "o"
            (line,) = ax.plot(xs, ys, style, marker=marker, label=r["strategy"])
            lo = [p[1]["ci_low"] for p in pts]
            hi = [p[1]["ci_high"] for p in pts]
            if all(v is not None for v in lo + hi) and len(xs) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("label fraction")
        ax.set_ylabel(t["primary_metric"])
        ax.set_title(f"{task} / {adapter}")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def _provenance(results: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    index = (
        json.loads((results / "index.json").read_text())
        if (results / "index.json").exists()
        else {}
    )
    meta = (
        json.loads((results / "experiment.json").read_text())
        if (results / "experiment.json").exists()
        else {}
    )
    provs = [r.get("provenance", {}) for r in records]
    hw = sorted(
        {
            f"{p.get('hardware', {}).get('machine', '?')}, {p.get('hardware', {}).get('cpu_count', '?')} CPUs"
            + (f", {p['hardware']['gpu']}" if p.get("hardware", {}).get("gpu") else ", no GPU")
            for p in provs
        }
    )
    return {
        "experiment": meta.get("name"),
        "experiment_hash": index.get("experiment_hash") or meta.get("hash"),
        "git_commits": sorted({p.get("git_commit", "unknown") for p in provs}),
        "versions": {k: v for k, v in sorted((provs[0].get("versions") or {}).items())}
        if provs
        else {},
        "hardware": hw,
        "compute_s": index.get("compute_s", {}),
        "eval_cell_s": round(
            sum(r.get("train_time_s", 0) + r.get("eval_time_s", 0) for r in records), 1
        ),
        "records": len(records),
    }


def _statistics(root: Path) -> dict[str, Any]:
    """The experiment's ``evaluate.statistics`` (resamples, confidence, a primary family)."""
    import yaml

    path = root / "experiment.yaml"
    try:
        exp = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: unreadable experiment ({exc})") from None
    stats = ((exp or {}).get("evaluate") or {}).get("statistics") or {}
    out = {k: stats[k] for k in ("resamples", "confidence") if k in stats}
    if stats.get("primary"):
        out["primary_family"] = stats["primary"]
    return out


def build_leaderboard(
    results: str | Path, out: str | Path | None = None, tracker: Any = None
) -> Path:
    """Write the leaderboard of ``results`` into ``out`` (default ``RESULTS/leaderboard``)."""
    root = Path(results)
    dest = Path(out) if out else root / "leaderboard"
    records = load_records(root)
    board = aggregate(records, **_statistics(root))
    prov = _provenance(root, records)
    board["provenance"] = prov
    title = prov.get("experiment") or root.name
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / "leaderboard.json", board)
    atomic_write_text(dest / "leaderboard.csv", render_csv(board))
    pngs = {task: plot_curves(board, task, dest / f"curves_{task}.png") for task in board["tasks"]}
    atomic_write_text(dest / "LEADERBOARD.md", render_markdown(board, title, prov))
    if tracker is not None:
        with tracker.run("leaderboard", "leaderboard", {"results": str(root), **prov}) as wb:
            cols = ["strategy", *sorted({k for r in board["rows"] for k in r["cells"]})]
            wb.table(
                "leaderboard",
                cols,
                [
                    [r["strategy"], *[r["cells"].get(c, {}).get("mean") for c in cols[1:]]]
                    for r in board["rows"]
                ],
            )
            wb.images({f"curves/{t}": p for t, p in pngs.items()})
    return dest
