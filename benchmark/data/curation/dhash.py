"""``dhash``: Less is More's Hash-N pruning of redundant images (Wolf et al. 2024).

Every image gets the 64-bit dHash of :func:`benchmark.data.duplicates.signature`
(the one the converters use for near-duplicate groups: the grey image area-averaged
to 9 x 8, one bit per "brighter than its left neighbour"). Within a scope, images
are visited in order (file order; slice order inside a volume); the first remaining
image is an exemplar, and every later image within Hamming distance ``threshold`` of
it is dropped; then the next remaining image is the next exemplar, and so on. An
image is therefore kept exactly when it is farther than ``threshold`` from every
exemplar kept before it. The paper's best reducer is ``threshold: 6`` ("Hash-6") with
``scope: volume`` (the slices of one CT volume).

The same hashes flag generated images that near-duplicate a real training image
(:meth:`DHashCurator.near`, ``sslbench data curate SYN.h5 --drop-near-real REAL.h5``):
a memorisation filter, the generator's copies of its training data dropped before
they are counted as "synthetic" data. For that filter a pair must also have a thumbnail
correlation >= ``min_corr`` (the converters' precise 2D rule ``dhash+corr``): a 9 x 8
dHash alone collides for unrelated ultrasound images, and would count them as copies.

Whole volumes (``unit="volume"`` of :func:`~benchmark.data.curation.base.curate_file`,
for 3D encoders, which cannot pretrain on a file of slices): the distance of two
volumes is the mean, over aligned depth slices, of their slices' dHash Hamming
distances, so ``threshold`` keeps the paper's per-slice meaning ("on average within 6
bits per slice"), and the same greedy exemplar rule runs over the train split
(``scope: dataset``; a volume has no smaller scope to prune inside). This is a
volume-level analogue of Hash-N, not the paper's reducer (which prunes 2D slices for
2D encoders). The converters' coarser 64-bit 3D dHash (4 x 4 x 4 cells) was tried
first and rejected: on MSD hippocampus (166 aligned train crops) threshold 6 kept 12
volumes, since at 4 x 4 x 4 every aligned crop looks alike; the per-slice distance
keeps 147 (pairwise distances: minimum 3.6, 5th percentile 8.8, median 13.5 bits).
The near-real filter for volumes needs the mean slice distance within ``threshold``
and a 16^3 thumbnail correlation >= ``min_corr``.

Options:
    threshold: Largest Hamming distance (0-64) that counts as redundant (default 6).
    scope: ``volume``: images are compared within their volume (3D inputs) or
        patient (2D inputs) only; ``dataset``: across the whole train split.
    min_corr: Thumbnail correlation a near-real pair also needs (default 0.85).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from benchmark.data.curation.base import CURATORS, CurationError, Curator
from benchmark.data.duplicates import (
    HASH_BITS,
    DuplicateRule,
    Signatures,
    find_pairs,
    hamming,
    signature,
)

SCOPES = ("volume", "dataset")


@CURATORS.register("dhash")
class DHashCurator(Curator):
    """Greedy exemplar pruning by dHash Hamming distance (see the module docstring)."""

    name = "dhash"
    defaults: ClassVar[dict[str, Any]] = {"threshold": 6, "scope": "volume", "min_corr": 0.85}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        t = self.options["threshold"]
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= HASH_BITS:
            raise CurationError(f"curator 'dhash': threshold must be an int in [0, 64], got {t!r}")
        c = self.options["min_corr"]
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c <= 1:
            raise CurationError(f"curator 'dhash': min_corr must lie in (0, 1], got {c!r}")
        if self.options["scope"] not in SCOPES:
            raise CurationError(
                f"curator 'dhash': scope must be one of {list(SCOPES)}, got "
                f"{self.options['scope']!r}"
            )

    def label(self) -> str:
        """``dhash6`` (scope volume), ``dhash6d`` (scope dataset)."""
        scope = "d" if self.options["scope"] == "dataset" else ""
        return f"dhash{self.options['threshold']}{scope}"

    @staticmethod
    def hashes(images: np.ndarray) -> np.ndarray:
        """(N,) uint64 dHashes of grey images ``(N, H, W)``."""
        return np.array([signature(img, 2)[0] for img in images], dtype=np.uint64)

    def near(self, images: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Images that near-duplicate a reference image by the converters' 2D rule: dHash
        within ``threshold`` **and** thumbnail correlation >= ``min_corr`` (a coarse dHash
        alone collides for unrelated ultrasound images)."""
        sigs = Signatures(2)
        for img in (*images, *reference):
            sigs.add(img)
        n = len(images)
        rule = DuplicateRule("dhash+corr", self.options["threshold"], self.options["min_corr"])
        mask = np.zeros(n, dtype=bool)
        for i, j in find_pairs(sigs, rule):  # blockwise: memory grows with a block, not N x M
            if i < n <= j:
                mask[i] = True
        return mask

    def slice_hashes(self, volumes: np.ndarray) -> np.ndarray:
        """(N, D) uint64 dHashes of the depth slices of grey volumes ``(N, D, H, W)``."""
        return np.stack([self.hashes(v) for v in volumes]).reshape(len(volumes), -1)

    def near_volumes(self, volumes: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Volumes whose mean slice distance to a reference volume is within ``threshold``
        and whose 16^3 thumbnails correlate >= ``min_corr`` with it."""
        mine, theirs = self.slice_hashes(volumes), self.slice_hashes(reference)

        def unit(x: np.ndarray) -> np.ndarray:
            t = np.stack([signature(v, 3)[1] for v in x]).astype(np.float64)
            t -= t.mean(axis=1, keepdims=True)
            return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)

        corr = unit(volumes) @ unit(reference).T
        out = np.zeros(len(volumes), dtype=bool)
        for i, h in enumerate(mine):
            dist = hamming(h[None, :], theirs).mean(axis=1)
            out[i] = bool(
                np.any((dist <= self.options["threshold"]) & (corr[i] >= self.options["min_corr"]))
            )
        return out

    def check_volumes(self) -> None:
        if self.options["scope"] != "dataset":
            raise CurationError(
                "curator 'dhash': whole volumes are compared across the train split; set "
                f"scope: dataset (got {self.options['scope']!r})"
            )

    def select_volumes(self, volumes: np.ndarray) -> np.ndarray:
        self.check_volumes()
        hashes = self.slice_hashes(volumes)
        keep = np.zeros(len(hashes), dtype=bool)
        exemplars: list[int] = []
        for i, h in enumerate(hashes):
            if exemplars:
                dist = hamming(h[None, :], hashes[exemplars]).mean(axis=1)
                if dist.min() <= self.options["threshold"]:
                    continue
            exemplars.append(i)
        keep[exemplars] = True
        return keep

    def select(self, images: np.ndarray, units: np.ndarray) -> np.ndarray:
        scopes = np.zeros(len(images), dtype=np.int64)
        if self.options["scope"] == "volume":
            scopes = np.unique(np.asarray(units, dtype=str), return_inverse=True)[1]
        return self._greedy(self.hashes(images), scopes)

    def _greedy(self, hashes: np.ndarray, scopes: np.ndarray) -> np.ndarray:
        """Keep an item when it is farther than ``threshold`` from every exemplar kept
        before it in its scope."""
        keep = np.zeros(len(hashes), dtype=bool)
        for scope in np.unique(scopes):
            members = np.flatnonzero(scopes == scope)
            exemplars: list[int] = []
            for i in members:
                near = (
                    exemplars
                    and hamming(hashes[i], hashes[exemplars]).min() <= self.options["threshold"]
                )
                if not near:
                    exemplars.append(int(i))
            keep[exemplars] = True
        return keep
