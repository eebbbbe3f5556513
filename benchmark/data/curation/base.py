"""Data curation before SSL pretraining: the contract, the registry and the file writer.

Less is More (Wolf et al., Comput Biol Med 2024) prunes redundant images before
self-supervised pretraining and finds better downstream results at a fraction of
the pretraining time. A *curator* decides which images of the **train split** to
keep; validation and test samples are always copied unchanged. A curated file is a
*pretraining pool*: evaluate on the original file, whose label-fraction subsets are
drawn from the full train split. Curators work on 2D grey images; a 3D file is
curated as its slices along depth (the unit of Less is More), and its output is then
the 2D file of those slices (every val/test slice kept), or, with ``unit="volume"``,
as whole volumes (:meth:`Curator.select_volumes`: the output stays a 3D file that a
3D encoder can pretrain on). Near-duplicate groups of a 2D input are carried over,
recounted on the kept samples (:func:`regroup`).

Each curator is one module of this package registering a :class:`Curator` in
:data:`CURATORS` (``dhash`` is built in). :func:`curate_file` writes the output
atomically (temporary file, then rename) and records what was done under
``extra.curation``: the curator, its options, the input's content hash and the
kept / dropped counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.core.errors import DataError, SSLBenchError
from benchmark.core.registry import Registry
from benchmark.data.h5format import (
    DatasetMeta,
    H5Writer,
    decode_attrs,
    open_h5,
    read_duplicates,
    read_split,
    read_strings,
)


class CurationError(SSLBenchError, ValueError):
    """A curator was asked for with invalid options."""


class Curator:
    """Base class: which train images to keep.

    Subclasses declare ``name`` and ``defaults`` (their options) and implement
    :meth:`select`.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise CurationError(
                f"curator {self.name!r}: unknown option {unknown[0]!r} "
                f"(options: {sorted(self.defaults)})"
            )
        self.options = {**self.defaults, **options}

    def select(self, images: np.ndarray, units: np.ndarray) -> np.ndarray:
        """A boolean keep-mask over ``images`` ``(N, H, W)`` (grey, any dtype).

        ``units`` ``(N,)`` names the volume (or patient) of each image, for curators
        whose scope is one volume; images are given in file (and slice) order.
        """
        raise NotImplementedError

    def near(self, images: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """A boolean mask over ``images``: near-duplicates of any ``reference`` image
        (the memorisation filter of synthetic images against the real train split)."""
        raise NotImplementedError

    def check_volumes(self) -> None:
        """Raise :class:`CurationError` unless the curator, with its options, can compare
        whole volumes (called when an experiment is planned, before any work)."""
        raise CurationError(f"curator {self.name!r} cannot compare whole volumes")

    def select_volumes(self, volumes: np.ndarray) -> np.ndarray:
        """A boolean keep-mask over grey volumes ``(N, D, H, W)``, compared whole."""
        raise CurationError(f"curator {self.name!r} cannot compare whole volumes")

    def near_volumes(self, volumes: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Volumes that near-duplicate any ``reference`` volume (3D memorisation filter)."""
        raise CurationError(f"curator {self.name!r} cannot compare whole volumes")

    def label(self) -> str:
        """A short name for row labels, e.g. ``dhash6`` (subclasses add their options)."""
        return self.name


CURATORS: Registry[type[Curator]] = Registry(
    "curators", "prune redundant training images before SSL pretraining (Less is More)"
)


@dataclass
class Slices:
    """The 2D items a curator sees, and the samples of the output file."""

    images: np.ndarray  # (M, C, H, W)
    masks: np.ndarray | None  # (M, H, W)
    labels: np.ndarray | None
    patients: np.ndarray
    split: np.ndarray
    sources: np.ndarray
    units: np.ndarray  # volume (3D) or patient (2D) of each item


Duplicates = tuple[np.ndarray, dict[str, Any], np.ndarray | None]


UNITS = ("slice", "volume")


def _items(
    path: Path, unroll: bool = True
) -> tuple[Slices, dict[str, Any], int, Duplicates | None]:
    """A file's samples as 2D items (volumes unrolled along depth unless ``unroll`` is
    False), its attributes, its spatial dims and its near-duplicate groups (2D files)."""
    with open_h5(path) as f:
        meta = decode_attrs(f.attrs)
        images = f["images"][()]
        masks = f["masks"][()] if "masks" in f else None
        labels = f["labels"][()] if "labels" in f else None
        patients = read_strings(f, "patient_ids")
        sources = read_strings(f, "source_files")
        split = read_split(f)
        groups, info = read_duplicates(f)
        dhash = f["dhash"][()] if "dhash" in f else None
    dims = images.ndim - 2
    if dims == 2 or not unroll:
        dup = (groups, info or {}, dhash) if groups is not None and dims == 2 else None
        return Slices(images, masks, labels, patients, split, sources, patients), meta, dims, dup
    n, c, d = images.shape[:3]
    rep = np.repeat(np.arange(n), d)
    return (
        Slices(
            images.transpose(0, 2, 1, 3, 4).reshape(n * d, c, *images.shape[3:]),
            masks.reshape(n * d, *masks.shape[2:]) if masks is not None else None,
            labels[rep] if labels is not None else None,
            patients[rep],
            split[rep],
            np.array([f"{s}#slice{k}" for s in sources for k in range(d)], dtype=object),
            rep.astype(str),
        ),
        meta,
        3,
        None,
    )


def regroup(groups: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Near-duplicate group ids after dropping samples: groups left with one member become
    ``-1`` (the format's "no duplicates"), the others renumbered ``0..G-1`` in order of
    first appearance; with the recounted ``groups``, ``images_in_groups`` and
    ``largest_group``."""
    g = np.asarray(groups, dtype=np.int64)
    ids, counts = np.unique(g[g >= 0], return_counts=True)
    multi = set(ids[counts >= 2].tolist())
    order: dict[int, int] = {}
    out = np.full(len(g), -1, dtype=np.int64)
    for k, v in enumerate(g.tolist()):
        if v in multi:
            out[k] = order.setdefault(v, len(order))
    sizes = np.bincount(out[out >= 0]) if len(order) else np.zeros(0, dtype=np.int64)
    return out, {
        "groups": len(order),
        "images_in_groups": int(sizes.sum()),
        "largest_group": int(sizes.max(initial=0)),
    }


def curate_file(
    src: str | Path,
    out: str | Path,
    curator: Curator,
    *,
    drop_near: str | Path | None = None,
    overwrite: bool = False,
    unit: str = "slice",
    prune: bool = True,
) -> dict[str, Any]:
    """Curate the train split of ``src`` into ``out``; returns the ``curation`` record.

    Args:
        src: sslbench file (2D, or 3D).
        out: Output file.
        curator: The curator.
        drop_near: A real dataset file; train images of ``src`` that near-duplicate one
            of its train images (:meth:`Curator.near`) are dropped first, the
            memorisation filter for generated images (``src`` a synthetic file).
        overwrite: Replace an existing ``out``.
        unit: 3D inputs: ``slice`` (curate the slices, write a 2D file: Less is More's
            unit) or ``volume`` (compare whole volumes, write a 3D file). 2D: ignored.
        prune: Run the curator's pruning (``False``: only the ``drop_near`` filter).

    Raises:
        DataError: ``src`` is not a readable sslbench file, has no train split, ``out``
            exists (without ``overwrite``), or every train image would be dropped.
        CurationError: An unknown ``unit``, or ``drop_near`` of other dimensions.
    """
    src = Path(src)
    if unit not in UNITS:
        raise CurationError(f"curation unit must be one of {list(UNITS)}, got {unit!r}")
    items, meta, dims, dup = _items(src, unroll=unit == "slice")
    volumes = dims == 3 and unit == "volume"
    train = items.split == "train"
    if not train.any():
        raise DataError(f"{src}: no 'train' split to curate")
    grey = items.images[train, 0]
    near = np.zeros(len(grey), dtype=bool)
    ref_meta: dict[str, Any] = {}
    if drop_near is not None:
        ref, ref_meta, _, _ = _items(Path(drop_near), unroll=not volumes)
        ref_train = ref.split == "train"
        if not ref_train.any():
            raise DataError(f"{drop_near}: no 'train' split to compare the images of {src} with")
        reference = ref.images[ref_train, 0]
        if volumes and reference.shape[1] != grey.shape[1]:  # slices compared by depth
            raise CurationError(
                f"{drop_near}: volumes of depth {reference.shape[1]} cannot be compared slice "
                f"by slice with the depth-{grey.shape[1]} volumes of {src}"
            )
        find = curator.near_volumes if volumes else curator.near
        near = np.asarray(find(grey, reference), dtype=bool)
    keep_train = ~near
    if prune and (~near).any():
        chosen = (
            curator.select_volumes(grey[~near])
            if volumes
            else curator.select(grey[~near], items.units[train][~near])
        )
        keep_train[~near] = np.asarray(chosen, bool)
    if not keep_train.any():
        raise DataError(
            f"{src}: curation would drop every one of its {len(keep_train)} train "
            f"{'volumes' if volumes else 'images'}"
            + (f" ({int(near.sum())} near-duplicates of {drop_near})" if drop_near else "")
        )
    keep = ~train
    keep[np.flatnonzero(train)[keep_train]] = True
    record = {
        "curator": curator.name,
        "options": dict(curator.options),
        "pruned": bool(prune),
        "input": {"path": src.name, "content_hash": meta.get("content_hash", "")},
        "near_real": (
            {"path": Path(drop_near).name, "content_hash": ref_meta.get("content_hash", "")}
            if drop_near is not None
            else None
        ),
        "unit": ("volume" if volumes else "slice") if dims == 3 else "image",
        "train_in": int(train.sum()),
        "train_kept": int(keep_train.sum()),
        "train_dropped": int((~keep_train).sum()),
        "dropped_near_real": int(near.sum()) if drop_near is not None else None,
        "kept_fraction": round(float(keep_train.mean()), 6),
    }
    fields: dict[str, Any] = {k: meta.get(k) for k in asdict(DatasetMeta("", "")) if k in meta}
    extra = {**(meta.get("extra") or {}), "curation": record}
    if dims == 3 and not volumes:
        spacing = meta.get("spacing")
        fields["spacing"] = spacing[1:] if isinstance(spacing, list) else spacing
        extra["curation"]["slices_of"] = "depth axis of the input volumes"
    out_meta = DatasetMeta(**{**fields, "extra": extra})
    idx = np.flatnonzero(keep)
    with H5Writer(
        out,
        n=len(idx),
        image_shape=items.images.shape[1:],
        meta=out_meta,
        image_dtype=items.images.dtype,
        has_masks=items.masks is not None,
        label_shape=None if items.labels is None else tuple(items.labels.shape[1:]),
        overwrite=overwrite,
    ) as w:
        for j, i in enumerate(idx):
            w.write(
                j,
                items.images[i],
                mask=None if items.masks is None else items.masks[i],
                label=None if items.labels is None else items.labels[i],
                patient_id=str(items.patients[i]),
                split=str(items.split[i]),
                source_file=str(items.sources[i]),
            )
        if dup is not None:  # 2D inputs keep their near-duplicate groups (split units)
            groups, info, dhash = dup
            kept, counts = regroup(groups[idx])
            info = {k: v for k, v in info.items() if k not in ("pairs", "conflicting_groups")}
            info.update(counts, recomputed="on the kept samples (curation); pairs not recounted")
            w.set_duplicates(kept, info, None if dhash is None else dhash[idx])
    return record
