"""Summaries of sslbench dataset files (``sslbench data info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.h5format import SPLITS, decode_attrs, open_h5, read_split, read_strings


def summarize_dataset(path: str | Path, max_mask_samples: int = 100_000) -> dict[str, Any]:
    """Shapes, dtypes, per-split counts, class balance, mask coverage and provenance.

    Args:
        path: Dataset file.
        max_mask_samples: Read at most this many masks for coverage statistics.
    """
    with open_h5(path) as f:
        attrs = decode_attrs(f.attrs)
        split = read_split(f)
        pids = read_strings(f, "patient_ids")
        images = f["images"]
        out: dict[str, Any] = {
            "path": str(path),
            "n": int(images.shape[0]),
            "images": {
                "shape": list(images.shape),
                "dtype": str(images.dtype),
                "chunks": list(images.chunks or []),
                "compression": images.compression,
            },
            "splits": {},
        }
        labels = f["labels"][()] if "labels" in f else None
        class_names = attrs.get("class_names")
        if labels is not None:
            out["labels"] = {
                "shape": list(f["labels"].shape),
                "dtype": str(f["labels"].dtype),
                "class_names": class_names,
            }
        has_masks = "masks" in f
        if has_masks:
            out["masks"] = {
                "shape": list(f["masks"].shape),
                "dtype": str(f["masks"].dtype),
                "mask_class_names": attrs.get("mask_class_names"),
            }
        for s in SPLITS:
            idx = np.flatnonzero(split == s)
            entry: dict[str, Any] = {"n": int(idx.size), "patients": int(np.unique(pids[idx]).size)}
            if labels is not None and idx.size:
                entry["class_counts"] = _class_counts(labels[idx], class_names)
            if has_masks and idx.size:
                entry["mask_coverage"] = _mask_coverage(f["masks"], idx[:max_mask_samples])
            out["splits"][s] = entry
        out["attributes"] = attrs
    return out


def _class_counts(labels: np.ndarray, class_names: list[str] | None) -> dict[str, int]:
    if labels.ndim == 2:  # multi-label: positives per label
        counts = labels.sum(axis=0).astype(int).tolist()
        keys = class_names or [str(i) for i in range(labels.shape[1])]
        return dict(zip(keys, counts, strict=False))
    values, counts = np.unique(labels, return_counts=True)
    names = class_names or []
    return {
        (names[v] if 0 <= v < len(names) else str(v)): int(c)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True)
    }


def _mask_coverage(masks: Any, idx: np.ndarray) -> dict[str, Any]:
    nonempty = 0
    fg = 0.0
    per_class: dict[int, int] = {}
    for i in idx:
        m = masks[int(i)]
        if m.any():
            nonempty += 1
        fg += float((m > 0).mean())
        for v, c in zip(*np.unique(m, return_counts=True), strict=True):
            per_class[int(v)] = per_class.get(int(v), 0) + int(c)
    total = max(1, sum(per_class.values()))
    return {
        "nonempty_fraction": nonempty / len(idx),
        "mean_foreground_fraction": fg / len(idx),
        "voxel_fraction_per_class": {str(k): v / total for k, v in sorted(per_class.items())},
    }


def format_dataset_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize_dataset`'s output."""
    a = s["attributes"]
    lines = [
        f"{s['path']}",
        f"  dataset     {a.get('name')} ({a.get('modality')}), {a.get('spatial_dims')}D, "
        f"{s['n']} samples",
        f"  images      {tuple(s['images']['shape'])} {s['images']['dtype']} "
        f"chunks={tuple(s['images']['chunks'])} compression={s['images']['compression']}",
    ]
    if "labels" in s:
        lines.append(
            f"  labels      {tuple(s['labels']['shape'])} {s['labels']['dtype']} "
            f"classes={s['labels']['class_names']}"
        )
    if "masks" in s:
        lines.append(
            f"  masks       {tuple(s['masks']['shape'])} {s['masks']['dtype']} "
            f"classes={s['masks']['mask_class_names']}"
        )
    lines.append(f"  spacing     {a.get('spacing')}")
    lines.append("  splits")
    for name, e in s["splits"].items():
        row = f"    {name:<5} n={e['n']:<6} patients={e['patients']:<6}"
        if "class_counts" in e:
            row += " classes: " + ", ".join(f"{k}={v}" for k, v in e["class_counts"].items())
        lines.append(row)
        if "mask_coverage" in e:
            mc = e["mask_coverage"]
            lines.append(
                f"          masks non-empty {mc['nonempty_fraction']:.1%}, "
                f"mean foreground {mc['mean_foreground_fraction']:.2%}"
            )
    prov = a.get("provenance") or {}
    lines += [
        "  provenance",
        f"    source      {a.get('source')}",
        f"    licence     {a.get('licence')}",
        f"    citation    {a.get('citation')}",
        f"    converter   {a.get('converter')} v{a.get('converter_version')} "
        f"(format {a.get('format_version')}, sslbench {a.get('sslbench_version')})",
        f"    created     {prov.get('created')} git {prov.get('git_commit')}",
        f"    content     sha256:{a.get('content_hash')}",
    ]
    for key, value in (a.get("extra") or {}).items():
        lines.append(f"    {key:<11} {value}")
    return "\n".join(lines)
