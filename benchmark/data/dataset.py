"""PyTorch reader for sslbench HDF5 dataset files."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.core.errors import DataError
from benchmark.data.h5format import SPLITS, decode_attrs, open_h5, read_split, read_strings


class H5Dataset(Dataset[dict[str, Any]]):
    """Map-style dataset over an sslbench ``.h5`` file.

    The HDF5 file is opened lazily, once per process, so the dataset can be used
    with ``DataLoader(num_workers > 0)``: each worker opens its own handle after
    the fork. With ``in_memory=True`` the selected samples are read once into
    numpy arrays (sensible for the small files used on a CPU).

    Each item is a dict with ``image`` (float32 tensor (C, *spatial), values in
    [0, 1]), ``index`` (position in the file), ``patient_id`` (str) and, when the
    file has them and they are requested, ``label`` (int64 scalar, or float32
    (K,) for multi-label) and ``mask`` (int64 tensor (*spatial)).

    Args:
        path: Dataset file.
        split: ``"train"``, ``"val"``, ``"test"``, a list of them, or None for all.
        indices: Explicit file indices (applied after ``split``: they must belong
            to it). Used for label-fraction subsets.
        in_memory: Load the selected samples into RAM at construction.
        transform: Optional callable applied to each item dict.
        keys: Which optional fields to return (``"label"``, ``"mask"``).
    """

    def __init__(
        self,
        path: str | Path,
        split: str | Sequence[str] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        in_memory: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        keys: Sequence[str] = ("label", "mask"),
    ) -> None:
        self.path = Path(path)
        self.transform = transform
        with open_h5(self.path) as f:
            self.meta = decode_attrs(f.attrs)
            self.file_split = read_split(f)
            self.all_patient_ids = read_strings(f, "patient_ids")
            self.has_labels = "labels" in f
            self.has_masks = "masks" in f
            all_labels = f["labels"][()] if self.has_labels else None
            self.image_shape = tuple(f["images"].shape[1:])
            self.image_dtype = f["images"].dtype
            n = f["images"].shape[0]
        selected = np.arange(n)
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            bad = [s for s in wanted if s not in SPLITS]
            if bad:
                raise DataError(f"{self.path}: unknown split {bad[0]!r}; use one of {SPLITS}")
            selected = selected[np.isin(self.file_split, wanted)]
            if selected.size == 0:
                raise DataError(f"{self.path}: split {'/'.join(wanted)} has no samples")
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            outside = np.setdiff1d(idx, selected)
            if outside.size:
                raise DataError(
                    f"{self.path}: {outside.size} requested indices are outside the selected "
                    f"split (first: {int(outside[0])})"
                )
            selected = idx
        self.indices = selected
        self.labels = all_labels[selected] if all_labels is not None else None
        self.patient_ids = self.all_patient_ids[selected]
        self.split = self.file_split[selected]
        self.keys = tuple(
            k
            for k in keys
            if (k == "label" and self.has_labels) or (k == "mask" and self.has_masks)
        )
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        if in_memory:
            self.load()

    # -- file handling -------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # never pickle an open handle into a worker
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close the file handle of this process, if open."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def load(self) -> H5Dataset:
        """Read the selected images (and masks) into memory; returns self."""
        if self._images is None:
            f = self._file()
            self._images = self._read_rows(f["images"])
            if "mask" in self.keys:
                self._masks = self._read_rows(f["masks"])
        return self

    def _read_rows(self, dset: h5py.Dataset) -> np.ndarray:
        # h5py fancy indexing needs increasing unique indices and is slow for
        # many of them: read everything when most rows are wanted.
        uniq, inverse = np.unique(self.indices, return_inverse=True)
        if uniq.size * 4 >= dset.shape[0]:
            return np.asarray(dset[()])[self.indices]
        return np.asarray(dset[uniq])[inverse]

    @property
    def in_memory(self) -> bool:
        return self._images is not None

    # -- access ---------------------------------------------------------
    def raw_images(self, positions: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Stored images (uint8 or float32, not rescaled) at dataset positions."""
        pos = np.arange(len(self)) if positions is None else np.asarray(positions)
        if self._images is not None:
            return self._images[pos]
        f = self._file()
        return np.stack([f["images"][int(self.indices[p])] for p in pos])

    def to_float(self, images: np.ndarray) -> torch.Tensor:
        """Convert stored images to float32 in [0, 1]."""
        t = torch.from_numpy(np.ascontiguousarray(images))
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, pos: int) -> dict[str, Any]:
        if pos < 0:
            pos += len(self)
        if not 0 <= pos < len(self):
            raise IndexError(pos)
        index = int(self.indices[pos])
        if self._images is not None:
            image = self._images[pos]
        else:
            image = self._file()["images"][index]
        item: dict[str, Any] = {
            "image": self.to_float(image),
            "index": index,
            "patient_id": str(self.patient_ids[pos]),
        }
        if "label" in self.keys and self.labels is not None:
            lab = self.labels[pos]
            item["label"] = (
                torch.as_tensor(lab, dtype=torch.int64)
                if np.ndim(lab) == 0
                else torch.as_tensor(lab, dtype=torch.float32)
            )
        if "mask" in self.keys:
            mask = self._masks[pos] if self._masks is not None else self._file()["masks"][index]
            item["mask"] = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        if self.transform is not None:
            item = self.transform(item)
        return item

    def __repr__(self) -> str:
        return (
            f"H5Dataset({str(self.path)!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"keys={self.keys}, in_memory={self.in_memory})"
        )
