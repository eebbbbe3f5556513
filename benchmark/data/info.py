"""Summaries of sslbench dataset files (``sslbench data info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.duplicates import group_members
from benchmark.data.h5format import (
    SPLITS,
    decode_attrs,
    open_h5,
    read_duplicates,
    read_split,
    read_strings,
)


def summarize_dataset(path: str | Path, max_mask_samples: int = 100_000) -> dict[str, Any]:
    """Shapes, dtypes, per-split counts, class balance, mask coverage, duplicates, provenance.

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
        groups, info = read_duplicates(f)
        if groups is not None:
            sources = read_strings(f, "source_files")
            out["duplicates"] = _duplicates(groups, info or {}, split, labels, class_names, sources)
        out["attributes"] = attrs
    return out


def _duplicates(
    groups: np.ndarray,
    info: dict[str, Any],
    split: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    sources: np.ndarray,
) -> dict[str, Any]:
    """The recorded near-duplicate summary plus what the file itself holds."""
    members = [m for m in group_members(groups) if m.size > 1]
    names = class_names or []

    def label_of(i: int) -> str | None:
        if labels is None or labels.ndim != 1:
            return None
        v = int(labels[i])
        return names[v] if 0 <= v < len(names) else str(v)

    where = {str(sources[i]): i for i in range(len(sources))}
    conflicting = []
    for group in info.get("conflicting_groups") or []:
        conflicting.append(
            [
                {"file": name, "label": label_of(where[name]) if name in where else None}
                for name in group
            ]
        )
    out = {k: v for k, v in info.items() if k != "conflicting_groups"}
    out["conflicting_groups"] = conflicting
    out["in_file"] = {
        "groups": len(members),
        "images_in_groups": int(sum(m.size for m in members)),
        "groups_across_splits": sum(len(set(split[m].tolist())) > 1 for m in members),
    }
    out["groups_in_file"] = [[str(sources[i]) for i in m.tolist()] for m in members]
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
    if "duplicates" in s:
        lines += _format_duplicates(s["duplicates"])
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


def _format_duplicates(d: dict[str, Any]) -> list[str]:
    """Text lines of the ``duplicates`` summary."""
    inside = d.get("in_file") or {}
    lines = [
        f"  duplicates  policy {d.get('policy')}, rule {d.get('rule_text') or d.get('rule')}",
        f"    found     {d.get('pairs')} pairs in {d.get('groups')} groups "
        f"({d.get('images_in_groups')} images, largest {d.get('largest_group')})",
        f"    in file   {inside.get('groups')} groups of {inside.get('images_in_groups')} images, "
        f"{inside.get('groups_across_splits')} across train/val/test; split unit: "
        f"{d.get('split_unit')}",
    ]
    if "groups_across_official_splits" in d:
        lines.append(
            f"    official  {d['groups_across_official_splits']} groups cross the official split"
        )
    if "dropped" in d:
        lines.append(
            f"    dropped   {d['dropped']} images ({d.get('drop_rule')}); --json lists them"
        )
    conflicting = d.get("conflicting_groups") or []
    lines.append(f"    conflicting-label groups: {len(conflicting)}")
    for group in conflicting:
        lines.append(
            "      "
            + ", ".join(
                f"{m['file']} [{m['label']}]" if m.get("label") else str(m["file"]) for m in group
            )
        )
    return lines
