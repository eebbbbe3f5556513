"""Converter for MedMNIST ``.npz`` files (Yang et al., MedMNIST v2, 2023).

A MedMNIST file holds ``train_images``, ``train_labels``, ``val_images``,
``val_labels``, ``test_images`` and ``test_labels``. Policies:

* The official train / val / test split is kept as is.
* Images (uint8) are stored channels-first: greyscale 2D ``(N, H, W)`` as
  ``(1, H, W)``, RGB 2D ``(N, H, W, 3)`` as ``(3, H, W)`` (colour is kept), 3D
  ``(N, D, H, W)`` as ``(1, D, H, W)``. A 4-D array whose last axis has length 3
  is read as RGB 2D; MedMNIST 3D volumes are cubes (28 or 64 voxels a side).
* Labels ``(N,)`` or ``(N, 1)`` are integer classes; ``(N, K)`` with ``K > 1``
  (ChestMNIST) are multi-label 0/1 vectors (``label_shape=(K,)``).
* Patient ids: MedMNIST publishes none, so each sample is its own patient id
  (``"<split>-<index>"``, e.g. ``"train-00012"``); the official split itself may
  still keep patients apart, but the file cannot show it.
* Near-duplicates (``--duplicates group|drop|keep``, see
  :mod:`benchmark.data.duplicates`): signatures of the stored images (2D:
  grey, RGB by luma; 3D: the volume), default rule as for folders in 2D
  (dHash Hamming <= 6 and 32x32 correlation >= 0.85) and correlation >= 0.99 of
  16^3 thumbnails in 3D. The official split is kept whatever the policy:
  ``group`` keeps groups together in label-fraction subsets and counts the
  groups that cross the official split (BreastMNIST: many, since it is BUSI);
  ``drop`` keeps one exemplar per group (preferring test, then val, so the
  official test set loses as little as possible) and drops conflicting-label
  groups entirely, which shrinks the official splits (recorded).
* The dataset is named after the file stem; class names and modality come from
  ``--classes`` / ``--modality`` or the built-in table of the MedMNIST v2 datasets
  (:data:`DATASETS`; MedMNIST+ size suffixes such as ``_64`` are recognised), else
  ``class_0``, ``class_1``, ... and ``unknown``.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from benchmark.core.errors import DataError
from benchmark.core.io import check_output_path
from benchmark.data import duplicates as dup
from benchmark.data.converters.base import CONVERTERS, Converter, parse_names
from benchmark.data.h5format import SPLITS, DatasetMeta, H5Writer

KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
#: The MedMNIST v2 datasets (Yang et al. 2023, Table 1 and the label lists of the
#: ``medmnist`` package): modality and class names in label order. BreastMNIST keeps
#: sslbench's short name of its positive class ("normal+benign"). MedMNIST+ files carry
#: a size suffix (``adrenalmnist3d_64.npz``, ``breastmnist_224.npz``): see
#: :func:`dataset_key`.
_ORGANS_2D = [
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
]  # fmt: skip
DATASETS: dict[str, tuple[str, list[str]]] = {
    "pathmnist": ("pathology", [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ]),
    "chestmnist": ("X-ray", [
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
        "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
        "pleural", "hernia",
    ]),
    "dermamnist": ("dermatoscopy", [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions",
    ]),
    "octmnist": ("OCT", [
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal",
    ]),
    "pneumoniamnist": ("X-ray", ["normal", "pneumonia"]),
    "retinamnist": ("fundus photography", ["grade 0", "grade 1", "grade 2", "grade 3", "grade 4"]),
    "breastmnist": ("ultrasound", ["malignant", "normal+benign"]),
    "bloodmnist": ("microscopy", [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
        "monocyte", "neutrophil", "platelet",
    ]),
    "tissuemnist": ("microscopy", [
        "collecting duct, connecting tubule", "distal convoluted tubule",
        "glomerular endothelial cells", "interstitial endothelial cells", "leukocytes",
        "podocytes", "proximal tubule segments", "thick ascending limb",
    ]),
    "organamnist": ("CT", _ORGANS_2D),
    "organcmnist": ("CT", _ORGANS_2D),
    "organsmnist": ("CT", _ORGANS_2D),
    # the 3D version numbers the same organs in another order
    "organmnist3d": ("CT", [
        "liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
        "heart", "lung-right", "lung-left", "spleen", "pancreas",
    ]),
    "nodulemnist3d": ("CT", ["benign", "malignant"]),
    "adrenalmnist3d": ("CT (adrenal shape masks)", ["normal", "hyperplasia"]),
    "fracturemnist3d": ("CT", [
        "buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture",
    ]),
    "vesselmnist3d": ("MRA (vessel shape masks)", ["vessel", "aneurysm"]),
    "synapsemnist3d": ("electron microscopy", ["inhibitory synapse", "excitatory synapse"]),
}  # fmt: skip
#: Image sizes of MedMNIST+ (28 is the v2 size, written without a suffix).
SIZES = (28, 64, 128, 224)
CITATION = (
    "Yang J. et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
    "biomedical image classification, Scientific Data 10 (2023) 41"
)


def size_suffix(stem: str) -> int | None:
    """The MedMNIST+ size a file stem ends with (``pathmnist_64`` -> 64), else None."""
    return next((n for n in SIZES if stem.lower().endswith(f"_{n}")), None)


def dataset_key(stem: str) -> str | None:
    """The MedMNIST dataset a file stem names: ``adrenalmnist3d_64`` -> ``adrenalmnist3d``.

    The size suffix of MedMNIST+ (``_28``, ``_64``, ``_128``, ``_224``) is dropped; a stem
    that is not a known name itself is matched by its longest known prefix
    (``breastmnist-copy`` -> ``breastmnist``). None when nothing matches.
    """
    base = stem.lower()
    size = size_suffix(base)
    if size is not None:
        base = base.removesuffix(f"_{size}")
    if base in DATASETS:
        return base
    prefixes = sorted((k for k in DATASETS if base.startswith(k)), key=len, reverse=True)
    return prefixes[0] if prefixes else None


def load_npz(src: Path) -> dict[str, np.ndarray]:
    """The six MedMNIST arrays of ``src``; missing keys or bad files raise DataError."""
    if not src.exists():
        raise DataError(f"{src}: no such file")
    if src.is_dir():
        raise DataError(f"{src}: is a folder, expected a MedMNIST .npz file")
    try:
        with np.load(src, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{src}: missing keys {', '.join(missing)} in MedMNIST .npz")
            return {k: np.asarray(npz[k]) for k in KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{src}: unreadable or truncated .npz file ({reason})") from None


def to_channels_first(images: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) / (N, H, W, 3) / (N, D, H, W) as (N, C, *spatial) uint8."""
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
            raise DataError(f"{where}: images must be uint8 (0..255), got {images.dtype}")
        images = images.astype(np.uint8)
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] == 3:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4:
        return images[:, None]
    raise DataError(f"{where}: images of shape {images.shape} are neither 2D nor 3D")


def to_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """(N,) int64 class labels, or (N, K) uint8 multi-labels."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or not np.all(np.mod(labels, 1) == 0) or (labels < 0).any():
        raise DataError(f"{where}: labels must be non-negative integers (N,) or (N, K)")
    if labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where}: multi-label labels (N, K) must be 0 or 1")
    return labels.astype(np.int64 if labels.ndim == 1 else np.uint8)


@CONVERTERS.register("medmnist")
class MedMNISTConverter(Converter):
    """MedMNIST ``.npz`` (2D grey, 2D RGB or 3D) with its official split.

    Args:
        classes: Class names in label order (comma-separated or a list).
        dataset_name: Dataset name (default: the file stem).
        modality: Imaging modality (default: looked up from the file name).
        duplicates: Near-duplicate policy ``group`` (default), ``drop`` or ``keep``.
        dup_rule: Pair rule (default ``dhash+corr`` in 2D, ``corr`` in 3D).
        dup_hamming: Largest dHash Hamming distance of a pair (0-64, default 6).
        dup_corr: Smallest thumbnail correlation (in (0, 1]; default 0.85 2D, 0.99 3D).
    """

    description: ClassVar[str] = "MedMNIST .npz file (2D/3D, official split kept)"
    version: ClassVar[str] = "2"  # 2: near-duplicate groups (policy, subsets)

    def __init__(
        self,
        *,
        classes: str | list[str] | None = None,
        dataset_name: str | None = None,
        modality: str | None = None,
        duplicates: str | None = None,
        dup_rule: str | None = None,
        dup_hamming: int | None = None,
        dup_corr: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._dup_args = (duplicates, dup_rule, dup_hamming, dup_corr)
        self.dup = dup.parse_options(*self._dup_args, dup.DEFAULTS_2D)  # validated early
        self.classes = parse_names(classes)
        self.dataset_name = dataset_name
        self.modality = modality

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--classes``, ``--dataset-name`` and ``--modality``."""
        parser.add_argument("--classes", default=None, help="comma-separated class names")
        parser.add_argument(
            "--dataset-name", default=None, help="dataset name (default: file stem)"
        )
        parser.add_argument("--modality", default=None)
        dup.add_arguments(parser, dup.DEFAULTS_2D)

    @classmethod
    def image_size(cls, src: Path, options: dict[str, Any]) -> int | None:
        """The size in the file name (MedMNIST+ ``_64`` ...), else v2's 28 px."""
        return size_suffix(Path(src).stem) or 28

    def convert(self, src: Path, out: Path, *, overwrite: bool = False) -> Path:
        """Convert the ``.npz`` file ``src`` into ``out``; see the module docstring."""
        src, out = Path(src), Path(out)
        if not src.exists():
            raise DataError(f"{src}: no such file")
        check_output_path(out, overwrite)
        arrays = load_npz(src)
        images: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for s in SPLITS:
            where = f"{src}: {s}"
            images[s] = to_channels_first(arrays[f"{s}_images"], where)
            labels[s] = to_labels(arrays[f"{s}_labels"], where)
            if len(images[s]) != len(labels[s]):
                raise DataError(
                    f"{src}: {s}_images has {len(images[s])} samples but {s}_labels has "
                    f"{len(labels[s])}"
                )
        shapes = {images[s].shape[1:] for s in SPLITS if len(images[s])}
        lshapes = {labels[s].shape[1:] for s in SPLITS if len(labels[s])}
        if len(shapes) > 1 or len(lshapes) > 1:
            raise DataError(f"{src}: splits differ in image or label shape ({shapes}, {lshapes})")
        if not shapes:
            raise DataError(f"{src}: no images found")
        image_shape = shapes.pop()
        label_shape: tuple[int, ...] = lshapes.pop()
        stem = src.name.removesuffix(".npz")
        all_labels = np.concatenate([labels[s] for s in SPLITS])
        k = label_shape[0] if label_shape else int(all_labels.max()) + 1
        key = dataset_key(stem)
        known = DATASETS[key][1] if key else None
        if known is not None and (len(known) != k if label_shape else len(known) < k):
            known = None  # the file is not what its name says: generic names
        names = self.classes or known or [f"class_{i}" for i in range(k)]
        if (len(names) != k) if label_shape else (len(names) < k):
            raise DataError(f"{src}: labels need {k} class names, got {len(names)}: {names}")
        dims = len(image_shape) - 1
        options = dup.parse_options(
            *self._dup_args, dup.DEFAULTS_2D if dims == 2 else dup.DEFAULTS_3D
        )
        all_images = np.concatenate([images[s] for s in SPLITS])
        splits = np.concatenate([[s] * len(images[s]) for s in SPLITS]).astype(object)
        pids = np.concatenate([[f"{s}-{j:05d}" for j in range(len(images[s]))] for s in SPLITS])
        files = [f"{src.name}:{s}_images[{j}]" for s in SPLITS for j in range(len(images[s]))]
        sigs = dup.Signatures(dims)
        for img in tqdm(all_images, desc=f"hash {src.name}", disable=None):
            sigs.add(img)
        report = dup.analyse(sigs, options, all_labels, splits)
        keep = report.keep
        meta = DatasetMeta(
            name=self.dataset_name or stem,
            modality=self.modality or (DATASETS[key][0] if key else "unknown"),
            class_names=list(names),
            source=f"MedMNIST v2 ({src.name}), https://medmnist.com",
            licence="CC BY 4.0",
            citation=CITATION,
            converter=type(self).__name__,
            converter_version=self.version,
            extra={
                "split_policy": {"method": "official MedMNIST split"},
                "patient_id_policy": "no patient ids published: one id per sample, <split>-<index>",
                "image_policy": "uint8 as published; RGB kept as 3 channels, channels-first",
                "label_type": "multi-label" if label_shape else "class",
                "split_counts": {s: int(np.sum(splits[keep] == s)) for s in SPLITS},
            },
        )
        if keep.size < len(all_images):
            meta.extra["official_split_counts"] = {s: len(images[s]) for s in SPLITS}
        with H5Writer(
            out,
            n=int(keep.size),
            image_shape=image_shape,
            meta=meta,
            image_dtype=np.uint8,
            has_masks=False,
            label_shape=label_shape,
            overwrite=overwrite,
        ) as writer:
            for i, j in enumerate(tqdm(keep.tolist(), desc=f"convert {src.name}", disable=None)):
                writer.write(
                    i,
                    all_images[j],
                    label=all_labels[j],
                    patient_id=str(pids[j]),
                    split=str(splits[j]),
                    source_file=files[j],
                )
            signature = dup.SIGNATURE_2D if dims == 2 else dup.SIGNATURE_3D
            writer.set_duplicates(
                report.kept_groups,
                report.record(files, signature.replace("before any resize", "as stored"), splits),
                sigs.subset(keep).hashes,
            )
        return out
