"""What a sweep evaluates: encoder sources (checkpoint, random or external init) and task data.

:class:`EncoderSource` says where a cell's encoder comes from (a checkpoint, a
seeded random initialisation for the ``scratch`` / ``supervised`` baselines, or
external initial weights, ``init``, for the ``external`` baseline);
:class:`TaskData` reads a task's dataset once and draws the nested, stratified,
patient-level subsets of each (fraction, seed) cell.

The ``scratch`` arm of the frozen-feature adapters (linear, kNN) is a random
encoder whose batch-norm running statistics were recalibrated on the task's
**train split** (:func:`pretrain.encoders.calibration.calibrate_batch_norm`,
issue 23): a raw random CNN in eval mode normalises with mean 0 / variance 1,
which no real image matches, while a pretrained encoder has its statistics
fitted to the data as a side effect of training. The calibration reads the
images of the whole train split (no labels, as pretraining does), never the
validation or test split. Adapters that train the encoder (fine-tuning,
segmentation) fit the statistics themselves and get the plain random init.
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

from benchmark.core.errors import DataError, SplitError, SSLBenchError
from benchmark.data.h5format import read_split, read_split_units, read_strings
from benchmark.data.splits import strata_for, subset
from pretrain.checkpoint import load_encoder, read_checkpoint_meta
from pretrain.encoders import ENCODERS, Encoder, create_encoder
from pretrain.encoders.calibration import calibrate_batch_norm
from pretrain.encoders.external import parse_init
from tasks.adapters import CellData
from tasks.spec import TaskSpec


def _short_hash(obj: Any, n: int = 6) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


#: Split whose images calibrate the batch norms of the frozen-feature scratch baseline.
CALIBRATION_SPLIT = "train"
#: Images per forward pass of that calibration (part of the encoder's identity: the
#: statistics are cumulative, so it matters only through each batch's variance estimate).
CALIBRATION_BATCH = 64


# -- encoders -----------------------------------------------------------------------
@dataclass
class EncoderSource:
    """Where a cell's encoder comes from: a checkpoint, a random or an external initialisation.

    Attributes:
        id: Records folder name of the source.
        kind: ``checkpoint``, ``scratch`` (random, seeded per cell; also the
            ``supervised`` baseline's) or ``external`` (``init`` weights, the same in
            every cell).
        name: Encoder architecture.
        args: Constructor arguments (``init`` only for ``external``).
        path: Checkpoint folder (``checkpoint``).
        weights_hash: Identity of the weights (``checkpoint``: SHA-256; ``external``:
            architecture and the weights' identity, see :meth:`external`).
        metadata: What records show under ``encoder.metadata``.
        baseline: ``scratch``, ``supervised``, ``external`` or None (a checkpoint).
        label: Leaderboard row of an ``external`` source (e.g. ``ImageNet init
            (resnet18.a1_in1k)``), None otherwise.
        calibrate: Split whose images recalibrate the batch norms of a random init
            (``scratch`` arm of the frozen-feature adapters), None for the raw init.
    """

    id: str
    kind: str  # "checkpoint", "scratch" or "external"
    name: str
    args: dict[str, Any]
    path: Path | None = None
    weights_hash: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    label: str | None = None
    calibrate: str | None = None

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
    def scratch(
        cls,
        name: str,
        args: dict[str, Any],
        baseline: str = "scratch",
        calibrate: str | None = None,
    ) -> EncoderSource:
        """A random initialisation of architecture ``name`` (seeded per cell).

        An ``init`` in ``args`` (a checkpoint pretrained from external weights) is
        dropped: a scratch baseline is random.

        Args:
            name: Encoder architecture.
            args: Its constructor arguments.
            baseline: ``scratch`` or ``supervised``.
            calibrate: Split whose images recalibrate the batch-norm statistics after
                initialisation (:data:`CALIBRATION_SPLIT` for the frozen-feature scratch
                arm; :meth:`calibrate_encoder`), or None for the raw init. It is part of
                the source's id (records folder), of its hash (record fingerprints) and
                of the feature-cache key, so records and cached features of the raw init
                are never taken for the calibrated one.
        """
        args = {k: v for k, v in args.items() if k != "init"}
        suffix = f"-bncal-{calibrate}" if calibrate else ""
        return cls(
            id=f"{baseline}-{name}-{_short_hash(args)}{suffix}",
            kind="scratch",
            name=name,
            args=args,
            baseline=baseline,
            calibrate=calibrate,
        )

    @classmethod
    def external(cls, name: str, args: dict[str, Any], init: str) -> EncoderSource:
        """Architecture ``name`` initialised from external weights (the ``external`` baseline).

        Args:
            name: Encoder architecture.
            args: Its constructor arguments (an ``init`` there is replaced).
            init: ``timm:<tag>`` or a weights file (:mod:`pretrain.encoders.external`).

        The weights are identified by content (a file's SHA-256, hashed here) or by
        their timm tag, so an edited file makes new records (in a new folder: the id
        holds the hash) and a moved one does not.
        """
        spec = parse_init(init)
        if spec.is_random:
            raise SSLBenchError(
                "the external baseline needs init weights (timm:<tag> or a weights file), "
                "not 'random'"
            )
        ENCODERS.get(name).check_init(spec)
        base = {k: v for k, v in args.items() if k != "init"}
        identity = spec.identity()
        ident = identity.get("sha256") or f"timm:{spec.value}"
        short = identity["sha256"][:8] if "sha256" in identity else _short_hash(base)
        return cls(
            id=f"external-{name}-{spec.slug()}-{short}",
            kind="external",
            name=name,
            args={**base, "init": spec.spec},
            weights_hash=f"external:{name}:{json.dumps(base, sort_keys=True)}:{ident}",
            metadata={
                "encoder": {"name": name, "args": base},
                "init": {**identity, "spec": spec.spec, "name": spec.display_name()},
            },
            baseline="external",
            label=spec.label(name),
        )

    def scratch_id(self, seed: int) -> str:
        """Identity of the random encoder of ``seed`` (feature-cache key, record hash)."""
        base = f"scratch:{self.name}:{json.dumps(self.args, sort_keys=True)}:{seed}"
        if self.calibrate:
            base += f":bn-calibrated:{self.calibrate}:batch{CALIBRATION_BATCH}"
        return base

    def hash_for(self, seed: int) -> str:
        """Encoder hash recorded for a cell (weights identity or the scratch description)."""
        return self.scratch_id(seed) if self.kind == "scratch" else self.weights_hash

    @property
    def seeded(self) -> bool:
        """Whether the encoder differs per evaluation seed (a random initialisation)."""
        return self.kind == "scratch"

    def build(self, seed: int, device: str = "cpu") -> Encoder:
        """The encoder (checkpoint weights, external weights, or random init seeded with
        ``seed``)."""
        if self.kind == "checkpoint":
            assert self.path is not None
            return load_encoder(self.path, map_location=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = create_encoder(self.name, **self.args)
        if self.kind == "external":
            # what was loaded (e.g. the resolved hash of a timm tag) goes into the records
            self.metadata = {**self.metadata, "init": encoder.init_info}
        else:
            encoder.scratch_id = self.scratch_id(seed)  # type: ignore[assignment]  # cache key
        return encoder.to(device).eval()

    def calibrate_encoder(
        self, encoder: Encoder, images: torch.Tensor, device: str = "cpu"
    ) -> dict[str, Any]:
        """Recalibrate the batch norms of a built random ``encoder`` on ``images``, in place.

        Args:
            encoder: The encoder of :meth:`build` (weights untouched; left in eval mode).
            images: Preprocessed images of the split :attr:`calibrate`
                (:meth:`TaskData.split_images`).
            device: Where the forward passes run.

        Returns:
            The provenance of :func:`calibrate_batch_norm` (also set as the encoder's
            ``bn_calibration`` attribute), recorded in each record's encoder metadata.
        """
        if not self.calibrate:
            raise SSLBenchError(f"{self.id}: this encoder source has no calibration split")
        record = calibrate_batch_norm(
            encoder, images, split=self.calibrate, batch_size=CALIBRATION_BATCH, device=device
        )
        encoder.eval()
        encoder.bn_calibration = record  # type: ignore[assignment]
        return record

    def describe(self, seed: int) -> dict[str, Any]:
        meta = self.metadata or {
            "encoder": {"name": self.name, "args": self.args},
            "init": f"random (torch.manual_seed({seed}))"
            + (f", batch norms calibrated on the {self.calibrate} split" if self.calibrate else ""),
        }
        out = {
            "id": self.id,
            "kind": self.kind,
            "baseline": self.baseline,
            "path": str(self.path) if self.path else None,
            "hash": self.hash_for(seed),
            "metadata": meta,
        }
        if self.label:
            out["label"] = self.label
        return out


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

    def split_images(self, name: str, in_chans: int) -> torch.Tensor:
        """The preprocessed images of split ``name``, as the adapters see them.

        The same pixels as the frozen features (:func:`tasks.features.load_images`:
        the task's image size and resize mode, the encoder's input channels), in file
        order. Used to calibrate the batch norms of the scratch baseline.
        """
        from tasks.features import load_images

        idx = self.pool(name)
        if idx.size == 0:
            raise SplitError(f"{self.path}: the {name} split is empty")
        data = CellData(
            path=self.path,
            train=idx,
            val=idx[:0],
            test=idx[:0],
            target=self.spec.target,
            num_classes=self.num_classes,
            class_names=self.class_names,
            image_size=self.spec.image_size,
            content_hash=self.content_hash,
            preprocessing=dict(self.spec.preprocessing),
        )
        return load_images(data, in_chans)[torch.from_numpy(idx)]

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
