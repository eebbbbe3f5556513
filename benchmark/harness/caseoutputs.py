"""The per-case test outputs of one evaluation cell, every seed on the same test cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmark.harness.casemetrics import METRICS, MetricSpec, check_classification, metric_spec
from benchmark.harness.stats import StatsInputError


@dataclass(frozen=True, eq=False)
class CaseOutputs:
    """The per-case test outputs of one cell, every seed on the same test cases.

    Build it with :meth:`classification`, :meth:`segmentation` or :meth:`from_records`.

    Attributes:
        metric: The metric name (a key of :data:`METRICS`).
        seeds: The evaluation seeds, one per row of ``probs``/``values``.
        ids: The test case ids, one per case (column).
        labels: ``(n,)`` integer classes (classification), else ``None``.
        probs: ``(S, n, C)`` probabilities (classification), else ``None``.
        values: ``(S, n)`` per-case metric values, ``nan`` where undefined
            (segmentation), else ``None``.
        subset_hashes: Per seed, a hash of the labelled subset the seed trained on
            (or ``None`` where unknown); checked by paired comparisons.
    """

    metric: str
    seeds: tuple[Any, ...]
    ids: tuple[str, ...]
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    values: np.ndarray | None = None
    subset_hashes: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        spec = metric_spec(self.metric)
        data = self.probs if spec.kind == "classification" else self.values
        if data is None or (spec.kind == "classification" and self.labels is None):
            need = "labels and probs" if spec.kind == "classification" else "values"
            raise StatsInputError(f"metric {self.metric!r} needs per-case {need}")
        s, n = data.shape[:2]
        if len(self.seeds) != s or len(set(self.seeds)) != s:
            raise StatsInputError(f"seeds {list(self.seeds)} must be {s} distinct seeds")
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise StatsInputError(f"ids must be {n} distinct test case ids")
        if self.labels is not None and self.labels.shape != (n,):
            raise StatsInputError(f"labels must be ({n},), got {self.labels.shape}")
        if self.probs is not None and self.labels is not None:
            n_cls = self.probs.shape[2]
            if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= n_cls):
                raise StatsInputError(
                    f"labels must be classes in [0, {n_cls}) (probs have {n_cls})"
                )
            if not np.all(np.isfinite(self.probs)):
                raise StatsInputError("probs must be finite")
        if self.subset_hashes is not None and len(self.subset_hashes) != s:
            raise StatsInputError(f"subset_hashes must hold one entry per seed ({s})")

    @classmethod
    def classification(
        cls,
        labels: Any,
        probs: Any,
        metric: str = "auc",
        seeds: Sequence[Any] | None = None,
        ids: Sequence[str] | None = None,
        subset_hashes: Sequence[str | None] | None = None,
    ) -> CaseOutputs:
        """Classification outputs: ``labels`` ``(n,)``, ``probs`` ``(S, n, C)`` (or ``(S, n)`` binary)."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim == 2:
            p = np.stack([1.0 - p, p], axis=2)
        if p.ndim != 3:
            raise StatsInputError(f"probs must be (S, n, C), got shape {p.shape}")
        y, _ = check_classification(labels, p[0])
        return cls(
            metric,
            tuple(range(p.shape[0]) if seeds is None else seeds),
            tuple(str(i) for i in (range(p.shape[1]) if ids is None else ids)),
            labels=y,
            probs=p,
            subset_hashes=None if subset_hashes is None else tuple(subset_hashes),
        )

    @classmethod
    def segmentation(
        cls,
        values: Any,
        metric: str = "dice",
        seeds: Sequence[Any] | None = None,
        ids: Sequence[str] | None = None,
        subset_hashes: Sequence[str | None] | None = None,
    ) -> CaseOutputs:
        """Segmentation outputs: per-case ``values`` ``(S, n)``, ``None``/``nan`` where undefined."""
        v = np.asarray(
            [[np.nan if x is None else x for x in row] for row in values], dtype=np.float64
        )
        if v.ndim != 2:
            raise StatsInputError(f"values must be (S, n), got shape {v.shape}")
        return cls(
            metric,
            tuple(range(v.shape[0]) if seeds is None else seeds),
            tuple(str(i) for i in (range(v.shape[1]) if ids is None else ids)),
            values=v,
            subset_hashes=None if subset_hashes is None else tuple(subset_hashes),
        )

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], metric: str | None = None
    ) -> CaseOutputs:
        """The outputs of one cell from its evaluation records (one record per seed).

        Args:
            records: Records holding ``seed``, ``per_case`` (``ids`` and ``labels``/
                ``probs`` or per-case ``dice``/``hd95``) and optionally
                ``subset.train_sha256``.
            metric: The metric; default: the records' ``primary_metric``.

        Raises:
            StatsInputError: A record lacks a key, two records share a seed, or the
                seeds were evaluated on different test cases (ids or labels).
        """
        if not records:
            raise StatsInputError("no records: a cell needs at least one seed")
        name = metric if metric is not None else records[0].get("primary_metric")
        if name is None:
            raise StatsInputError("records lack 'primary_metric'; pass metric=")
        spec = metric_spec(str(name))
        rows = []
        for rec in records:
            for key in ("seed", "per_case"):
                if key not in rec:
                    raise StatsInputError(f"a record lacks {key!r} (seed {rec.get('seed')})")
            pc = rec["per_case"]
            need = ("ids", "labels", "probs") if spec.kind == "classification" else ("ids", name)
            for key in need:
                if key not in pc:
                    raise StatsInputError(f"record of seed {rec['seed']} lacks 'per_case.{key}'")
            rows.append((rec["seed"], pc, (rec.get("subset") or {}).get("train_sha256")))
        rows.sort(key=lambda r: (0, r[0], "") if isinstance(r[0], int) else (1, 0, str(r[0])))
        seeds = [r[0] for r in rows]
        dup = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if dup:
            raise StatsInputError(f"several records for seed(s) {', '.join(dup)} of one cell")
        ids = [str(i) for i in rows[0][1]["ids"]]
        position = {i: k for k, i in enumerate(ids)}
        aligned = []
        for seed, pc, _ in rows:
            these = [str(i) for i in pc["ids"]]
            if sorted(these) != sorted(ids):
                raise StatsInputError(
                    f"seed {seed} was tested on other cases than seed {seeds[0]}: "
                    + id_diff(ids, these)
                )
            order = np.argsort([position[i] for i in these])
            aligned.append((pc, order))
        hashes = tuple(r[2] for r in rows)
        if spec.kind == "segmentation":
            vals = [
                np.asarray([np.nan if x is None else x for x in pc[name]], dtype=np.float64)[order]
                for pc, order in aligned
            ]
            return cls.segmentation(vals, str(name), seeds, ids, hashes)
        labels0 = np.asarray(aligned[0][0]["labels"])[aligned[0][1]]
        for (pc, order), seed in zip(aligned, seeds, strict=True):
            if not np.array_equal(np.asarray(pc["labels"])[order], labels0):
                raise StatsInputError(f"seed {seed} has other per_case.labels than seed {seeds[0]}")
        probs = [np.asarray(pc["probs"], dtype=np.float64)[order] for pc, order in aligned]
        return cls.classification(labels0, probs, str(name), seeds, ids, hashes)

    @property
    def spec(self) -> MetricSpec:
        """The metric's :class:`MetricSpec`."""
        return METRICS[self.metric]

    @property
    def n_seeds(self) -> int:
        """The number of seeds."""
        return len(self.seeds)

    @property
    def n_cases(self) -> int:
        """The number of test cases."""
        return len(self.ids)

    def on_weights(self, wt: np.ndarray) -> np.ndarray:
        """The metric of every seed on every resample: ``(S, B)``.

        Args:
            wt: ``(n, B)`` case weights (counts), column ``b`` for resample ``b``.
        """
        f = self.spec.weighted
        if self.probs is not None and self.labels is not None:
            return f(self.labels, self.probs, wt)
        return f(self.values, wt)

    def per_seed(self) -> np.ndarray:
        """The metric of every seed on all test cases: ``(S,)``."""
        return self.on_weights(np.ones((self.n_cases, 1)))[:, 0]

    def select(
        self, seeds: Sequence[Any] | None = None, ids: Sequence[str] | None = None
    ) -> CaseOutputs:
        """These outputs restricted/reordered to ``seeds`` and test case ``ids``."""
        si = [self.seeds.index(s) for s in (self.seeds if seeds is None else seeds)]
        pos = {i: k for k, i in enumerate(self.ids)}
        ci = [pos[i] for i in (self.ids if ids is None else ids)]
        return replace(
            self,
            seeds=tuple(self.seeds[k] for k in si),
            ids=tuple(self.ids[k] for k in ci),
            labels=None if self.labels is None else self.labels[ci],
            probs=None if self.probs is None else self.probs[np.ix_(si, ci)],
            values=None if self.values is None else self.values[np.ix_(si, ci)],
            subset_hashes=None
            if self.subset_hashes is None
            else tuple(self.subset_hashes[k] for k in si),
        )


def id_diff(a: Sequence[str], b: Sequence[str]) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))

    def _show(xs: list[str]) -> str:
        return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

    parts = []
    if only_a:
        parts.append(f"{len(only_a)} id(s) only in the first: {_show(only_a)}")
    if only_b:
        parts.append(f"{len(only_b)} id(s) only in the second: {_show(only_b)}")
    return "; ".join(parts) or "same ids"
