"""A pre-declared primary family of contrasts for the multiplicity correction.

By default every pre-declared contrast of a leaderboard (see
:mod:`benchmark.harness.findings`) is one Holm family: with five arms, three
fractions and two adapters that is some 60 contrasts, and a difference must then
reach an unadjusted p of about 0.001 to be called. An experiment may declare the
contrasts that answer its own question as a *primary* family
(``evaluate.statistics.primary``), as a trial declares its primary endpoints: Holm
then runs within the primary family alone. Every other contrast (*secondary*,
labelled exploratory) keeps its adjustment over all the contrasts of the
leaderboard, exactly as without a declaration, so a declaration sharpens its own
question and relaxes nothing else. It is part of the resolved experiment: the
committed experiment file and its git history show when it was made, which the
REPORT must set beside the time of the first record.

A selector is a mapping of any of ``kind`` (the reference kind: ``scratch``,
``real``, ``real-standard``, ``unpruned``, ``method``), ``task``, ``adapter`` and
``fraction``; a contrast is primary when it matches every field of at least one
selector. Example (Wolf et al.'s masked-vs-contrastive question)::

    statistics: {primary: [{kind: method}]}
"""

from __future__ import annotations

from typing import Any

from benchmark.harness.stats import holm, rounded

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
            number = isinstance(value, int | float) and not isinstance(value, bool)
            v = float(value) if key == "fraction" and number else value
            if (key == "fraction" and not number) or v not in allowed[key]:
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
    field, so older leaderboards stay byte-identical). With one, each comparison
    carries ``family``: a ``primary`` one is adjusted within the primary family, a
    ``secondary`` one keeps its adjustment over all comparisons.

    Args:
        comparisons: The leaderboard's comparisons (``p_value`` None where untested).
        primary: The declared selectors, or None.
    """
    overall = holm([c.get("p_value") for c in comparisons])
    for c, p in zip(comparisons, overall, strict=True):
        c["p_adjusted"] = rounded(p)
    if not primary:
        return
    members = [c for c in comparisons if is_primary(c, primary)]
    for c in comparisons:
        c["family"] = "secondary"
    for c, p in zip(members, holm([c.get("p_value") for c in members]), strict=True):
        c["family"], c["p_adjusted"] = "primary", rounded(p)


def summary(
    comparisons: list[dict[str, Any]], primary: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The leaderboard's ``families`` entry (None without a declaration)."""
    if not primary:
        return None
    mine = [c for c in comparisons if c.get("family") == "primary"]
    return {
        "declared": primary,
        "primary": len(mine),
        "primary_tested": sum(c.get("p_value") is not None for c in mine),
        "secondary": len(comparisons) - len(mine),
        "correction": "Holm within the primary family; secondary: Holm over all contrasts",
    }


def describe(families: dict[str, Any]) -> str:
    """One sentence on the families, for the leaderboard and its findings."""
    sels = "; ".join(", ".join(f"{k} {v}" for k, v in sel.items()) for sel in families["declared"])
    n, tested = families["primary"], families.get("primary_tested", families["primary"])
    size = f"{n} contrasts" + (f", {tested} of them tested" if tested != n else "")
    if n == 0:
        size = "no contrast of this leaderboard matches the declaration"
    return (
        f"primary family ({size}; declared in the experiment: {sels}), Holm-adjusted within "
        f"itself; the secondary, exploratory contrasts ({families['secondary']}) Holm-adjusted "
        "over all contrasts, as without a declaration"
    )
