"""Families of pre-declared contrasts for the multiplicity correction.

By default every pre-declared contrast of a leaderboard (see
:mod:`benchmark.harness.findings`) is one Holm family: with five arms, three
fractions and two adapters that is some 60 contrasts, and a difference must then
reach an unadjusted p of about 0.001 to be called. An experiment may instead
declare, before any of its results exists, the contrasts that answer its own
question as a *primary* family (``evaluate.statistics.primary``), as a trial
declares its primary endpoints. Holm then runs within the primary family and,
separately, within the remaining *secondary* contrasts, which the findings label
exploratory. The declaration is part of the resolved experiment, so the
committed ``experiment.yaml`` and its git history show that it came before the
results.

A selector is a mapping of any of ``kind`` (the reference kind: ``scratch``,
``real``, ``real-standard``, ``unpruned``, ``method``), ``task``, ``adapter`` and
``fraction``; a contrast is primary when it matches every field of at least one
selector. Example (Wolf et al.'s masked-vs-contrastive question)::

    statistics: {primary: [{kind: method}]}
"""

from __future__ import annotations

from typing import Any

from benchmark.harness.stats import holm

KINDS = ("scratch", "real", "real-standard", "unpruned", "method")
SELECTOR_KEYS = ("kind", "task", "adapter", "fraction")


def primary_problem(
    primary: Any, tasks: dict[str, list[str]], fractions: list[float], where: str
) -> str | None:
    """What is wrong with a primary-family declaration, or None when it is valid.

    Args:
        primary: The declared selectors (a non-empty list of mappings).
        tasks: Task name -> its adapters.
        fractions: The evaluation's label fractions.
        where: Location of the declaration, for the message.
    """
    if not isinstance(primary, list) or not primary:
        return f"{where}: a non-empty list of selectors, e.g. [{{kind: method}}]"
    allowed: dict[str, list[Any]] = {
        "kind": list(KINDS),
        "task": sorted(tasks),
        "adapter": sorted({a for names in tasks.values() for a in names}),
        "fraction": [float(f) for f in fractions],
    }
    for i, sel in enumerate(primary):
        at = f"{where}[{i}]"
        if not isinstance(sel, dict) or not sel:
            return f"{at}: a mapping of {', '.join(SELECTOR_KEYS)}"
        unknown = sorted(set(sel) - set(SELECTOR_KEYS))
        if unknown:
            return f"{at}: unknown key(s) {unknown}; use {', '.join(SELECTOR_KEYS)}"
        for key, value in sel.items():
            v = float(value) if key == "fraction" and isinstance(value, int | float) else value
            if v not in allowed[key]:
                return f"{at}.{key}: {value!r} is not one of {allowed[key]}"
    return None


def is_primary(comparison: dict[str, Any], primary: list[dict[str, Any]]) -> bool:
    """Whether ``comparison`` matches every field of at least one selector."""
    fields: dict[str, Any] = {
        "kind": comparison.get("reference_kind"),
        "task": comparison.get("task"),
        "adapter": comparison.get("adapter"),
        "fraction": comparison.get("fraction"),
    }

    def match(sel: dict[str, Any]) -> bool:
        return all(
            fields[k] is not None and float(fields[k]) == float(v)
            if k == "fraction"
            else fields[k] == v
            for k, v in sel.items()
        )

    return any(match(sel) for sel in primary)


def adjust(comparisons: list[dict[str, Any]], primary: list[dict[str, Any]] | None) -> None:
    """Set each comparison's Holm-adjusted p-value (``p_adjusted``) in place.

    Without a declaration all comparisons form one family (and carry no ``family``
    field, so older leaderboards stay byte-identical); with one, each comparison
    carries ``family`` (``primary`` or ``secondary``) and is adjusted within it.
    """
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for c in comparisons:
        family = None if not primary else ("primary" if is_primary(c, primary) else "secondary")
        if family is not None:
            c["family"] = family
        groups.setdefault(family, []).append(c)
    for members in groups.values():
        for c, p in zip(members, holm([c.get("p_value") for c in members]), strict=True):
            c["p_adjusted"] = None if p is None else round(float(p), 6)


def summary(
    comparisons: list[dict[str, Any]], primary: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The leaderboard's ``families`` entry (None without a declaration)."""
    if not primary:
        return None
    n = sum(c.get("family") == "primary" for c in comparisons)
    return {
        "declared": primary,
        "primary": n,
        "secondary": len(comparisons) - n,
        "correction": "Holm within each family",
    }


def describe(families: dict[str, Any]) -> str:
    """One sentence on the families, for the leaderboard and its findings."""
    sels = "; ".join(", ".join(f"{k} {v}" for k, v in sel.items()) for sel in families["declared"])
    return (
        f"primary family ({families['primary']} contrasts, declared in the experiment before "
        f"its results: {sels}) and secondary family ({families['secondary']}, exploratory), "
        "Holm-adjusted within each"
    )
