"""Train/val/test splits and nested label-fraction subsets.

Two operations, both stratified by class, grouped by patient and seeded:

* :func:`make_split` assigns every sample of a dataset without an official split
  to train / val / test, with no patient in two splits (scikit-learn's
  ``StratifiedGroupKFold``).
* :func:`subset` picks the labelled subset for a label-scarcity experiment. For
  one seed the subsets are *nested*: the 1 % subset is contained in the 5 %
  subset, which is contained in the 10 % subset, and so on, so learning curves
  compare strictly growing label sets rather than unrelated draws.

Nesting works by ordering the patients of each stratum once per seed and taking
the shortest prefix of that order that holds at least ``ceil(fraction * n_c)``
samples of the stratum (at least one patient per stratum). A patient whose
samples carry several classes is put in the stratum of its globally rarest
class, so every class is represented by at least one patient.

Near-duplicate images (``benchmark.data.duplicates``) are kept together by
:func:`split_units`: a near-duplicate group joined with every patient of its
members is one unit, passed as ``groups`` to both functions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from benchmark.core.errors import SplitError


def strata_for(
    labels: np.ndarray | None = None, masks_empty: np.ndarray | None = None
) -> np.ndarray:
    """Integer strata from class labels, multi-labels or mask emptiness.

    Args:
        labels: (N,) integer classes, or (N, K) multi-label 0/1 matrix (a sample is
            stratified by its first positive label, or K when it has none).
        masks_empty: (N,) booleans for segmentation-only datasets; stratum 0 for
            an empty mask, 1 for a mask with foreground.
    """
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim == 1:
            return lab.astype(np.int64)
        if lab.ndim == 2:
            has = lab.any(axis=1)
            return np.where(has, lab.argmax(axis=1), lab.shape[1]).astype(np.int64)
        raise SplitError(f"labels must have shape (N,) or (N, K), got {lab.shape}")
    if masks_empty is not None:
        return (~np.asarray(masks_empty, dtype=bool)).astype(np.int64)
    raise SplitError("need labels or mask emptiness to stratify")


def split_units(
    patient_ids: np.ndarray | Sequence[str], duplicate_groups: np.ndarray | None = None
) -> np.ndarray:
    """The unit that splits and subsets keep together: a patient, or a duplicate group.

    Args:
        patient_ids: (N,) patient id per sample.
        duplicate_groups: (N,) near-duplicate group id per sample (-1: none), or None.

    Returns:
        (N,) object array of str. Without duplicate groups (or when no sample is
        in one) this is ``patient_ids`` unchanged, so files without groups split
        exactly as before. Otherwise every connected set of patients linked by a
        shared duplicate group is named after its smallest patient id; all other
        samples keep their patient id.
    """
    pids = np.asarray(patient_ids).astype(str).astype(object)
    if duplicate_groups is None:
        return pids
    dup = np.asarray(duplicate_groups, dtype=np.int64)
    if dup.shape != pids.shape:
        raise SplitError(f"duplicate groups must have shape {pids.shape}, got {dup.shape}")
    if not (dup >= 0).any():
        return pids
    uniq, pinv = np.unique(pids, return_inverse=True)
    parent = np.arange(uniq.size)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    first: dict[int, int] = {}
    for i in np.flatnonzero(dup >= 0).tolist():
        p = int(pinv[i])
        q = first.setdefault(int(dup[i]), p)
        rp, rq = find(p), find(q)
        if rp != rq:  # uniq is sorted: the smaller index names the smaller patient id
            parent[max(rp, rq)] = min(rp, rq)
    roots = np.array([find(int(k)) for k in range(uniq.size)])
    return uniq[roots][pinv].astype(object)


def _group_strata(strata: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique groups and, per group, the stratum of its rarest class."""
    classes, counts = np.unique(strata, return_counts=True)
    rarity = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    uniq, inverse = np.unique(groups, return_inverse=True)
    gstrat = np.empty(uniq.size, dtype=np.int64)
    for g in range(uniq.size):
        members = strata[inverse == g]
        gstrat[g] = min(set(members.tolist()), key=lambda c: (rarity[c], c))
    return uniq, gstrat


def subset(
    labels: np.ndarray | Sequence[int],
    fraction: float,
    seed: int,
    groups: np.ndarray | Sequence[str] | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """Positions of a stratified, patient-grouped, nested label-fraction subset.

    Args:
        labels: (N,) strata of the candidate pool (class labels, or the output of
            :func:`strata_for`). Pass only the train (or val) pool: test samples
            must never be subsampled.
        fraction: Fraction of samples in (0, 1].
        seed: Subset seed; same seed gives nested subsets across fractions.
        groups: (N,) patient ids (or :func:`split_units`); all samples of a group are in or
            out together.
        num_classes: If given, every class 0..num_classes-1 must be present.

    Returns:
        Sorted positions into ``labels``.

    Raises:
        SplitError: fraction outside (0, 1], a class without samples, or fewer
            requested samples than classes.
    """
    strata = np.asarray(labels)
    if strata.ndim != 1:
        strata = strata_for(strata)
    n = strata.size
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise SplitError(f"fraction must be a number in (0, 1], got {fraction!r}")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise SplitError(f"fraction must lie in (0, 1], got {fraction}")
    if int(seed) < 0:
        raise SplitError(f"seed must be >= 0, got {seed}")
    if n == 0:
        raise SplitError("cannot take a subset of an empty pool")
    classes = np.unique(strata)
    if num_classes is not None:
        absent = sorted(set(range(num_classes)) - set(classes.tolist()))
        if absent:
            raise SplitError(f"class(es) {absent} have no samples in the pool of {n}")
    wanted = math.ceil(fraction * n - 1e-9)
    if wanted < classes.size:
        raise SplitError(
            f"fraction {fraction} of {n} samples gives {wanted} sample(s), fewer than the "
            f"{classes.size} classes that each need one example"
        )
    if fraction == 1.0:
        return np.arange(n)
    grp = np.asarray(groups) if groups is not None else np.arange(n).astype(str)
    if grp.shape != (n,):
        raise SplitError(f"groups must have shape ({n},), got {grp.shape}")
    uniq, gstrat = _group_strata(strata, grp)
    ginv = np.unique(grp, return_inverse=True)[1]
    gsize = np.bincount(ginv, minlength=uniq.size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E1F]))
    order = rng.permutation(uniq.size)  # one order per seed -> nested prefixes
    chosen: list[int] = []
    for c in classes.tolist():
        gs = order[gstrat[order] == c]
        n_c = int(gsize[gs].sum())
        need = max(1, math.ceil(fraction * n_c - 1e-9))
        taken = np.cumsum(gsize[gs])
        k = int(np.searchsorted(taken, need)) + 1
        chosen.extend(gs[:k].tolist())
    # A class held only by patients filed under a rarer class could still be
    # missed: also take the first patient (in this seed's order) holding each
    # class. Independent of ``fraction``, so nesting holds; a no-op when every
    # patient has a single class (that patient heads its stratum's prefix).
    for c in classes.tolist():
        holders = np.zeros(uniq.size, dtype=bool)
        holders[ginv[strata == c]] = True
        chosen.append(int(order[holders[order]][0]))
    return np.flatnonzero(np.isin(ginv, chosen))


def make_split(
    strata: np.ndarray | Sequence[int],
    groups: np.ndarray | Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> np.ndarray:
    """Assign train / val / test per sample: patient-level, stratified, seeded.

    Args:
        strata: (N,) class (or mask-emptiness) per sample.
        groups: (N,) patient ids (or :func:`split_units`); a group never appears in two
            splits.
        seed: Random seed of the split.
        val_fraction: Approximate fraction of samples for validation.
        test_fraction: Approximate fraction of samples for testing.

    Returns:
        (N,) object array of ``"train"``, ``"val"``, ``"test"``.
    """
    y = np.asarray(strata)
    g = np.asarray(groups)
    n = y.size
    if int(seed) < 0:
        raise SplitError(f"seed must be >= 0, got {seed}")
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and val_fraction + test_fraction < 1):
        raise SplitError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    n_groups = np.unique(g).size
    if n_groups < 3:
        raise SplitError(f"need at least 3 patients for a train/val/test split, got {n_groups}")
    out = np.full(n, "train", dtype=object)
    test_idx = _one_fold(y, g, test_fraction, seed)
    out[test_idx] = "test"
    rest = np.flatnonzero(out == "train")
    val_rel = _one_fold(y[rest], g[rest], val_fraction / (1.0 - test_fraction), seed + 1)
    out[rest[val_rel]] = "val"
    return out


def _one_fold(y: np.ndarray, g: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of one stratified group fold holding about ``fraction`` of samples."""
    n_groups = np.unique(g).size
    k = min(max(2, round(1.0 / fraction)), n_groups)
    min_class = int(np.unique(y, return_counts=True)[1].min())
    if min_class < k:  # sklearn warns and degrades; fall back to plain group folds
        rng = np.random.default_rng(seed)
        uniq = np.unique(g)
        picked = rng.permutation(uniq)[: max(1, round(fraction * uniq.size))]
        return np.flatnonzero(np.isin(g, picked))
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    _, fold = next(iter(skf.split(np.zeros(y.size), y, g)))
    return np.sort(fold)
