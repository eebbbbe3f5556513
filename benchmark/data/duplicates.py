"""Near-duplicate images: perceptual signatures, pair rules, union-find groups, policies.

Converters compute a *signature* of every image at conversion time and group
near-duplicates, so that splits and label-fraction subsets never separate copies
of one image (see ``FORMAT.md``, "Near-duplicate groups").

Signature of one image (a grey 2D array, or a 3D volume):

* 2D: the image as float, area-averaged (box filter, exact pixel overlaps) to
  9 x 8 for the **dHash** (64 bits: is each pixel brighter than its left
  neighbour, row-major, first bit most significant) and to 32 x 32 for the
  **thumbnail** whose Pearson correlation compares two images.
* 3D: the volume area-averaged to 4 x 4 x 5 (D, H, W) for a 64-bit dHash along
  W, and to 16 x 16 x 16 for the thumbnail.

Pair rules (a pair of images is a near-duplicate when):

* ``dhash+corr``: dHash Hamming distance ``<= max_hamming`` **and** thumbnail
  correlation ``>= min_corr``. The two checks fail differently: a 9 x 8 dHash
  of ultrasound (bright top, dark bottom) collides for unrelated images, and
  thumbnail correlation is high between unrelated images of similar anatomy;
  together they are precise. Default for 2D images: Hamming <= 6, corr >= 0.85
  (on BUSI: 199 pairs in 138 groups of 306 images, 8 groups with conflicting
  classes; the first unrelated pair checked by eye appears at Hamming 8).
* ``dhash``: dHash Hamming distance ``<= max_hamming`` only.
* ``corr``: thumbnail correlation ``>= min_corr`` only. Default for 3D volumes
  (corr >= 0.99): cropped, zero-padded volumes of one anatomy share their
  coarse dHash, so only a near-identical volume should count.

Two constant thumbnails (blank images) have no correlation; they count as
correlation 1 when their grey levels agree within 1/255 of the range, else 0.

Pairs are joined into groups with union-find. A group whose members carry
different class labels is *conflicting*. Policies:

* ``group`` (default): a group is one split unit (with its members' patients).
* ``drop``: keep one exemplar per group (the first in file order, or in the
  most protected split when the split is official), drop the others;
  conflicting groups are dropped entirely (the image carries two labels, at
  least one of them wrong, and nothing tells which).
* ``keep``: groups are recorded but splits and subsets use patient ids only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.core.errors import DataError, did_you_mean

POLICIES = ("group", "drop", "keep")
RULES = ("dhash+corr", "dhash", "corr")
HASH_BITS = 64
DHASH_SHAPE_2D = (8, 9)
DHASH_SHAPE_3D = (4, 4, 5)
THUMB_SHAPE_2D = (32, 32)
THUMB_SHAPE_3D = (16, 16, 16)
#: Default rule and thresholds for 2D images and for 3D volumes (see the module docstring).
DEFAULTS_2D: dict[str, Any] = {"rule": "dhash+corr", "max_hamming": 6, "min_corr": 0.85}
DEFAULTS_3D: dict[str, Any] = {"rule": "corr", "max_hamming": None, "min_corr": 0.99}
SIGNATURE_2D = (
    "grey image (RGB: ITU-R 601-2 luma) area-averaged to 9x8 for a 64-bit dHash (pixel > left "
    "neighbour) and to 32x32 for the Pearson-correlation thumbnail, from the source image before "
    "any resize"
)
SIGNATURE_3D = (
    "first channel of the stored volume area-averaged to 4x4x5 (D,H,W) for a 64-bit dHash along W "
    "and to 16x16x16 for the Pearson-correlation thumbnail"
)
_BLANK_TOL = 1.0 / 255.0
_CHUNK_CELLS = 1 << 23  # pairwise blocks of at most this many cells


# -- options -----------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicateRule:
    """When two signatures are near-duplicates.

    Attributes:
        rule: One of :data:`RULES`.
        max_hamming: Largest dHash Hamming distance (0-64) of a pair, or None if unused.
        min_corr: Smallest thumbnail correlation in (0, 1] of a pair, or None if unused.
    """

    rule: str
    max_hamming: int | None
    min_corr: float | None

    def describe(self) -> str:
        """``"dhash+corr (dHash Hamming <= 6 and thumbnail correlation >= 0.85)"``."""
        parts = []
        if self.max_hamming is not None:
            parts.append(f"dHash Hamming <= {self.max_hamming}")
        if self.min_corr is not None:
            parts.append(f"thumbnail correlation >= {self.min_corr:g}")
        return f"{self.rule} ({' and '.join(parts)})"


@dataclass(frozen=True)
class DuplicateOptions:
    """A converter's duplicate policy and pair rule (validated)."""

    policy: str
    rule: DuplicateRule


def parse_options(
    policy: str | None,
    rule: str | None,
    max_hamming: Any,
    min_corr: Any,
    defaults: dict[str, Any],
) -> DuplicateOptions:
    """Validate ``--duplicates``, ``--dup-rule``, ``--dup-hamming`` and ``--dup-corr``.

    Args:
        policy: ``group``, ``drop`` or ``keep`` (None: ``group``).
        rule: One of :data:`RULES` (None: the default of ``defaults``).
        max_hamming: Integer 0-64, or None for the rule's default.
        min_corr: Number in (0, 1], or None for the rule's default.
        defaults: :data:`DEFAULTS_2D` or :data:`DEFAULTS_3D`.

    Raises:
        DataError: One line naming the option: unknown policy or rule, a
            threshold outside its range, or a threshold the rule does not use.
    """
    pol = "group" if policy is None else str(policy)
    if pol not in POLICIES:
        raise DataError(
            f"--duplicates: unknown policy {pol!r}; choose one of {', '.join(POLICIES)}"
            f"{did_you_mean(pol, POLICIES)}"
        )
    name = defaults["rule"] if rule is None else str(rule)
    if name not in RULES:
        raise DataError(
            f"--dup-rule: unknown rule {name!r}; choose one of {', '.join(RULES)}"
            f"{did_you_mean(name, RULES)}"
        )
    uses_hash, uses_corr = name in ("dhash+corr", "dhash"), name in ("dhash+corr", "corr")
    hamming: int | None = None
    if max_hamming is not None:
        if not uses_hash:
            raise DataError(f"--dup-hamming: the rule {name!r} uses no dHash; drop the option")
        ok = isinstance(max_hamming, numbers.Integral) and not isinstance(max_hamming, bool)
        if not ok or not 0 <= int(max_hamming) <= HASH_BITS:
            raise DataError(
                f"--dup-hamming: must be an integer from 0 to {HASH_BITS} (bits of the dHash), "
                f"got {max_hamming!r}"
            )
        hamming = int(max_hamming)
    elif uses_hash:
        hamming = int(defaults["max_hamming"] if defaults["max_hamming"] is not None else 6)
    corr: float | None = None
    if min_corr is not None:
        if not uses_corr:
            raise DataError(f"--dup-corr: the rule {name!r} uses no correlation; drop the option")
        ok = isinstance(min_corr, numbers.Real) and not isinstance(min_corr, bool)
        if not ok or not math.isfinite(float(min_corr)) or not 0.0 < float(min_corr) <= 1.0:
            raise DataError(f"--dup-corr: must be a number in (0, 1], got {min_corr!r}")
        corr = float(min_corr)
    elif uses_corr:
        corr = float(defaults["min_corr"] if defaults["min_corr"] is not None else 0.85)
    return DuplicateOptions(pol, DuplicateRule(name, hamming, corr))


def add_arguments(parser: Any, defaults: dict[str, Any]) -> None:
    """``--duplicates``, ``--dup-rule``, ``--dup-hamming``, ``--dup-corr`` on a parser."""
    parser.add_argument(
        "--duplicates",
        default=None,
        metavar="POLICY",
        help="near-duplicate policy: group (default: one split unit), drop (keep one exemplar; "
        "conflicting-label groups dropped), keep (record only)",
    )
    default = DuplicateRule(defaults["rule"], defaults["max_hamming"], defaults["min_corr"])
    parser.add_argument(
        "--dup-rule",
        default=None,
        metavar="RULE",
        help=f"pair rule: {', '.join(RULES)} (default: {default.describe()})",
    )
    parser.add_argument(
        "--dup-hamming", type=int, default=None, help="largest dHash Hamming distance, 0-64"
    )
    parser.add_argument(
        "--dup-corr", type=float, default=None, help="smallest thumbnail correlation, in (0, 1]"
    )


# -- signatures --------------------------------------------------------------------
def _prefix(a: np.ndarray, axis: int) -> np.ndarray:
    """Cumulative sums along ``axis`` with a leading zero (the integral at pixel edges)."""
    c = np.cumsum(np.moveaxis(a, axis, -1), axis=-1)
    return np.concatenate([np.zeros((*c.shape[:-1], 1)), c], axis=-1)


def _area_from_prefix(a: np.ndarray, c: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-average ``a`` to ``n_out`` along ``axis`` given its :func:`_prefix`."""
    n_in = c.shape[-1] - 1
    edges = np.linspace(0.0, float(n_in), n_out + 1)
    k = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    last = np.moveaxis(a, axis, -1)
    integral = c[..., k] + (edges - k) * last[..., k]  # integral of a from 0 to each edge
    out = (integral[..., 1:] - integral[..., :-1]) / np.diff(edges)
    return np.moveaxis(out, -1, axis)


def area_resize_many(array: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Resize an array to each of ``shapes`` by exact area averaging (float64).

    Each output pixel is the mean of the input over its footprint, with
    fractional pixel overlaps (a box filter; upsampling repeats pixels). Uses
    prefix sums, not matrix products, and shares the (contiguous) last axis
    between shapes.
    """
    a = np.asarray(array, dtype=np.float64)
    for shape in shapes:
        if a.ndim != len(shape) or min(shape) < 1:
            raise ValueError(f"cannot resize an array of shape {a.shape} to {tuple(shape)}")
    last = a.ndim - 1
    shared = _prefix(a, last)
    outs = []
    for shape in shapes:
        out = _area_from_prefix(a, shared, int(shape[last]), last)
        for axis in range(last - 1, -1, -1):
            out = _area_from_prefix(out, _prefix(out, axis), int(shape[axis]), axis)
        outs.append(out)
    return outs


def area_resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize an array to ``shape`` by exact area averaging (float64)."""
    return area_resize_many(array, [shape])[0]


def to_grey(image: np.ndarray) -> np.ndarray:
    """A (H, W) grey array from (H, W), (1, H, W), (3, H, W) or (H, W, 3) images."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], a, axes=([0], [0]))
    elif a.ndim == 3 and a.shape[-1] == 3:
        a = a @ np.array([0.299, 0.587, 0.114])
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {np.shape(image)}")
    return a


def _pack_bits(bits: np.ndarray) -> int:
    value = 0
    for b in bits.ravel().tolist():
        value = (value << 1) | int(b)
    return value


def signature(array: np.ndarray, dims: int = 2) -> tuple[int, np.ndarray]:
    """The 64-bit dHash and the flat float32 thumbnail of one image or volume.

    Args:
        array: 2D: a grey (H, W) image (or one :func:`to_grey` accepts). 3D: a
            (D, H, W) volume (or (C, D, H, W): the first channel is used).
        dims: 2 or 3.
    """
    if dims == 2:
        a = to_grey(array)
        small, thumb = area_resize_many(a, [DHASH_SHAPE_2D, THUMB_SHAPE_2D])
    elif dims == 3:
        a = np.asarray(array, dtype=np.float64)
        a = a[0] if a.ndim == 4 else a
        if a.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {np.shape(array)}")
        small, thumb = area_resize_many(a, [DHASH_SHAPE_3D, THUMB_SHAPE_3D])
    else:
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    bits = small[..., 1:] > small[..., :-1]
    return _pack_bits(bits), thumb.ravel().astype(np.float32)


class Signatures:
    """Signatures of a dataset's images, collected in file order."""

    def __init__(self, dims: int = 2) -> None:
        self.dims = dims
        self._hashes: list[int] = []
        self._thumbs: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> None:
        """Compute and append the signature of the next image."""
        h, t = signature(array, self.dims)
        self._hashes.append(h)
        self._thumbs.append(t)

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def hashes(self) -> np.ndarray:
        """(N,) uint64 dHashes."""
        return np.array(self._hashes, dtype=np.uint64)

    @property
    def thumbs(self) -> np.ndarray:
        """(N, P) float32 thumbnails."""
        if not self._thumbs:
            return np.zeros((0, 0), np.float32)
        return np.stack(self._thumbs)

    def subset(self, keep: np.ndarray) -> Signatures:
        """The signatures at positions ``keep`` (after dropping samples)."""
        out = Signatures(self.dims)
        out._hashes = [self._hashes[int(i)] for i in keep]
        out._thumbs = [self._thumbs[int(i)] for i in keep]
        return out


# -- pairs and groups --------------------------------------------------------------
def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)


def _normalised(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred unit-norm thumbnails, a 'constant' flag and the mean grey level."""
    t = np.asarray(thumbs, dtype=np.float64)
    mean = t.mean(axis=1) if t.size else np.zeros(len(t))
    c = t - mean[:, None]
    norm = np.linalg.norm(c, axis=1)
    scale = np.abs(t).max(axis=1) if t.size else np.zeros(len(t))
    blank = norm <= 1e-9 * np.maximum(scale, 1.0) * math.sqrt(max(t.shape[1], 1))
    c[~blank] /= norm[~blank, None]
    c[blank] = 0.0
    return c.astype(np.float32), blank, mean


def _blank_corr(blank: np.ndarray, mean: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Correlation stand-in for pairs with a blank thumbnail: 1 if both are blank at one level.

    Levels agree within 1/255 of the value range: one grey level for 0..255
    images, 1/255 for images in [0, 1].
    """
    tol = 1.0 if float(np.abs(mean).max(initial=0.0)) > 1.0 else _BLANK_TOL
    same = np.abs(mean[i] - mean[j]) <= tol
    return np.where(blank[i] & blank[j] & same, 1.0, 0.0)


def find_pairs(sigs: Signatures, rule: DuplicateRule) -> list[tuple[int, int]]:
    """Sorted pairs ``(i, j)``, ``i < j``, that the rule calls near-duplicates.

    Hamming distances are computed blockwise over all pairs; for
    ``dhash+corr`` the correlation is computed only for the pairs within the
    Hamming distance, so the cost grows with N^2 bytes rather than N^2 dot products.
    """
    n = len(sigs)
    if n < 2:
        return []
    hashes = sigs.hashes
    unit, blank, mean = _normalised(sigs.thumbs)
    rows = max(1, _CHUNK_CELLS // n)
    pairs: list[tuple[int, int]] = []
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        ii = np.arange(i0, i1)
        if rule.rule in ("dhash", "dhash+corr"):
            assert rule.max_hamming is not None
            d = hamming(hashes[i0:i1, None], hashes[None, :])
            ok = d <= rule.max_hamming
        else:
            ok = np.ones((i1 - i0, n), dtype=bool)
        ok &= np.arange(n)[None, :] > ii[:, None]
        if rule.rule in ("corr", "dhash+corr"):
            assert rule.min_corr is not None
            r, c = np.nonzero(ok)
            if rule.rule == "corr":
                corr = (unit[i0:i1] @ unit.T)[r, c].astype(np.float64)
            else:
                corr = np.einsum("ij,ij->i", unit[ii[r]], unit[c]).astype(np.float64)
            special = blank[ii[r]] | blank[c]
            if special.any():
                corr[special] = _blank_corr(blank, mean, ii[r][special], c[special])
            keep = corr >= rule.min_corr - 1e-6
            r, c = r[keep], c[keep]
        else:
            r, c = np.nonzero(ok)
        pairs.extend(zip((ii[r]).tolist(), c.tolist(), strict=True))
    return sorted(pairs)


def union_find_groups(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(n,) group ids: 0..G-1 for members of groups of two or more, -1 for singletons.

    Groups are numbered in the order of their first member.
    """
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    sizes = np.bincount(roots, minlength=n)
    out = np.full(n, -1, dtype=np.int64)
    ids: dict[int, int] = {}
    for i in range(n):
        r = int(roots[i])
        if sizes[r] > 1:
            out[i] = ids.setdefault(r, len(ids))
    return out


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Positions of the members of each group 0..G-1."""
    g = np.asarray(groups)
    if g.size == 0 or g.max(initial=-1) < 0:
        return []
    order = np.argsort(g, kind="stable")
    gs = g[order]
    starts = np.searchsorted(gs, np.arange(int(g.max()) + 1))
    ends = np.searchsorted(gs, np.arange(int(g.max()) + 1), side="right")
    return [order[s:e] for s, e in zip(starts, ends, strict=True)]


def conflicting(groups: np.ndarray, labels: np.ndarray | None) -> list[int]:
    """Ids of groups whose members carry different labels (rows differ for multi-label)."""
    if labels is None:
        return []
    lab = np.asarray(labels)
    out = []
    for gid, members in enumerate(group_members(groups)):
        first = lab[members[0]]
        if any(not np.array_equal(lab[m], first) for m in members[1:]):
            out.append(gid)
    return out


@dataclass
class DuplicateReport:
    """Groups found in a dataset, and what the policy does with them.

    Attributes:
        options: Policy and rule.
        groups: (N,) group id per sample of the *source* (-1: no duplicate).
        pairs: Number of near-duplicate pairs.
        conflicting: Ids of conflicting-label groups.
        keep: Positions (into the source order) of the samples that are written.
    """

    options: DuplicateOptions
    groups: np.ndarray
    pairs: int
    conflicting: list[int]
    keep: np.ndarray

    @property
    def kept_groups(self) -> np.ndarray:
        """Group ids of the written samples (what the file stores)."""
        return self.groups[self.keep]

    def record(
        self,
        names: Sequence[str],
        signature_policy: str,
        splits: np.ndarray | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The ``duplicates`` attribute of the file (JSON-serialisable).

        Args:
            names: Source file name of every source sample.
            signature_policy: How the signature was computed (:data:`SIGNATURE_2D` ...).
            splits: The official split of every source sample, if the converter
                keeps one (then groups across splits are counted).
        """
        members = group_members(self.groups)
        rule = self.options.rule
        out: dict[str, Any] = {
            "policy": self.options.policy,
            "rule": rule.rule,
            "max_hamming": rule.max_hamming,
            "min_corr": rule.min_corr,
            "rule_text": rule.describe(),
            "signature": signature_policy,
            "pairs": int(self.pairs),
            "groups": len(members),
            "images_in_groups": int(sum(len(m) for m in members)),
            "largest_group": int(max((len(m) for m in members), default=0)),
            "conflicting_groups": [[str(names[i]) for i in members[g]] for g in self.conflicting],
            "split_unit": {
                "group": "near-duplicate group joined with its members' patients",
                "drop": "patient id (one exemplar per group kept)",
                "keep": "patient id (groups recorded only)",
            }[self.options.policy],
        }
        if splits is not None and self.options.policy == "group":
            out["split_unit"] += " in label-fraction subsets; the official split is kept"
        if splits is not None:
            spl = np.asarray(splits)
            across = [m for m in members if len(set(spl[m].tolist())) > 1]
            out["groups_across_official_splits"] = len(across)
        if self.options.policy == "drop":
            dropped = np.setdiff1d(np.arange(len(self.groups)), self.keep)
            out["drop_rule"] = (
                "one exemplar kept per group (first in file order"
                + (", preferring test, then val" if splits is not None else "")
                + "); conflicting-label groups dropped entirely"
            )
            out["dropped_files"] = [str(names[i]) for i in dropped.tolist()]
            out["dropped"] = int(dropped.size)
        return out


def analyse(
    sigs: Signatures,
    options: DuplicateOptions,
    labels: np.ndarray | None = None,
    splits: np.ndarray | Sequence[str] | None = None,
) -> DuplicateReport:
    """Find pairs and groups and apply the policy's drop rule.

    Args:
        sigs: Signatures of every source sample in file order.
        options: Policy and rule.
        labels: Class labels (N,) or multi-labels (N, K), for conflicts.
        splits: Official split per sample; ``drop`` then keeps the exemplar of
            the most protected split (test, then val, then train).
    """
    pairs = find_pairs(sigs, options.rule)
    groups = union_find_groups(len(sigs), pairs)
    conf = conflicting(groups, labels)
    keep = np.arange(len(sigs))
    if options.policy == "drop":
        rank = {"test": 0, "val": 1, "train": 2}
        drop = np.zeros(len(sigs), dtype=bool)
        conf_set = set(conf)
        for gid, members in enumerate(group_members(groups)):
            if gid in conf_set:
                drop[members] = True
                continue
            if splits is not None:
                best = min(members.tolist(), key=lambda i: (rank.get(str(splits[i]), 3), i))
            else:
                best = int(members.min())
            drop[members] = True
            drop[best] = False
        keep = np.flatnonzero(~drop)
    return DuplicateReport(options, groups, len(pairs), conf, keep)
