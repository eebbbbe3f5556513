"""What a sweep evaluates: encoder sources (checkpoint or random init) and task data.

:class:`EncoderSource` says where a cell's encoder comes from (a checkpoint, or
a seeded random initialisation for the ``scratch`` / ``supervised``
baselines); :class:`TaskData` reads a task's dataset once and draws the nested,
stratified, patient-level subsets of each (fraction, seed) cell.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from benchmark.core.errors import DataError, SplitError
from benchmark.data.h5format import read_split, read_split_units, read_strings
from benchmark.data.splits import strata_for, subset
from pretrain.checkpoint import load_encoder, read_checkpoint_meta
from pretrain.encoders import Encoder, create_encoder
from tasks.adapters import CellData
from tasks.spec import TaskSpec


def _short_hash(obj: Any, n: int = 6) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


# -- encoders -----------------------------------------------------------------------
@dataclass
class EncoderSource:
    """Where a cell's encoder comes from: a checkpoint or a random initialisation."""

    id: str
    kind: str  # "checkpoint" or "scratch"
    name: str
    args: dict[str, Any]
    path: Path | None = None
    weights_hash: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, label: str | None = None) -> EncoderSource:
        """A checkpoint folder; ``label`` names its records folder (default: folder name)."""
        meta = read_checkpoint_meta(path)  # DataError if missing
        folder = Path(path)
        folder = folder.parent if folder.name in ("encoder.pt", "encoder.json") else folder
        if label is None:
            label = folder.resolve().name
            if label == "encoder":
                label = folder.resolve().parent.name
        sha = str(meta["weights_sha256"])
        return cls(
            id=f"{label}-{sha[:8]}",
            kind="checkpoint",
            name=meta["encoder"]["name"],
            args=dict(meta["encoder"].get("args", {})),
            path=folder,
            weights_hash=sha,
            metadata=meta,
        )

    @classmethod
    def scratch(cls, name: str, args: dict[str, Any], baseline: str = "scratch") -> EncoderSource:
        """A random initialisation of architecture ``name`` (seeded per cell)."""
        return cls(
            id=f"{baseline}-{name}-{_short_hash(args)}",
            kind="scratch",
            name=name,
            args=dict(args),
            baseline=baseline,
        )

    def scratch_id(self, seed: int) -> str:
        return f"scratch:{self.name}:{json.dumps(self.args, sort_keys=True)}:{seed}"

    def hash_for(self, seed: int) -> str:
        """Encoder hash recorded for a cell (weights SHA-256 or the scratch description)."""
        return self.weights_hash if self.kind == "checkpoint" else self.scratch_id(seed)

    def build(self, seed: int, device: str = "cpu") -> Encoder:
        """The encoder (checkpoint weights, or random init seeded with ``seed``)."""
        if self.kind == "checkpoint":
            assert self.path is not None
            return load_encoder(self.path, map_location=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = create_encoder(self.name, **self.args)
        encoder.scratch_id = self.scratch_id(seed)  # type: ignore[assignment]  # feature cache key
        return encoder.to(device).eval()

    def describe(self, seed: int) -> dict[str, Any]:
        meta = self.metadata or {
            "encoder": {"name": self.name, "args": self.args},
            "init": f"random (torch.manual_seed({seed}))",
        }
        return {
            "id": self.id,
            "kind": self.kind,
            "baseline": self.baseline,
            "path": str(self.path) if self.path else None,
            "hash": self.hash_for(seed),
            "metadata": meta,
        }


# -- the dataset of a task ----------------------------------------------------------
def _mask_emptiness(masks: h5py.Dataset, chunk: int = 256) -> tuple[np.ndarray, int]:
    """Per-sample "mask is empty" flags and the largest mask value, read in chunks."""
    empty, top = [], 0
    for i in range(0, masks.shape[0], chunk):
        block = np.asarray(masks[i : i + chunk])
        flat = block.reshape(block.shape[0], -1)
        empty.append(~flat.any(axis=1))
        top = max(top, int(flat.max(initial=0)))
    return np.concatenate(empty), top


@dataclass
class TaskData:
    """Per-file arrays a sweep needs to draw subsets, read once.

    ``units`` are what a subset keeps whole: patient ids, joined with their
    near-duplicate groups when the file groups duplicates
    (:func:`benchmark.data.h5format.read_split_units`); None means patient ids.
    """

    spec: TaskSpec
    path: Path
    content_hash: str
    split: np.ndarray
    strata: np.ndarray
    patient_ids: np.ndarray
    num_classes: int
    class_names: list[str]
    units: np.ndarray | None = None

    @classmethod
    def load(cls, spec: TaskSpec, data_root: str | Path | None = None) -> TaskData:
        """Resolve and read the task's dataset (DataError with the convert command if absent)."""
        path = spec.resolve_dataset(data_root)
        with h5py.File(path, "r") as f:
            attrs = {
                k: f.attrs[k]
                for k in ("content_hash", "class_names", "mask_class_names")
                if k in f.attrs
            }
            split = read_split(f)
            pids = read_strings(f, "patient_ids")
            units = read_split_units(f)
            if spec.target == "labels":
                labels = np.asarray(f["labels"][()]).astype(np.int64)
                names = json.loads(attrs.get("class_names", "null") or "null")
                k = len(names) if names else int(labels.max()) + 1
                if labels.min() < 0 or labels.max() >= k:
                    raise DataError(
                        f"{path}: labels must lie in [0, {k}) ({k} class names), got "
                        f"[{labels.min()}, {labels.max()}]"
                    )
                strata = labels
            else:
                empty, top = _mask_emptiness(f["masks"])
                names = json.loads(attrs.get("mask_class_names", "null") or "null")
                k = len(names) if names else max(2, top + 1)
                strata = strata_for(masks_empty=empty)
        names = list(names) if names else [f"class{i}" for i in range(k)]
        return cls(
            spec, path, str(attrs.get("content_hash", "")), split, strata, pids, k, names, units
        )

    def pool(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def cell(self, fraction: float, seed: int) -> CellData:
        """The cell's data: nested train and val subsets, the full test split."""
        train_pool, val_pool, test = self.pool("train"), self.pool("val"), self.pool("test")
        if train_pool.size == 0 or test.size == 0:
            raise SplitError(f"{self.path}: the train and test splits must not be empty")
        need = self.num_classes if self.spec.target == "labels" else None
        units = self.patient_ids if self.units is None else self.units
        try:
            tr = train_pool[
                subset(
                    self.strata[train_pool],
                    fraction,
                    seed,
                    groups=units[train_pool],
                    num_classes=need,
                )
            ]
        except SplitError as exc:
            raise SplitError(f"{self.path} train split: {exc}") from None
        va = val_pool[:0]
        if val_pool.size:
            n_cls = np.unique(self.strata[val_pool]).size
            f_val = min(1.0, max(fraction, n_cls / val_pool.size))
            va = val_pool[subset(self.strata[val_pool], f_val, seed, groups=units[val_pool])]
        return CellData(
            path=self.path,
            train=tr,
            val=va,
            test=test,
            target=self.spec.target,
            num_classes=self.num_classes,
            class_names=self.class_names,
            image_size=self.spec.image_size,
            content_hash=self.content_hash,
            metrics=self.spec.metric_names,
            primary_metric=self.spec.primary_metric,
            preprocessing=dict(self.spec.preprocessing),
        )
