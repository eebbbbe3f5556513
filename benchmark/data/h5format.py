"""Writing and opening sslbench HDF5 dataset files.

The layout is documented in ``benchmark/data/FORMAT.md``. In short, one file per
dataset holds ``images`` (N, C, *spatial), optional ``masks`` (N, *spatial),
optional ``labels`` (N,) or (N, K), ``patient_ids`` (N,), ``split`` (N,) and
``source_files`` (N,), optionally near-duplicate ``duplicate_groups`` (N,) and
``dhash`` (N,) with their ``duplicates`` attribute, plus provenance attributes
and a content hash.

:class:`H5Writer` writes to a temporary sibling file and renames it into place
only after every sample, the split and the content hash are written, so an
interrupted conversion leaves no file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from benchmark import __version__
from benchmark.core.errors import DataError
from benchmark.core.io import check_output_path, partial_path, provenance

FORMAT_VERSION = "1.0"
SPLITS = ("train", "val", "test")
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_STR = h5py.string_dtype("utf-8")
#: Attributes stored as JSON strings (lists, dicts or None).
JSON_ATTRS = (
    "spacing",
    "class_names",
    "mask_class_names",
    "extra",
    "provenance",
    "duplicates",
)
#: Duplicate policies under which ``duplicate_groups`` define the split unit.
GROUPING_POLICIES = ("group",)


@dataclass
class DatasetMeta:
    """Descriptive attributes of a dataset file.

    Attributes:
        name: Short dataset name, e.g. ``"busi"``.
        modality: Imaging modality, e.g. ``"ultrasound"`` or ``"MRI"``.
        spacing: Physical pixel/voxel size per spatial axis (mm), or None if unknown.
        class_names: Names of the integer ``labels`` (index = label), or None.
        mask_class_names: Names of the integer mask values (index = value), or None.
        source: Where the original data came from (URL or folder description).
        licence: Licence of the original data.
        citation: Reference to cite when reporting results.
        converter: Name of the converter that wrote the file.
        converter_version: Version of that converter's output policy.
        extra: Free-form JSON-serialisable policies (resize, split, intensity, ...).
    """

    name: str
    modality: str
    spacing: list[float] | None = None
    class_names: list[str] | None = None
    mask_class_names: list[str] | None = None
    source: str = ""
    licence: str = ""
    citation: str = ""
    converter: str = ""
    converter_version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)


def _sample_digest(
    image: np.ndarray, mask: np.ndarray | None, label: np.ndarray | None, patient_id: str
) -> bytes:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(image).tobytes())
    if mask is not None:
        h.update(np.ascontiguousarray(mask).tobytes())
    if label is not None:
        h.update(np.ascontiguousarray(label, dtype=np.float64).tobytes())
    h.update(patient_id.encode("utf-8"))
    return h.digest()


def _combine_digests(
    header: str,
    digests: list[bytes],
    split: np.ndarray,
    duplicates: tuple[str, np.ndarray] | None = None,
) -> str:
    h = hashlib.sha256(header.encode("utf-8"))
    for d in digests:
        h.update(d)
    h.update("|".join(str(s) for s in split).encode("ascii"))
    if duplicates is not None:  # files without duplicate groups hash as before
        policy, groups = duplicates
        h.update(f"|duplicates:{policy}|".encode())
        h.update(np.ascontiguousarray(groups, dtype="<i8").tobytes())
    return h.hexdigest()


def _header(image_shape: tuple[int, ...], dtype: np.dtype, has_mask: bool, label_shape: Any) -> str:
    return f"sslbench-h5/{FORMAT_VERSION};{image_shape};{dtype.str};{has_mask};{label_shape}"


class H5Writer:
    """Write an sslbench dataset file sample by sample, atomically.

    Args:
        path: Final output path.
        n: Number of samples.
        image_shape: Per-sample shape ``(C, H, W)`` or ``(C, D, H, W)``.
        meta: Descriptive attributes.
        image_dtype: ``uint8`` (0..255) or ``float32`` (values in [0, 1]).
        has_masks: Whether a ``masks`` dataset of integer classes is written.
        label_shape: None for no labels, ``()`` for integer class labels,
            ``(K,)`` for multi-label 0/1 vectors.
        overwrite: Replace an existing output file.
        compression: HDF5 filter; ``"lzf"`` (fast) or ``"gzip"``.

    Use as a context manager; the file appears under ``path`` only if the block
    finishes without an exception and every sample was written.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n: int,
        image_shape: tuple[int, ...],
        meta: DatasetMeta,
        image_dtype: Any = np.uint8,
        has_masks: bool = False,
        label_shape: tuple[int, ...] | None = (),
        overwrite: bool = False,
        compression: str = "lzf",
    ) -> None:
        if n <= 0:
            raise DataError(f"{path}: refusing to write an empty dataset (0 samples)")
        self.path = check_output_path(path, overwrite)
        self.n = n
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) not in (3, 4):
            raise ValueError(f"image_shape must be (C, H, W) or (C, D, H, W), got {image_shape}")
        self.dtype = np.dtype(image_dtype)
        if self.dtype not in IMAGE_DTYPES:
            raise ValueError(f"image dtype must be uint8 or float32, got {self.dtype}")
        self.meta = meta
        self.has_masks = has_masks
        self.label_shape = label_shape
        self._tmp = partial_path(self.path)
        try:
            self._f = h5py.File(self._tmp, "w")
            chunk = (1, *self.image_shape)
            self._f.create_dataset(
                "images",
                shape=(n, *self.image_shape),
                dtype=self.dtype,
                chunks=chunk,
                compression=compression,
                shuffle=compression == "gzip",
            )
            if has_masks:
                spatial = self.image_shape[1:]
                self._f.create_dataset(
                    "masks",
                    shape=(n, *spatial),
                    dtype=np.uint8,
                    chunks=(1, *spatial),
                    compression=compression,
                )
            if label_shape is not None:
                ldtype = np.int64 if label_shape == () else np.uint8
                self._f.create_dataset("labels", shape=(n, *label_shape), dtype=ldtype)
            self._images = self._f["images"]
            self._masks: Any = self._f["masks"] if has_masks else None
            self._labels: Any = self._f["labels"] if label_shape is not None else None
        except BaseException:
            self.abort()
            raise
        self._pids: list[str] = [""] * n
        self._sources: list[str] = [""] * n
        self._split: np.ndarray = np.array([""] * n, dtype=object)
        self._digests: list[bytes | None] = [None] * n
        self._dup_groups: np.ndarray | None = None
        self._dhash: np.ndarray | None = None
        self._dup_info: dict[str, Any] | None = None

    def write(
        self,
        i: int,
        image: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        label: int | np.ndarray | None = None,
        patient_id: str = "",
        split: str = "",
        source_file: str = "",
    ) -> None:
        """Write sample ``i``. ``source_file`` is used in error messages too."""
        where = source_file or f"sample {i}"
        image = np.asarray(image)
        if image.shape != self.image_shape:
            raise DataError(f"{where}: image shape {image.shape} != expected {self.image_shape}")
        if self.dtype == np.float32:
            image = image.astype(np.float32, copy=False)
            if not np.isfinite(image).all():
                raise DataError(f"{where}: image contains NaN or infinite values")
            if image.min() < 0.0 or image.max() > 1.0:
                raise DataError(f"{where}: float image values must lie in [0, 1]")
        elif image.dtype != np.uint8:
            raise DataError(f"{where}: image dtype {image.dtype} != uint8")
        self._images[i] = image
        mask_arr = None
        if self.has_masks:
            if mask is None:
                raise DataError(f"{where}: no mask given but this dataset requires masks")
            mask_arr = np.asarray(mask)
            if mask_arr.shape != self.image_shape[1:]:
                raise DataError(
                    f"{where}: mask shape {mask_arr.shape} differs from image shape "
                    f"{self.image_shape[1:]}"
                )
            mask_arr = mask_arr.astype(np.uint8)
            self._masks[i] = mask_arr
        label_arr = None
        if self.label_shape is not None:
            if label is None:
                raise DataError(f"{where}: no label given but this dataset requires labels")
            label_arr = np.asarray(label).reshape(self.label_shape)
            self._labels[i] = label_arr
        if split and split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {SPLITS}")
        self._pids[i] = str(patient_id)
        self._sources[i] = str(source_file)
        self._split[i] = split
        self._digests[i] = _sample_digest(image, mask_arr, label_arr, str(patient_id))

    def set_split(self, split: np.ndarray | list[str]) -> None:
        """Assign the split of every sample (after a split was computed from labels)."""
        arr = np.asarray(split, dtype=object)
        if arr.shape != (self.n,):
            raise ValueError(f"split must have shape ({self.n},), got {arr.shape}")
        bad = set(arr.tolist()) - set(SPLITS)
        if bad:
            raise DataError(f"{self.path}: invalid split names {sorted(bad)}")
        self._split = arr

    def set_duplicates(
        self, groups: np.ndarray, info: dict[str, Any], dhash: np.ndarray | None = None
    ) -> None:
        """Record near-duplicate groups (see FORMAT.md, "Near-duplicate groups").

        Args:
            groups: (N,) int group id per sample, -1 for a sample without duplicates.
            info: The ``duplicates`` attribute; needs at least ``policy``.
            dhash: (N,) uint64 perceptual hash per sample, if computed.
        """
        g = np.asarray(groups, dtype=np.int64)
        if g.shape != (self.n,):
            raise ValueError(f"duplicate groups must have shape ({self.n},), got {g.shape}")
        if "policy" not in info:
            raise ValueError("duplicate info needs a 'policy'")
        if dhash is not None:
            dh = np.asarray(dhash, dtype=np.uint64)
            if dh.shape != (self.n,):
                raise ValueError(f"dhash must have shape ({self.n},), got {dh.shape}")
            self._dhash = dh
        self._dup_groups = g
        self._dup_info = dict(info)

    def _finalize(self) -> None:
        missing = [i for i, d in enumerate(self._digests) if d is None]
        if missing:
            raise DataError(f"{self.path}: {len(missing)} samples were never written")
        if any(s not in SPLITS for s in self._split):
            raise DataError(f"{self.path}: every sample needs a split (train/val/test)")
        f = self._f
        f.create_dataset("patient_ids", data=np.array(self._pids, dtype=object), dtype=_STR)
        f.create_dataset("source_files", data=np.array(self._sources, dtype=object), dtype=_STR)
        f.create_dataset("split", data=np.array(self._split.tolist(), dtype="S5"))
        dup: tuple[str, np.ndarray] | None = None
        if self._dup_groups is not None and self._dup_info is not None:
            f.create_dataset("duplicate_groups", data=self._dup_groups, dtype=np.int64)
            if self._dhash is not None:
                f.create_dataset("dhash", data=self._dhash, dtype=np.uint64)
            dup = (str(self._dup_info["policy"]), self._dup_groups)
        header = _header(self.image_shape, self.dtype, self.has_masks, self.label_shape)
        digests = [d for d in self._digests if d is not None]
        attrs = asdict(self.meta)
        attrs.update(
            format_version=FORMAT_VERSION,
            sslbench_version=__version__,
            spatial_dims=len(self.image_shape) - 1,
            content_hash=_combine_digests(header, digests, self._split, dup),
            provenance=provenance(),
        )
        if self._dup_info is not None:
            attrs["duplicates"] = self._dup_info
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if key in JSON_ATTRS else value

    def close(self) -> Path:
        """Finalise, close and move the file into place; returns the final path."""
        try:
            self._finalize()
            self._f.close()
            self._tmp.replace(self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file, leaving any existing output intact."""
        if hasattr(self, "_f"):
            with contextlib.suppress(Exception):
                self._f.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> H5Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_h5(path: str | Path) -> h5py.File:
    """Open an sslbench dataset read-only with clear errors for bad files."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected an sslbench .h5 file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(f"{p}: not a readable HDF5 file ({exc.__class__.__name__})") from None
    for key in ("images", "patient_ids", "split"):
        if key not in f:
            f.close()
            raise DataError(f"{p}: not an sslbench dataset (missing '{key}')")
    return f


def decode_attrs(attrs: Any) -> dict[str, Any]:
    """HDF5 attributes as plain Python values, JSON attributes decoded."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if key in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def read_meta(path: str | Path) -> dict[str, Any]:
    """Attributes plus array shapes of a dataset file (cheap: reads no images)."""
    with open_h5(path) as f:
        meta = decode_attrs(f.attrs)
        meta["n"] = int(f["images"].shape[0])
        meta["image_shape"] = list(f["images"].shape[1:])
        meta["image_dtype"] = str(f["images"].dtype)
        meta["has_masks"] = "masks" in f
        meta["has_labels"] = "labels" in f
        meta["label_shape"] = list(f["labels"].shape[1:]) if "labels" in f else None
    return meta


def read_split(f: h5py.File) -> np.ndarray:
    """The ``split`` dataset decoded to a numpy array of str."""
    return np.array([s.decode("ascii") for s in f["split"][()]], dtype=object)


def read_strings(f: h5py.File, key: str) -> np.ndarray:
    """A string dataset decoded to a numpy array of str."""
    return np.array(
        [s.decode("utf-8") if isinstance(s, bytes) else s for s in f[key][()]], dtype=object
    )


def read_duplicates(f: h5py.File) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The ``duplicate_groups`` dataset and ``duplicates`` attribute, or (None, None).

    Files written before near-duplicate detection have neither.
    """
    if "duplicate_groups" not in f:
        return None, None
    info = decode_attrs({"duplicates": f.attrs["duplicates"]}) if "duplicates" in f.attrs else {}
    return np.asarray(f["duplicate_groups"][()], dtype=np.int64), info.get("duplicates") or {}


def read_split_units(f: h5py.File) -> np.ndarray:
    """Per sample, the unit that splits and label-fraction subsets keep together.

    The patient id, except under the ``group`` duplicate policy, where a
    near-duplicate group joined with its members' patients is one unit
    (:func:`benchmark.data.splits.split_units`). Files without duplicate groups
    give their patient ids, exactly as before.
    """
    from benchmark.data.splits import split_units

    pids = read_strings(f, "patient_ids")
    groups, info = read_duplicates(f)
    if groups is None or (info or {}).get("policy") not in GROUPING_POLICIES:
        return pids
    return split_units(pids, groups)


def compute_content_hash(path: str | Path) -> str:
    """Recompute a file's content hash from its arrays (to verify integrity)."""
    with open_h5(path) as f:
        n = f["images"].shape[0]
        masks = f["masks"] if "masks" in f else None
        labels = f["labels"][()] if "labels" in f else None
        pids = read_strings(f, "patient_ids")
        label_shape = tuple(f["labels"].shape[1:]) if "labels" in f else None
        digests = [
            _sample_digest(
                f["images"][i],
                masks[i] if masks is not None else None,
                labels[i] if labels is not None else None,
                str(pids[i]),
            )
            for i in range(n)
        ]
        header = _header(
            tuple(f["images"].shape[1:]), f["images"].dtype, masks is not None, label_shape
        )
        groups, info = read_duplicates(f)
        dup = None if groups is None else (str((info or {}).get("policy", "")), groups)
        return _combine_digests(header, digests, read_split(f), dup)
