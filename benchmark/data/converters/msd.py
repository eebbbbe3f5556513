"""Converter for Medical Segmentation Decathlon style NIfTI folders (``msd``, ``nifti``).

Layout::

    SRC/imagesTr/<case>.nii.gz   image volume (3D, or 4D with channels last)
    SRC/labelsTr/<case>.nii.gz   integer label volume of the same shape
    SRC/dataset.json             optional: name, modality, labels, licence

Only labelled training cases are converted (``imagesTs`` has no labels). Hidden
files such as the ``._hippocampus_001.nii.gz`` AppleDouble files in the MSD
archives are skipped. Policies (recorded in ``meta.extra``):

* Axes: each volume is reoriented to the closest canonical (RAS+) orientation
  with nibabel, then its ``(X, Y, Z)`` array is transposed to ``(D, H, W) =
  (Z, Y, X)`` and stored as ``(C, D, H, W)``; spacing is reported in the same
  ``(D, H, W)`` order (the per-axis median over cases; its range is recorded).
* Shape: no resampling or interpolation (native spacing is kept). Each axis is
  cropped or zero-padded to ``--shape D,H,W``. The crop window is centred on
  the centre of the foreground bounding box (of the whole label volume; the
  volume centre if the label is empty) and shifted to stay inside the volume,
  so foreground is lost only if its extent exceeds the target. Padding is
  symmetric. The foreground voxels lost to cropping are counted and recorded.
  The default ``48,64,48`` holds every MSD hippocampus volume (at most
  47 x 59 x 43 voxels in D, H, W) without any crop; it is divisible by 16.
* Intensity: per volume and channel, clipped to its 0.5 and 99.5 percentiles
  (over all voxels, before cropping) and rescaled to [0, 1]; float32.
* Masks: integer classes as uint8 ``(D, H, W)``; no ``labels`` are written, so
  the split is stratified by mask emptiness (:func:`strata_for`).
* Patient ids: the case id (file name without ``.nii.gz``).
* Near-duplicates (``--duplicates group|drop|keep``, see
  :mod:`benchmark.data.duplicates`): the signature is the stored volume (first
  channel, after crop/pad and intensity scaling) area-averaged to 16^3 (and a
  4x4x5 dHash); the default rule is thumbnail correlation >= 0.99. A coarse
  dHash does not separate cropped, zero-padded volumes of one anatomy (on MSD
  hippocampus thousands of unrelated pairs are within Hamming 3), and the
  largest correlation between two different hippocampus cases is 0.97, so
  0.99 only joins near-identical volumes (none on MSD hippocampus). ``drop``
  hashes in a first pass (volumes are read twice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from tqdm import tqdm

from benchmark.core.errors import DataError
from benchmark.core.io import check_output_path
from benchmark.data import duplicates as dup
from benchmark.data.converters.base import CONVERTERS, Converter, natural_key
from benchmark.data.h5format import DatasetMeta, H5Writer
from benchmark.data.splits import make_split, split_units, strata_for

DEFAULT_SHAPE = (48, 64, 48)
PERCENTILES = (0.5, 99.5)
SUFFIXES = (".nii.gz", ".nii")
HIPPOCAMPUS_CLASSES = ["background", "anterior", "posterior"]
CITATION = (
    "Antonelli M. et al., The Medical Segmentation Decathlon, Nature Communications 13 (2022) "
    "4128; Simpson A. et al., arXiv:1902.09063"
)


def parse_shape(value: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """``"D,H,W"`` or a sequence of three positive ints as a tuple."""
    parts = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"shape must be three positive integers D,H,W, got {value!r}")
    return parts[0], parts[1], parts[2]


def case_id(path: Path) -> str | None:
    """Case id of a NIfTI file name, or None for hidden and non-NIfTI files."""
    if path.name.startswith("."):
        return None
    return next((path.name[: -len(s)] for s in SUFFIXES if path.name.endswith(s)), None)


def find_cases(src: Path) -> list[tuple[str, Path, Path]]:
    """Pairs ``(case, image, label)`` under ``imagesTr`` / ``labelsTr``, naturally sorted."""
    if not src.exists():
        raise DataError(f"{src}: source folder does not exist")
    found: dict[str, dict[str, Path]] = {}
    for sub in ("imagesTr", "labelsTr"):
        folder = src / sub
        if not folder.is_dir():
            raise DataError(f"{folder}: folder missing (expected imagesTr/ and labelsTr/)")
        found[sub] = {c: p for p in folder.iterdir() if (c := case_id(p)) is not None}
    if not found["imagesTr"]:
        raise DataError(f"{src / 'imagesTr'}: no images found (*.nii.gz)")
    for sub, other in (("imagesTr", "labelsTr"), ("labelsTr", "imagesTr")):
        orphans = sorted(set(found[sub]) - set(found[other]), key=natural_key)
        if orphans:
            p = found[sub][orphans[0]]
            raise DataError(f"{p}: no matching file in {other}/ ({len(orphans)} unpaired)")
    cases = sorted(found["imagesTr"], key=natural_key)
    return [(c, found["imagesTr"][c], found["labelsTr"][c]) for c in cases]


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float], tuple[int, ...]]:
    """Canonical (RAS+) array as (C, D, H, W) float32, its (D, H, W) spacing, raw shape."""
    try:
        img: Any = nib.load(path)
        raw_shape = tuple(int(s) for s in img.shape)
        can = nib.as_closest_canonical(img)
        data = np.asarray(can.dataobj, dtype=np.float32)
        zooms = [float(z) for z in can.header.get_zooms()[:3]]
    except Exception as exc:  # nibabel raises many types for bad files
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable or truncated NIfTI file ({reason})") from None
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: expected a 3D or 4D volume, got shape {raw_shape}")
    return data.transpose(3, 2, 1, 0), (zooms[2], zooms[1], zooms[0]), raw_shape


def normalise(data: np.ndarray) -> np.ndarray:
    """Per channel: clip to the 0.5-99.5 percentiles and rescale to [0, 1]."""
    out = np.zeros_like(data, dtype=np.float32)
    for c, chan in enumerate(data):
        lo, hi = np.percentile(chan, PERCENTILES)
        if hi > lo:
            out[c] = np.clip((chan - lo) / (hi - lo), 0.0, 1.0)
    return out


def crop_or_pad(
    data: np.ndarray, mask: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop (around the foreground centre) or zero-pad (C, *S) and (*S) to ``shape``."""
    nz = np.nonzero(mask)
    src_sl: list[slice] = []
    dst_sl: list[slice] = []
    for ax, (size, target) in enumerate(zip(mask.shape, shape, strict=True)):
        if size >= target:
            centre = (nz[ax].min() + nz[ax].max() + 1) / 2 if nz[0].size else size / 2
            start = int(min(max(round(centre - target / 2), 0), size - target))
            src_sl.append(slice(start, start + target))
            dst_sl.append(slice(0, target))
        else:
            before = (target - size) // 2
            src_sl.append(slice(0, size))
            dst_sl.append(slice(before, before + size))
    out_img = np.zeros((data.shape[0], *shape), dtype=np.float32)
    out_mask = np.zeros(shape, dtype=np.uint8)
    out_img[(slice(None), *dst_sl)] = data[(slice(None), *src_sl)]
    out_mask[tuple(dst_sl)] = mask[tuple(src_sl)]
    return out_img, out_mask


def read_dataset_json(src: Path) -> dict[str, Any]:
    """``dataset.json`` contents, or ``{}`` if absent."""
    path = src / "dataset.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object")
    return info


@CONVERTERS.register("msd", aliases=("nifti",))
class MSDConverter(Converter):
    """Medical Segmentation Decathlon ``imagesTr``/``labelsTr`` NIfTI volumes.

    Args:
        shape: Target ``(D, H, W)`` (or ``"D,H,W"``).
        seed: Split seed.
        val_fraction: Approximate validation fraction.
        test_fraction: Approximate test fraction.
        dataset_name: Dataset name (default: ``dataset.json`` name, else the folder name).
        modality: Imaging modality (default: from ``dataset.json``, else ``MRI``).
        duplicates: Near-duplicate policy ``group`` (default), ``drop`` or ``keep``.
        dup_rule: Pair rule ``corr`` (default), ``dhash+corr`` or ``dhash``.
        dup_hamming: Largest dHash Hamming distance of a pair (0-64; dHash rules only).
        dup_corr: Smallest thumbnail correlation of a pair (in (0, 1], default 0.99).
    """

    description: ClassVar[str] = "Medical Segmentation Decathlon imagesTr/labelsTr NIfTI volumes"
    version: ClassVar[str] = "2"  # 2: near-duplicate groups (policy, split units)
    dims: ClassVar[int] = 3

    @classmethod
    def count_images(cls, src: Path) -> int | None:
        return len(list((Path(src) / "imagesTr").glob("*.nii*"))) or None

    def __init__(
        self,
        *,
        shape: str | tuple[int, ...] | list[int] = DEFAULT_SHAPE,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        dataset_name: str | None = None,
        modality: str | None = None,
        duplicates: str | None = None,
        dup_rule: str | None = None,
        dup_hamming: int | None = None,
        dup_corr: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.dup = dup.parse_options(duplicates, dup_rule, dup_hamming, dup_corr, dup.DEFAULTS_3D)
        self.shape = parse_shape(shape)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.dataset_name = dataset_name
        self.modality = modality

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--shape``, split options, ``--dataset-name`` and ``--modality``."""
        default = ",".join(map(str, DEFAULT_SHAPE))
        parser.add_argument("--shape", default=default, help=f"D,H,W (default {default})")
        parser.add_argument("--seed", type=int, default=0, help="split seed")
        parser.add_argument("--val-fraction", type=float, default=0.15)
        parser.add_argument("--test-fraction", type=float, default=0.2)
        parser.add_argument("--dataset-name", default=None, help="dataset name")
        parser.add_argument("--modality", default=None)
        dup.add_arguments(parser, dup.DEFAULTS_3D)

    def _process(
        self, ipath: Path, lpath: Path, channels: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
        """Stored image and mask of one case, its uncropped mask and its spacing."""
        data, spacing, raw = load_volume(ipath)
        ldata, _, lraw = load_volume(lpath)
        if lraw[:3] != raw[:3] or ldata.shape[0] != 1:
            raise DataError(f"{lpath}: label shape {lraw} differs from image shape {raw[:3]}")
        label = ldata[0]
        if (label < 0).any() or (label > 255).any() or (np.mod(label, 1) != 0).any():
            raise DataError(f"{lpath}: labels must be integers in 0..255")
        if data.shape[0] != channels:
            raise DataError(f"{ipath}: {data.shape[0]} channels, expected {channels}")
        mask = label.astype(np.uint8)
        img, out_mask = crop_or_pad(normalise(data), mask, self.shape)
        return img, out_mask, mask, spacing

    def convert(self, src: Path, out: Path, *, overwrite: bool = False) -> Path:
        """Convert the folder ``src`` into ``out``; see the module docstring."""
        src, out = Path(src), Path(out)
        cases = find_cases(src)
        check_output_path(out, overwrite)
        info = read_dataset_json(src)
        first, _, _ = load_volume(cases[0][1])
        channels = first.shape[0]
        mods = info.get("modality")
        modality = self.modality or (
            " + ".join(map(str, mods.values())) if isinstance(mods, dict) else None
        )
        if isinstance(info.get("labels"), dict):
            lab = {int(k): str(v).lower() for k, v in info["labels"].items()}
            mask_names: list[str] | None = [lab.get(i, f"label_{i}") for i in range(max(lab) + 1)]
        elif cases[0][0].lower().startswith("hippocampus"):
            mask_names = list(HIPPOCAMPUS_CLASSES)
        else:
            mask_names = None
        meta = DatasetMeta(
            name=self.dataset_name or str(info.get("name") or src.resolve().name).lower(),
            modality=modality or "MRI",
            mask_class_names=mask_names,
            source=f"Medical Segmentation Decathlon, http://medicaldecathlon.com ({src.name})",
            licence=str(info.get("licence") or info.get("license") or "CC BY-SA 4.0"),
            citation=CITATION,
            converter=type(self).__name__,
            converter_version=self.version,
        )
        names = [ipath.relative_to(src).as_posix() for _, ipath, _ in cases]
        report: dup.DuplicateReport | None = None
        sigs = dup.Signatures(3)
        if self.dup.policy == "drop":  # a hashing pass first: the file holds the kept only
            for _, ipath, lpath in tqdm(cases, desc="hash", disable=None):
                sigs.add(self._process(ipath, lpath, channels)[0])
            report = dup.analyse(sigs, self.dup)
            cases = [cases[i] for i in report.keep.tolist()]
        hash_while_writing = report is None
        n = len(cases)
        empty = np.zeros(n, dtype=bool)
        spacings: list[tuple[float, float, float]] = []
        fg_total = fg_lost = cropped = 0
        lost_cases: list[str] = []
        with H5Writer(
            out,
            n=n,
            image_shape=(channels, *self.shape),
            meta=meta,
            image_dtype=np.float32,
            has_masks=True,
            label_shape=None,
            overwrite=overwrite,
        ) as writer:
            for i, (case, ipath, lpath) in enumerate(tqdm(cases, desc="convert", disable=None)):
                img, out_mask, mask, spacing = self._process(ipath, lpath, channels)
                if hash_while_writing:
                    sigs.add(img)
                before, after = int((mask > 0).sum()), int((out_mask > 0).sum())
                fg_total += before
                fg_lost += before - after
                if before > after:
                    lost_cases.append(case)
                cropped += any(s > t for s, t in zip(mask.shape, self.shape, strict=True))
                empty[i] = after == 0
                spacings.append(spacing)
                writer.write(
                    i,
                    img,
                    mask=out_mask,
                    patient_id=case,
                    source_file=ipath.relative_to(src).as_posix(),
                )
            pids = np.array([c for c, _, _ in cases], dtype=object)
            strata = strata_for(masks_empty=empty)
            if report is None:  # group / keep: hashed while writing
                report = dup.analyse(sigs, self.dup)
            groups = report.kept_groups
            units = split_units(pids, groups) if self.dup.policy == "group" else pids
            writer.set_split(
                make_split(strata, units, self.seed, self.val_fraction, self.test_fraction)
            )
            writer.set_duplicates(
                groups, report.record(names, dup.SIGNATURE_3D), sigs.subset(report.keep).hashes
            )
            sp = np.array(spacings)
            meta.spacing = np.median(sp, axis=0).tolist()
            meta.extra = {
                "shape": list(self.shape),
                "axis_order": "canonical RAS+ (X, Y, Z) transposed to (D, H, W) = (Z, Y, X)",
                "resize_policy": (
                    "no resampling; per axis crop (window centred on the foreground bounding "
                    "box, else the volume centre, kept inside the volume) or symmetric zero pad"
                ),
                "intensity_policy": "per volume and channel: clip to 0.5/99.5 percentiles, "
                "rescale to [0, 1], float32",
                "spacing_policy": "native spacing kept; meta spacing = per-axis median (D, H, W)",
                "spacing_range": {"min": sp.min(0).tolist(), "max": sp.max(0).tolist()},
                "cropped_volumes": int(cropped),
                "foreground_voxels_total": fg_total,
                "foreground_voxels_lost": fg_lost,
                "foreground_fraction_lost": fg_lost / fg_total if fg_total else 0.0,
                "volumes_with_lost_foreground": lost_cases,
                "empty_masks": int(empty.sum()),
                "patient_id_policy": "case id (file name without .nii.gz)",
                "split_policy": {
                    "method": "make_split: stratified by mask emptiness, grouped by case id"
                    + (" and near-duplicate group" if self.dup.policy == "group" else ""),
                    "seed": self.seed,
                    "val_fraction": self.val_fraction,
                    "test_fraction": self.test_fraction,
                },
            }
        return out
