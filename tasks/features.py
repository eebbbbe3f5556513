"""Preprocessed images and a disk cache of frozen encoder features.

Frozen-feature adapters (``knn``, ``linear``) need the pooled features
``encoder.forward_features(x)`` of every train, val and test image. A sweep over
fractions x seeds would otherwise recompute them for each cell, so features
are extracted *once per encoder for the whole file* (all splits) and cached:

* in memory for the process (the last few feature sets), and
* on disk as ``<cache_dir>/<key>.npz``, written atomically,

where ``key`` is the SHA-256 of the encoder identity, the dataset content
hash, the preprocessing (image size, resize mode, anti-aliasing, input
channels) and :data:`CACHE_VERSION`. The encoder identity is the checkpoint's
weights hash (``weights:<sha256>``), the ``scratch:<name>:<args>:<seed>``
description set by the sweep on randomly initialised encoders (attribute
``scratch_id``) or, for any other encoder, the SHA-256 of its state dict.
Passing ``cache_dir=None`` disables caching altogether (used to measure the
cost of re-extraction).

Preprocessing (shared by every adapter so that all see the same pixels):
images are scaled to [0, 1] (uint8 / 255; float files are stored in [0, 1]),
resized to the task's ``image_size`` with ``F.interpolate`` (``bilinear`` with
anti-aliasing by default; ``bilinear``/``bicubic`` become ``trilinear`` for
volumes, without anti-aliasing) and matched to the encoder's input channels
(one channel repeated, or several averaged). No intensity normalisation, as in
pretraining.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from benchmark.core.errors import DataError, SSLBenchError
from benchmark.core.io import atomic_path

if TYPE_CHECKING:
    from pretrain.encoders import Encoder
    from tasks.adapters.base import CellData

#: Bump when extraction or preprocessing changes in a way that changes features.
CACHE_VERSION = "1"
_MEMORY: OrderedDict[str, np.ndarray] = OrderedDict()
_MEMORY_ITEMS = 4
_CHUNK = 256


class FeatureError(SSLBenchError, ValueError):
    """Features are non-finite or a cache file does not fit its dataset."""


class EncoderInputError(SSLBenchError, ValueError):
    """The encoder cannot take the task's image size or dimensionality."""


def check_image_size(encoder: Encoder, image_size: int) -> None:
    """Raise :class:`EncoderInputError` if ``encoder`` cannot take ``image_size``."""
    try:
        encoder.check_input_size((int(image_size),) * encoder.spatial_dims)
    except ValueError as exc:
        raise EncoderInputError(
            f"{exc}; choose an image_size in the task spec that this encoder accepts"
        ) from None


# -- images and labels --------------------------------------------------------------
def resize_images(
    x: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize ``(N, C, *spatial)`` to ``size`` per spatial axis (no-op if already there)."""
    spatial = tuple(x.shape[2:])
    target = (int(size),) * len(spatial)
    if spatial == target:
        return x
    if len(spatial) == 3 and mode in ("bilinear", "bicubic"):
        mode, antialias = "trilinear", False
    kwargs: dict[str, Any] = {}
    if mode in ("bilinear", "bicubic", "trilinear"):
        kwargs["align_corners"] = False
        if mode != "trilinear":
            kwargs["antialias"] = antialias
    return F.interpolate(x, size=target, mode=mode, **kwargs)


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Repeat a single channel or average several to get ``in_chans`` channels."""
    c = x.shape[1]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(-1, in_chans, *x.shape[2:])
    mean = x.mean(dim=1, keepdim=True)
    return mean if in_chans == 1 else mean.expand(-1, in_chans, *x.shape[2:])


@lru_cache(maxsize=2)
def _load_images(
    path: str, content_hash: str, size: int, in_chans: int, mode: str, antialias: bool
) -> torch.Tensor:
    out = []
    with h5py.File(path, "r") as f:
        dset = f["images"]
        for start in range(0, dset.shape[0], _CHUNK):
            t = torch.from_numpy(np.asarray(dset[start : start + _CHUNK]))
            t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
            t = resize_images(t, size, mode, antialias)
            out.append(match_channels(t, in_chans).contiguous())
    images = torch.cat(out)
    images.requires_grad_(False)
    return images


def load_images(data: CellData, in_chans: int) -> torch.Tensor:
    """Every image of ``data.path`` preprocessed: float ``(N, in_chans, *size)``.

    The tensor is cached for the process (the last two datasets/sizes) and
    shared between callers: treat it as read-only. Memory is
    ``N * in_chans * size**dims * 4`` bytes.
    """
    pre = preprocessing_of(data, in_chans)
    return _load_images(
        str(Path(data.path).resolve()),
        dataset_hash(data),
        int(data.image_size),
        int(in_chans),
        str(pre["resize"]),
        bool(pre["antialias"]),
    )


@lru_cache(maxsize=8)
def _read_labels(path: str, content_hash: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if "labels" not in f:
            raise DataError(f"{path}: dataset has no labels")
        return np.asarray(f["labels"][()])


def read_labels(data: CellData) -> np.ndarray:
    """All labels of ``data.path`` (cached; read-only)."""
    return _read_labels(str(Path(data.path).resolve()), dataset_hash(data))


def dataset_hash(data: CellData) -> str:
    """``data.content_hash``, read from the file's attributes when empty."""
    if data.content_hash:
        return data.content_hash
    from benchmark.data.h5format import read_meta

    data.content_hash = str(read_meta(data.path)["content_hash"])
    return data.content_hash


def preprocessing_of(data: CellData, in_chans: int) -> dict[str, Any]:
    """The preprocessing that determines pixels fed to the encoder."""
    from tasks.spec import DEFAULT_PREPROCESSING

    pre = {**DEFAULT_PREPROCESSING, **(data.preprocessing or {})}
    return {
        "image_size": int(data.image_size),
        "resize": pre["resize"],
        "antialias": bool(pre["antialias"]),
        "in_chans": int(in_chans),
        "scale": "[0,1]",
    }


# -- features -------------------------------------------------------------------------
def encoder_cache_id(encoder: Encoder) -> str:
    """Identity of the encoder's weights (see the module docstring)."""
    meta = getattr(encoder, "checkpoint_meta", None)
    if meta and meta.get("weights_sha256"):
        return f"weights:{meta['weights_sha256']}"
    scratch = getattr(encoder, "scratch_id", None)
    if scratch:
        return str(scratch)
    h = hashlib.sha256()
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"state:{h.hexdigest()}"


def feature_key(encoder_id: str, content_hash: str, preprocessing: dict[str, Any]) -> str:
    """Cache key: SHA-256 of encoder, dataset, preprocessing and cache version."""
    blob = json.dumps(
        {
            "encoder": encoder_id,
            "dataset": content_hash,
            "preprocessing": preprocessing,
            "cache_version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def extract_features(
    encoder: Encoder, images: torch.Tensor, batch_size: int = 128, device: str = "cpu"
) -> np.ndarray:
    """Pooled features ``(N, D)`` float32 of ``images`` in eval mode, batched."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = [
            encoder.forward_features(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy()


def check_finite(features: np.ndarray, what: str) -> None:
    """Raise :class:`FeatureError` if ``features`` hold NaN or infinite values."""
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise FeatureError(
            f"{what}: {int(bad.sum())} non-finite feature values in {rows.size} samples "
            f"(first: sample {int(rows[0])}); the encoder weights may have diverged"
        )


@dataclass
class FeatureSet:
    """Features of every sample of a dataset file.

    Attributes:
        features: ``(N, D)`` float32, row ``i`` = file index ``i`` (read-only).
        status: ``"hit"`` (memory or disk cache) or ``"miss"`` (extracted now).
        key: Cache key.
        time_s: Seconds spent getting the features (extraction or loading).
        path: Cache file, or None when caching is disabled.
    """

    features: np.ndarray
    status: str
    key: str
    time_s: float
    path: Path | None = None

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Features of the given file indices."""
        return self.features[np.asarray(indices, dtype=np.int64)]


def get_features(
    encoder: Encoder,
    data: CellData,
    *,
    cache_dir: Path | None,
    device: str = "cpu",
    batch_size: int = 128,
) -> FeatureSet:
    """Features of every sample of ``data.path``, from the cache or extracted now."""
    start = time.perf_counter()
    in_chans = int(getattr(encoder, "in_chans", 1))
    pre = preprocessing_of(data, in_chans)
    enc_id = encoder_cache_id(encoder)
    key = feature_key(enc_id, dataset_hash(data), pre)
    what = f"{data.path} with encoder {enc_id[:40]}"
    file = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if file is not None and key in _MEMORY:
        _MEMORY.move_to_end(key)
        return FeatureSet(_MEMORY[key], "hit", key, time.perf_counter() - start, file)
    if file is not None and file.exists():
        feats = _read_cache(file)
        if feats is not None and feats.shape[0] == _num_samples(data.path):
            check_finite(feats, f"{file} ({what})")
            _remember(key, feats)
            return FeatureSet(feats, "hit", key, time.perf_counter() - start, file)
    feats = extract_features(encoder, load_images(data, in_chans), batch_size, device)
    check_finite(feats, what)
    feats.setflags(write=False)
    if file is not None:
        meta = {
            "encoder": enc_id,
            "dataset": dataset_hash(data),
            "preprocessing": pre,
            "cache_version": CACHE_VERSION,
            "dataset_path": str(data.path),
        }
        with atomic_path(file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=feats, meta=np.array(json.dumps(meta)))
        _remember(key, feats)
    return FeatureSet(feats, "miss", key, time.perf_counter() - start, file)


def _read_cache(file: Path) -> np.ndarray | None:
    """Features of a cache file, or None if it is unreadable (then re-extracted)."""
    try:
        with np.load(file, allow_pickle=False) as z:
            feats = np.asarray(z["features"])
    except (OSError, ValueError, KeyError):
        return None
    feats.setflags(write=False)
    return feats


def _num_samples(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["images"].shape[0])


def _remember(key: str, feats: np.ndarray) -> None:
    _MEMORY[key] = feats
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ITEMS:
        _MEMORY.popitem(last=False)


def clear_memory_cache() -> None:
    """Forget in-process features and images (tests and benchmarks)."""
    _MEMORY.clear()
    _load_images.cache_clear()
    _read_labels.cache_clear()


def check_classification(adapter: str, data: CellData) -> None:
    """Raise :class:`SSLBenchError` unless ``data`` is a usable classification cell."""
    if data.target != "labels":
        raise SSLBenchError(
            f"adapter {adapter!r} classifies labels; this task's target is {data.target!r}"
        )
    if data.num_classes < 2:
        raise SSLBenchError(f"adapter {adapter!r} needs at least 2 classes, got {data.num_classes}")
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise SSLBenchError(f"adapter {adapter!r}: the {split} subset of {data.path} is empty")
