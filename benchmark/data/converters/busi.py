"""Converters for class-per-folder 2D images with lesion masks: ``folder`` and ``busi``.

Layout (the original BUSI layout)::

    SRC/<class>/<name>.png             one image; its class is the folder name
    SRC/<class>/<name>_mask.png        its lesion mask (optional for ``folder``)
    SRC/<class>/<name>_mask_1.png ...  further masks of the same image, one per lesion

Policies (recorded in ``meta.extra`` of the output):

* Images are read with Pillow and converted to one grey channel (mode ``L``,
  ITU-R 601-2 luma). BUSI stores greyscale ultrasound as RGB with R = G = B, so
  this is exact. Stored as uint8 ``(1, size, size)``.
* Masks: every mask file is converted to ``L`` and thresholded at 128
  (``>= 128`` is lesion), which undoes the grey edges left by earlier
  interpolation; the masks of one image are merged as their union. Stored as
  uint8 ``(size, size)`` with values 0/1. An image's masks must have its size.
* Resize: the whole image is stretched to ``size x size`` (no crop, aspect
  ratio not kept) with Pillow's bilinear filter, which is antialiased when
  shrinking. The binary union mask is resized as a 0/255 image with the same
  bilinear filter and thresholded again at 128, so the lesion boundary follows
  the image. Images already ``size x size`` are not resampled.
* Patient ids: BUSI publishes none, so each image is its own patient id (its
  file stem, e.g. ``"benign (12)"``). Images of one woman may therefore fall in
  different splits, which can make test results optimistic.
* Near-duplicates (``--duplicates group|drop|keep``, see
  :mod:`benchmark.data.duplicates`): every source image (grey, before any
  resize) gets a 64-bit dHash and a 32x32 thumbnail; pairs with dHash Hamming
  <= 6 and thumbnail correlation >= 0.85 are joined into groups (union-find).
  ``group`` (default) splits a group with all its patients as one unit;
  ``drop`` keeps the first image of each group and drops the rest, and drops
  groups whose members have different classes entirely; ``keep`` only records
  the groups. Groups, rule and conflicts are stored in the file. On BUSI the
  default rule finds 199 pairs in 138 groups (306 images), 8 of them with
  conflicting classes, e.g. the byte-identical ``benign (433)`` and
  ``malignant (145)``.
* Split: there is no official split; :func:`~benchmark.data.splits.make_split`
  stratifies by class, groups by patient id (joined with near-duplicate groups
  under ``group``) and is seeded (``--seed``).
* Files are sorted naturally (``benign (2)`` before ``benign (10)``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmark.core.errors import DataError
from benchmark.core.io import check_output_path
from benchmark.data import duplicates as dup
from benchmark.data.converters.base import CONVERTERS, Converter, natural_key, parse_names
from benchmark.data.h5format import DatasetMeta, H5Writer
from benchmark.data.splits import make_split, split_units

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128
_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
RESIZE_POLICY = (
    "whole image stretched to size x size (no crop, aspect ratio not kept) with PIL bilinear "
    "(antialiased when shrinking); mask: each file thresholded at 128, union, resized as 0/255 "
    "with PIL bilinear, thresholded at 128; images already size x size are not resampled"
)
PATIENT_ID_POLICY = "no patient ids published: each image is its own patient id (its file stem)"


def open_image(path: Path) -> Image.Image:
    """Read an image fully as one grey channel; unreadable files raise DataError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable or truncated image ({reason})") from None


@dataclass
class Sample:
    """One image file with its mask files, class index and patient id."""

    image: Path
    label: int
    masks: list[Path] = field(default_factory=list)


def scan_folder(src: Path, classes: list[str] | None) -> tuple[list[str], list[Sample]]:
    """Find ``<class>/<name>.<ext>`` images and their ``_mask*`` files under ``src``."""
    if not src.exists():
        raise DataError(f"{src}: source folder does not exist")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (expected <class>/<name>.png images)")
    if classes is None:
        classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{src}: no images found (expected <class>/<name>.png subfolders)")
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        folder = src / cls
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder {cls!r} does not exist")
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in folder.iterdir():
            if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            m = _MASK_RE.match(p.stem)
            if m:
                masks.setdefault(m["stem"], []).append((int(m["k"] or 0), p))
            elif p.stem in images:
                raise DataError(f"{p}: two images named {p.stem!r} in {folder}")
            else:
                images[p.stem] = p
        if not images:
            raise DataError(f"{folder}: no images found")
        for stem, found in masks.items():
            if stem not in images:
                raise DataError(f"{found[0][1]}: mask without a matching image {stem!r}")
        for stem in sorted(images, key=natural_key):
            mask_paths = [p for _, p in sorted(masks.get(stem, []))]
            samples.append(Sample(images[stem], label, mask_paths))
    return classes, samples


def load_sample(
    sample: Sample, size: int, signatures: dup.Signatures | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Image (1, size, size) uint8, union mask (size, size) 0/1 or None, original (W, H).

    If ``signatures`` is given, the near-duplicate signature of the grey source
    image (before any resize) is appended to it.
    """
    img = open_image(sample.image)
    if signatures is not None:
        signatures.add(np.asarray(img))
    union: np.ndarray | None = None
    for mp in sample.masks:
        m = open_image(mp)
        if m.size != img.size:
            raise DataError(
                f"{mp}: mask size {m.size[0]}x{m.size[1]} differs from image size "
                f"{img.size[0]}x{img.size[1]} of {sample.image.name}"
            )
        fg = np.asarray(m) >= MASK_THRESHOLD
        union = fg if union is None else union | fg
    original = img.size
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        if union is not None:
            mimg = Image.fromarray(union.astype(np.uint8) * 255)
            union = np.asarray(mimg.resize((size, size), Image.Resampling.BILINEAR))
            union = union >= MASK_THRESHOLD
    image = np.asarray(img, dtype=np.uint8)[None]
    return image, None if union is None else union.astype(np.uint8), original


@CONVERTERS.register("folder")
class FolderConverter(Converter):
    """Class-per-subfolder 2D images, optionally with ``<name>_mask*.png`` masks.

    Args:
        size: Output side length in pixels.
        seed: Split seed.
        val_fraction: Approximate validation fraction.
        test_fraction: Approximate test fraction.
        classes: Class names in label order (default: sorted folder names).
        require_masks: Every image must have a mask (default: masks are written
            if any exist, and then every image must have one).
        no_masks: Ignore mask files.
        dataset_name: Dataset name (default: the source folder name).
        modality: Imaging modality.
        duplicates: Near-duplicate policy ``group`` (default), ``drop`` or ``keep``.
        dup_rule: Pair rule ``dhash+corr`` (default), ``dhash`` or ``corr``.
        dup_hamming: Largest dHash Hamming distance of a pair (0-64, default 6).
        dup_corr: Smallest thumbnail correlation of a pair (in (0, 1], default 0.85).
    """

    description: ClassVar[str] = "class-per-subfolder 2D images with optional <name>_mask*.png"
    version: ClassVar[str] = "2"  # 2: near-duplicate groups (policy, split units)

    @classmethod
    def count_images(cls, src: Path) -> int | None:
        src = Path(src)
        if not src.is_dir():
            return None
        return (
            sum(
                1
                for p in src.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.name
            )
            or None
        )

    NAME: ClassVar[str | None] = None
    DEFAULT_CLASSES: ClassVar[list[str] | None] = None
    REQUIRE_MASKS: ClassVar[bool] = False
    MODALITY: ClassVar[str] = "unknown"
    SOURCE: ClassVar[str] = ""
    LICENCE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""

    def __init__(
        self,
        *,
        size: int = 256,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        classes: str | list[str] | None = None,
        require_masks: bool | None = None,
        no_masks: bool = False,
        dataset_name: str | None = None,
        modality: str | None = None,
        duplicates: str | None = None,
        dup_rule: str | None = None,
        dup_hamming: int | None = None,
        dup_corr: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.dup = dup.parse_options(duplicates, dup_rule, dup_hamming, dup_corr, dup.DEFAULTS_2D)
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.classes = parse_names(classes) or self.DEFAULT_CLASSES
        self.require_masks = self.REQUIRE_MASKS if require_masks is None else bool(require_masks)
        self.no_masks = bool(no_masks) and not self.require_masks
        self.dataset_name = dataset_name or self.NAME
        self.modality = modality or self.MODALITY

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--size``, split options, ``--classes`` and (``folder`` only) mask options."""
        parser.add_argument("--size", type=int, default=256, help="output side length (px)")
        parser.add_argument("--seed", type=int, default=0, help="split seed")
        parser.add_argument("--val-fraction", type=float, default=0.15)
        parser.add_argument("--test-fraction", type=float, default=0.2)
        default = ",".join(cls.DEFAULT_CLASSES) if cls.DEFAULT_CLASSES else "sorted folder names"
        parser.add_argument(
            "--classes", default=None, help=f"comma-separated class order (default: {default})"
        )
        if not cls.REQUIRE_MASKS:
            group = parser.add_mutually_exclusive_group()
            group.add_argument("--require-masks", action="store_true", default=None)
            group.add_argument("--no-masks", action="store_true", help="ignore mask files")
            parser.add_argument(
                "--dataset-name", default=None, help="dataset name (default: folder)"
            )
            parser.add_argument("--modality", default=None)
        dup.add_arguments(parser, dup.DEFAULTS_2D)

    def convert(self, src: Path, out: Path, *, overwrite: bool = False) -> Path:
        """Convert the folder ``src`` into ``out``; see the module docstring."""
        src, out = Path(src), Path(out)
        classes, samples = scan_folder(src, self.classes)
        check_output_path(out, overwrite)
        if self.no_masks:
            has_masks = False
        else:
            has_masks = self.require_masks or any(s.masks for s in samples)
            missing = [s.image for s in samples if not s.masks]
            if has_masks and missing:
                raise DataError(
                    f"{missing[0]}: image has no {missing[0].stem}_mask file "
                    f"({len(missing)} of {len(samples)} images lack masks)"
                )
        names = [s.image.relative_to(src).as_posix() for s in samples]
        all_labels = np.array([s.label for s in samples], dtype=np.int64)
        report: dup.DuplicateReport | None = None
        sigs = dup.Signatures(2)
        if self.dup.policy == "drop":  # a hashing pass first: the file holds the kept only
            for s in tqdm(samples, desc=f"hash {src.name}", disable=None):
                sigs.add(np.asarray(open_image(s.image)))
            report = dup.analyse(sigs, self.dup, all_labels)
            samples = [samples[i] for i in report.keep.tolist()]
        labels = all_labels if report is None else all_labels[report.keep]
        pids = np.array([s.image.stem for s in samples], dtype=object)
        counts = Counter(labels.tolist())
        unit = "patient id and near-duplicate group" if self.dup.policy == "group" else "patient id"
        meta = DatasetMeta(
            name=self.dataset_name or src.resolve().name,
            modality=self.modality,
            class_names=list(classes),
            mask_class_names=["background", "lesion"] if has_masks else None,
            source=self.SOURCE or str(src),
            licence=self.LICENCE,
            citation=self.CITATION,
            converter=type(self).__name__,
            converter_version=self.version,
            extra={
                "size": self.size,
                "image_policy": "PIL convert('L') (ITU-R 601-2 luma), uint8",
                "mask_policy": "each mask file >= 128 is lesion; union of _mask, _mask_1, ...",
                "resize_policy": RESIZE_POLICY,
                "patient_id_policy": PATIENT_ID_POLICY,
                "split_policy": {
                    "method": f"make_split: stratified by class, grouped by {unit}",
                    "seed": self.seed,
                    "val_fraction": self.val_fraction,
                    "test_fraction": self.test_fraction,
                },
                "class_counts": {c: counts.get(i, 0) for i, c in enumerate(classes)},
                "images_with_several_masks": sum(len(s.masks) > 1 for s in samples),
            },
        )
        sizes: list[tuple[int, int]] = []
        hash_while_writing = report is None
        with H5Writer(
            out,
            n=len(samples),
            image_shape=(1, self.size, self.size),
            meta=meta,
            image_dtype=np.uint8,
            has_masks=has_masks,
            label_shape=(),
            overwrite=overwrite,
        ) as writer:
            for i, s in enumerate(tqdm(samples, desc=f"convert {src.name}", disable=None)):
                image, mask, original = load_sample(
                    s, self.size, sigs if hash_while_writing else None
                )
                sizes.append(original)
                writer.write(
                    i,
                    image,
                    mask=mask if has_masks else None,
                    label=s.label,
                    patient_id=s.image.stem,
                    source_file=s.image.relative_to(src).as_posix(),
                )
            if report is None:  # group / keep: hashed while writing
                report = dup.analyse(sigs, self.dup, all_labels)
            hashes = sigs.subset(report.keep).hashes
            groups = report.kept_groups
            units = split_units(pids, groups) if self.dup.policy == "group" else pids
            writer.set_split(
                make_split(labels, units, self.seed, self.val_fraction, self.test_fraction)
            )
            writer.set_duplicates(groups, report.record(names, dup.SIGNATURE_2D), hashes)
            arr = np.array(sizes)
            meta.extra["source_sizes_wh"] = {"min": arr.min(0).tolist(), "max": arr.max(0).tolist()}
            meta.extra["resized_images"] = int(sum(sz != (self.size, self.size) for sz in sizes))
        return out


@CONVERTERS.register("busi")
class BusiConverter(FolderConverter):
    """BUSI breast ultrasound (Al-Dhabyani et al. 2020) in its original folder layout."""

    description: ClassVar[str] = "BUSI breast ultrasound: benign/malignant/normal with masks"
    version: ClassVar[str] = "2"  # 2: near-duplicate groups (policy, split units)
    NAME: ClassVar[str | None] = "busi"
    DEFAULT_CLASSES: ClassVar[list[str] | None] = ["benign", "malignant", "normal"]
    REQUIRE_MASKS: ClassVar[bool] = True
    MODALITY: ClassVar[str] = "ultrasound"
    SOURCE: ClassVar[str] = (
        "Dataset of breast ultrasound images (BUSI), Baheya Hospital, Cairo; "
        "https://doi.org/10.1016/j.dib.2019.104863"
    )
    LICENCE: ClassVar[str] = "CC BY 4.0"
    CITATION: ClassVar[str] = (
        "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
        "Data in Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863"
    )
