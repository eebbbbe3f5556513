"""Image sources for pretraining: real, synthetic and mixed batches.

A source hands the training loop the float images of optimizer step ``step``
(:meth:`Source.batch`). This module holds the contract (:class:`Source`, the
in-memory :class:`Pool`, :data:`SOURCES`); each source is one module of this
package, registered on import. Three are built in:

* ``real``: the **train split** of a real sslbench HDF5 file. Validation and
  test images are never loaded, so they cannot leak into pretraining.
* ``synthetic``: a file of generated images. Every sslbench file has a split;
  the samples marked ``train`` are used, and all samples if none is (a
  generator normally writes all of its images as ``train``).
* ``mixed``: both; every batch holds exactly ``round(synthetic_ratio * B)``
  synthetic images (Python's ``round``) and the rest real ones, so the ratio
  holds at every step, not only on average.

Compute matching. A run is defined by ``steps x batch_size``, never by epochs:
``images_seen = steps * batch_size`` whatever the source and pool sizes, so
runs on pools of different sizes get the same compute.

Sampling. Each pool is read as an endless stream of epochs; epoch ``e`` is a
permutation of the pool drawn from ``SeedSequence([seed, pool_id, e])`` and a
pool that contributes ``k`` images per batch serves positions
``[step*k, (step+1)*k)`` of its stream. Sampling is therefore without
replacement within an epoch, and a batch is a pure function of
``(seed, step)``: a run resumed at step ``k`` gets exactly the batches of an
uninterrupted run. For the same reason the number of distinct images seen is
analytic (``min(pool, draws)``, the first epoch visits every image once) and
:meth:`Source.stats` needs no state beyond the step count.

Memory. The pools are kept in RAM as their stored dtype (uint8, or float32
for float files) in one tensor per pool, moved once to ``device``; a batch is
one ``index_select`` plus a conversion to float. The datasets of a CPU-scale
benchmark fit in memory many times over, and this gather costs far less than
decoding per-sample items in ``DataLoader`` worker processes (which would also
compete with the model for the few cores), so no DataLoader is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.core.errors import DataError, SSLBenchError
from benchmark.core.registry import Registry
from benchmark.data.dataset import H5Dataset
from benchmark.data.h5format import open_h5, read_split

_POOL_IDS = {"real": 0, "synthetic": 1}
_SHUFFLE_TAG = 2  # SeedSequence tag of the within-batch shuffle (distinct from pool ids)


class SourceError(SSLBenchError, ValueError):
    """A source was asked for with missing or invalid arguments."""


class Pool:
    """The images of one file held in memory, with its epoch permutations.

    Args:
        kind: ``"real"`` or ``"synthetic"`` (selects the permutation stream).
        path: sslbench HDF5 file.
        split: Split to load (``"train"``), or None for every sample.
        seed: Run seed.
        device: Where the image tensor lives.
    """

    def __init__(
        self,
        kind: str,
        path: str | Path,
        split: str | None,
        seed: int,
        device: torch.device,
        limit: int | None = None,
    ) -> None:
        self.kind = kind
        self.path = Path(path)
        self.split = split
        self.seed = seed
        ds = H5Dataset(self.path, split=split, in_memory=True, keys=())
        self.content_hash = str(ds.meta.get("content_hash", ""))
        self.image_shape = tuple(int(s) for s in ds.image_shape)
        self.dtype = str(ds.image_dtype)
        images = ds.raw_images()
        self.available = int(images.shape[0])
        if limit is not None:
            if not 0 < limit <= self.available:
                where = f"{split} images" if split else "images"
                raise DataError(
                    f"{self.path}: pool_size {limit} asked for, but the file has "
                    f"{self.available} {where}"
                )
            images = images[:limit]  # the first N: generated samples are i.i.d. draws
        self.limit = limit
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.size = int(self.images.shape[0])
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the pool in ``epoch`` (cached for the last two epochs)."""
        perm = self._perms.get(epoch)
        if perm is None:
            seq = np.random.SeedSequence([self.seed, _POOL_IDS[self.kind], epoch])
            perm = np.random.default_rng(seq).permutation(self.size)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int, count: int) -> np.ndarray:
        """Pool positions of the ``count`` images this pool gives to batch ``step``."""
        pos = np.arange(step * count, (step + 1) * count, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.size)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):  # at most two epochs, since count <= size
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))[offsets[sel]]
        return out

    def gather(self, idx: np.ndarray) -> torch.Tensor:
        """Float32 images in [0, 1] at pool positions ``idx``."""
        t = self.images.index_select(0, torch.from_numpy(idx).to(self.images.device))
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    def describe(self) -> dict[str, Any]:
        out = {
            "path": str(self.path),
            "content_hash": self.content_hash,
            "split": self.split or "all",
            "pool_size": self.size,
            "image_shape": list(self.image_shape),
            "dtype": self.dtype,
        }
        if self.limit is not None:  # only then: descriptions of whole pools are unchanged
            out["pool_of"] = self.available
        return out


class Source:
    """Base class: deterministic batches of a fixed size from one or two pools.

    Subclasses build :attr:`parts` (pool, images per batch) in ``__init__``.

    Args:
        batch_size: Images per optimizer step.
        seed: Seed of the sampling order (non-negative int).
        device: Device of the pools and of the returned batches.
    """

    name = ""
    #: Which pools the source reads: the experiment runner plans its inputs from these.
    uses_real: ClassVar[bool] = False
    uses_synthetic: ClassVar[bool] = False
    #: Whether the source is swept over the experiment's synthetic ``ratios``.
    takes_ratio: ClassVar[bool] = False

    def __init__(self, *, batch_size: int, seed: int, device: str | torch.device = "cpu") -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise SourceError(
                f"source {self.name!r}: batch_size must be a positive int, got {batch_size!r}"
            )
        if int(seed) != seed or seed < 0:
            raise SourceError(
                f"source {self.name!r}: seed must be a non-negative int, got {seed!r}"
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.synthetic_ratio = 0.0
        self.mode = "replace"
        self.real_weight = 1.0
        self.parts: dict[str, tuple[Pool, int]] = {}
        self.steps_done = 0

    # -- construction helpers ------------------------------------------
    def _add_pool(
        self,
        kind: str,
        path: str | Path | None,
        count: int,
        pool_size: int | str | None = None,
        real: str | Path | None = None,
    ) -> Pool:
        """Load a pool that gives ``count`` images per batch.

        ``pool_size`` (synthetic pools): None or ``all`` for every sample, an int for the
        first N, ``matched`` for as many as the train split of the ``real`` file.
        """
        if path is None:
            raise SourceError(f"source {self.name!r} needs a {kind} dataset file (none was given)")
        path = Path(path)
        split = _pool_split(kind, path)
        limit = resolve_pool_size(pool_size, real, self.name)
        pool = Pool(kind, path, split, self.seed, self.device, limit)
        self._set_part(pool, count)
        return pool

    def _set_part(self, pool: Pool, count: int) -> None:
        """Take ``count`` images of ``pool`` per batch (error if the pool is smaller)."""
        if pool.size < count:
            where = f"{pool.split} images" if pool.split else "images"
            raise DataError(
                f"{pool.path}: only {pool.size} {where} but source {self.name!r} takes {count} "
                f"{pool.kind} images per batch (batch_size {self.batch_size}"
                + (f", synthetic_ratio {self.synthetic_ratio:g})" if self.name == "mixed" else ")")
            )
        self.parts[pool.kind] = (pool, count)

    # -- sampling -------------------------------------------------------
    def batch(self, step: int, rows: slice | None = None) -> torch.Tensor:
        """The float32 (B, C, *spatial) images in [0, 1] of optimizer step ``step``.

        Args:
            step: Optimizer step.
            rows: Only these rows of the global batch (a rank's share in a
                multi-process run); only those images are read.
        """
        if step < 0:
            raise SourceError(f"source {self.name!r}: step must be >= 0, got {step}")
        parts = [
            (pool, pool.indices(step, count)) for pool, count in self.parts.values() if count > 0
        ]
        self.steps_done = max(self.steps_done, step + 1)
        positions = np.arange(self.batch_size)
        if len(parts) > 1:  # interleave the parts (nothing may rely on batch positions)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SHUFFLE_TAG, step]))
            positions = rng.permutation(self.batch_size)
        if rows is not None:
            positions = positions[rows]
        if len(parts) == 1:
            pool, idx = parts[0]
            return pool.gather(idx[positions])
        # positions index the concatenation of the parts' images, in part order
        chunks, order, start = [], [], 0
        for pool, idx in parts:
            mine = np.nonzero((positions >= start) & (positions < start + len(idx)))[0]
            if len(mine):
                chunks.append(pool.gather(idx[positions[mine] - start]))
                order.append(mine)
            start += len(idx)
        images = torch.cat(chunks)
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return images.index_select(0, torch.from_numpy(inverse).to(images.device))

    # -- bookkeeping ----------------------------------------------------
    def stats(self, steps: int | None = None) -> dict[str, Any]:
        """Images seen after ``steps`` steps (default: the steps served so far).

        Returns ``steps``, ``images_seen`` (= steps * batch_size) and, for
        ``real`` and ``synthetic``: ``images_seen_*``, ``distinct_*`` (distinct
        images drawn), ``pool_*`` (pool size) and ``epochs_*`` (passes over
        the pool). Parts a source does not use report zeros.
        """
        steps = self.steps_done if steps is None else int(steps)
        out: dict[str, Any] = {"steps": steps, "images_seen": steps * self.batch_size}
        for kind in _POOL_IDS:
            pool, count = self.parts.get(kind, (None, 0))
            seen = steps * count
            size = pool.size if pool is not None else 0
            out[f"images_seen_{kind}"] = seen
            out[f"distinct_{kind}"] = min(seen, size)
            out[f"pool_{kind}"] = size
            out[f"epochs_{kind}"] = seen / size if size else 0.0
        return out

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Per-image shape ``(C, *spatial)`` (the same for every pool)."""
        return next(iter(self.parts.values()))[0].image_shape

    def describe(self) -> dict[str, Any]:
        """Metadata to record with a run.

        Keys: ``name``, ``synthetic_ratio``, ``batch_size``, ``seed``,
        ``per_batch`` (images per batch of each part) and, for each pool used,
        ``real`` / ``synthetic``: ``path``, ``content_hash``, ``split``,
        ``pool_size``, ``image_shape`` and ``dtype``.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "synthetic_ratio": self.synthetic_ratio,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "per_batch": {kind: count for kind, (_, count) in self.parts.items()},
        }
        if (self.mode, self.real_weight) != ("replace", 1.0):  # else: as before modes
            out.update(mode=self.mode, real_weight=self.real_weight)
        for kind, (pool, _) in self.parts.items():
            out[kind] = pool.describe()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Resume state: the step count and what the batches depend on."""
        return {"steps_done": self.steps_done, "describe": self.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state of a different source or data."""
        mine, theirs = self.describe(), state.get("describe", {})
        implied = {"mode": "replace", "real_weight": 1.0}  # left out of descriptions
        for key in ("name", "mode", "real_weight", "synthetic_ratio", "batch_size", "seed"):
            was, now = theirs.get(key, implied.get(key)), mine.get(key, implied.get(key))
            if was != now:
                raise SourceError(f"source state does not match: {key} was {was!r}, now {now!r}")
        for kind in self.parts:
            info, old = mine[kind], theirs.get(kind, {})
            if old.get("pool_size") != info["pool_size"]:
                raise SourceError(
                    f"source state does not match: the {kind} pool had {old.get('pool_size')} "
                    f"images, now {info['pool_size']}"
                )
            if old.get("content_hash") != info["content_hash"]:
                raise DataError(
                    f"{info['path']}: content hash differs from the one the run "
                    f"was started with ({old.get('path', '?')})"
                )
        self.steps_done = int(state["steps_done"])

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={c}/{p.size}" for k, (p, c) in self.parts.items())
        return f"{type(self).__name__}(batch_size={self.batch_size}, {parts})"


def _pool_split(kind: str, path: Path) -> str | None:
    """``"train"`` for real files (error if absent); for synthetic ones if present."""
    with open_h5(path) as f:
        split = read_split(f)
    if np.any(split == "train"):
        return "train"
    if kind == "real":
        raise DataError(f"{path}: no 'train' split; the real source only uses training images")
    return None


SOURCES: Registry[type[Source]] = Registry(
    "sources", "pretraining image sources (real, synthetic, mixed at a fixed ratio)"
)


def check_pool_size(pool_size: Any, where: str) -> int | str | None:
    """A ``pool_size`` value checked and normalised: None (``all`` too: every sample), a
    positive int, or ``matched``. The one check of the source, the experiment and the CLI.

    Raises:
        SourceError: Any other value, named with ``where``.
    """
    if pool_size is None or pool_size in ("all", "matched"):
        return None if pool_size == "all" else pool_size
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise SourceError(
            f"{where} must be a positive int, 'matched' or 'all' (null: every sample), got "
            f"{pool_size!r}"
        )
    return int(pool_size)


def resolve_pool_size(
    pool_size: int | str | None, real: str | Path | None, source: str
) -> int | None:
    """The number of images of a synthetic pool: None for all of them (see ``_add_pool``).

    Raises:
        SourceError: An unknown value, or ``matched`` without a real file.
    """
    pool_size = check_pool_size(pool_size, f"source {source!r}: pool_size")
    if pool_size is None:
        return None
    if pool_size == "matched":
        if real is None:
            raise SourceError(
                f"source {source!r}: pool_size 'matched' needs the real dataset file, whose "
                "train split gives the size"
            )
        with open_h5(Path(real)) as f:
            n = int(np.sum(read_split(f) == "train"))
        if n == 0:
            raise DataError(f"{real}: no 'train' split to match the synthetic pool size to")
        return n
    return int(pool_size)


def create_source(
    name: str,
    *,
    real: str | Path | None = None,
    synthetic: str | Path | None = None,
    synthetic_ratio: float | None = 0.5,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    mode: str = "replace",
    real_weight: float = 1.0,
    pool_size: int | str | None = None,
) -> Source:
    """Build a registered source; files and options a source does not use are ignored
    (``mode`` and ``real_weight`` are ``mixed``'s, ``pool_size`` the synthetic pool's)."""
    source = SOURCES.create(
        name,
        real=real,
        synthetic=synthetic,
        synthetic_ratio=synthetic_ratio,
        batch_size=batch_size,
        seed=seed,
        device=device,
        mode=mode,
        real_weight=real_weight,
        pool_size=pool_size,
    )
    assert isinstance(source, Source)
    return source
