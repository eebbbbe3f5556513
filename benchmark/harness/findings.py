"""Findings generated from a leaderboard: the pre-declared contrasts and their verdicts.

The primary contrasts are declared before any result is seen: every pretrained
strategy against the scratch baseline of its encoder, every synthetic or
mixed strategy against the real-only strategy of the same method and encoder,
a pruned real pool against the full one, and every other method's real-image
arm against SimCLR's (same encoder), per task, adapter and label fraction. Each finding quotes the difference, its
interval and the multiplicity-adjusted p-value from ``leaderboard.json`` and
gives one verdict:

* ``better`` / ``worse``: the interval excludes 0 on that side *and* the
  adjusted p-value is below ``ALPHA``;
* ``not resolved``: anything else (the data cannot tell at this budget);
* ``legacy protocol: not assessed``: records of the legacy protocol (no per-case
  outputs, arms trained differently), whose intervals cannot carry a verdict.

Where the experiment declared a primary family (:mod:`benchmark.harness.families`),
its contrasts are adjusted within it and listed first; the others keep the
adjustment over all contrasts and are listed after them as exploratory.

A contrast whose strategy or reference has a pretrained encoder that did not
learn (its pretraining health verdict, :mod:`benchmark.harness.health`) keeps
its verdict but carries the flag ``did_not_learn`` naming them, and its line
says so: such an encoder's numbers are not comparable, so no benefit is claimed
for it without the flag.

Nothing here is written by hand: REPORT files may interpret these lines, and a
test checks that every number a REPORT quotes appears in its ``leaderboard.json``.
"""

from __future__ import annotations

from typing import Any

from benchmark.harness.families import describe as describe_families

ALPHA = 0.05
VERDICTS = ("better", "worse", "not resolved", "legacy protocol: not assessed")


def verdict(comparison: dict[str, Any], higher_is_better: bool) -> str:
    """The verdict of one comparison (see the module docstring)."""
    if comparison.get("protocol") == "legacy":
        return VERDICTS[3]
    lo, hi = comparison.get("diff_ci_low"), comparison.get("diff_ci_high")
    p = comparison.get("p_adjusted")
    if lo is None or hi is None or p is None or p >= ALPHA:
        return VERDICTS[2]
    sign = 1.0 if higher_is_better else -1.0
    if sign * lo > 0 and sign * hi > 0:
        return VERDICTS[0]
    if sign * lo < 0 and sign * hi < 0:
        return VERDICTS[1]
    return VERDICTS[2]


def unhealthy_rows(board: dict[str, Any]) -> set[str]:
    """Strategies of ``board`` with a pretrained encoder that did not learn."""
    return {
        r["strategy"]
        for r in board.get("rows", [])
        if int((r.get("pretraining") or {}).get("did_not_learn") or 0) > 0
    }


def findings(board: dict[str, Any]) -> list[dict[str, Any]]:
    """One finding per pre-declared contrast of ``board`` (a leaderboard dict)."""
    out = []
    unhealthy = unhealthy_rows(board)
    for c in board.get("comparisons", []):
        hib = bool(board["tasks"][c["task"]]["higher_is_better"])
        item = {
            "task": c["task"],
            "adapter": c["adapter"],
            "fraction": c["fraction"],
            "strategy": c["strategy"],
            "reference": c["reference"],
            "contrast": f"{c['strategy']} vs {c['reference']}",
            "diff": c.get("mean_diff"),
            "ci": [c.get("diff_ci_low"), c.get("diff_ci_high")],
            "p_adjusted": c.get("p_adjusted"),
            "verdict": verdict(c, hib),
        }
        bad = [s for s in (c["strategy"], c["reference"]) if s in unhealthy]
        if bad:  # only then: findings of older leaderboards stay byte-identical
            item["did_not_learn"] = bad
        if c.get("family"):  # a declared primary family (benchmark.harness.families)
            item["family"] = c["family"]
        out.append(item)
    return out


def _num(x: Any) -> str:
    return "–" if x is None else f"{x:+.3f}"


def finding_line(f: dict[str, Any]) -> str:
    """``- busi-cls finetune@0.1: real / simclr / resnet18 vs scratch / resnet18: +0.051 [...]``."""
    lo, hi = f["ci"]
    ci = f" [{_num(lo)}, {_num(hi)}]" if lo is not None and hi is not None else ""
    p = f", adjusted p {f['p_adjusted']:.3g}" if f.get("p_adjusted") is not None else ""
    flag = ""
    if f.get("did_not_learn"):
        flag = (
            f" ⚠ not comparable: {' and '.join(f['did_not_learn'])} did not learn during "
            "pretraining"
        )
    return (
        f"- {f['task']} {f['adapter']}@{f['fraction']:g}: {f['contrast']}: "
        f"{_num(f['diff'])}{ci}{p} -> {f['verdict']}{flag}"
    )


def summary_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    """How many findings carry each verdict."""
    return {
        v: sum(f["verdict"] == v for f in items)
        for v in VERDICTS
        if any(f["verdict"] == v for f in items)
    }


def render_findings(board: dict[str, Any]) -> list[str]:
    """The Markdown findings section of a leaderboard."""
    items = findings(board)
    if not items:
        return []
    counts = summary_counts(items)
    lines = ["## Findings (generated)", ""]
    if set(counts) == {VERDICTS[3]}:
        return [
            *lines,
            f"{len(items)} pre-declared contrasts (each pretrained strategy vs scratch, synthetic "
            "and mixed vs real-only), none assessed: the records follow the legacy protocol, "
            "whose differences (in the comparison tables above) cannot carry a verdict. "
            "Rerun under the current protocol to answer the question.",
            "",
        ]
    # only where such contrasts exist: the findings of older leaderboards stay byte-identical
    methods = any(c.get("reference_kind") == "method" for c in board.get("comparisons", []))
    lines += [
        "Pre-declared contrasts: each pretrained strategy vs scratch, synthetic and mixed vs "
        "real-only"
        + (", every other method vs SimCLR on the same real images" if methods else "")
        + "; 'better'/'worse' needs the interval to exclude 0 and the "
        f"{board.get('multiplicity', 'adjusted')}-adjusted p-value to be below {ALPHA}"
        + (f" (families: {describe_families(board['families'])})." if "families" in board else "."),
        "",
        "Verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + ".",
        "",
    ]
    flagged = sum(bool(f.get("did_not_learn")) for f in items)
    if flagged:
        lines += [
            f"⚠ {flagged} of them involve an encoder that did not learn during pretraining "
            "(kNN accuracy did not rise by >= the margin, loss at chance or collapse): their "
            "verdicts say nothing about pretraining and are not comparable.",
            "",
        ]
    if "families" not in board:
        return [*lines, *(finding_line(f) for f in items), ""]
    for family, title in (
        ("primary", "Primary family: the question declared in the experiment"),
        ("secondary", "Secondary: exploratory, Holm-adjusted over all contrasts"),
    ):
        members = [f for f in items if f.get("family") == family]
        counts = summary_counts(members)
        lines += [
            f"### {title}",
            "",
            f"{len(members)} contrasts. Verdicts: "
            + (", ".join(f"{v} {n}" for v, n in counts.items()) or "none")
            + ".",
            "",
            *(finding_line(f) for f in members),
            "",
        ]
    return lines


def headline(board: dict[str, Any]) -> list[str]:
    """The short findings block printed at the end of ``sslbench run`` and ``sslbench demo``.

    Per task, at its smallest label fraction: the pretrained strategy with the largest
    gain over scratch (difference of means, its interval and its verdict), and how the
    synthetic / mixed strategies did against real-only pretraining there (verdict
    counts), and pruned real pools against the full pool; then the strategies whose
    encoders did not learn. Every number comes from the leaderboard's comparisons.
    """
    comps = [c for c in board.get("comparisons", []) if c.get("mean_diff") is not None]
    lines = []
    for task in sorted({c["task"] for c in comps}):
        spec = board["tasks"][task]
        hib = bool(spec["higher_is_better"])
        mine = [c for c in comps if c["task"] == task]
        frac = min(c["fraction"] for c in mine)
        at = [c for c in mine if c["fraction"] == frac]
        metric = spec.get("primary_metric", "metric")
        scratch = [c for c in at if c.get("reference_kind") == "scratch"]
        real = [c for c in at if c.get("reference_kind") == "real"]
        pruned = [c for c in at if c.get("reference_kind") == "unpruned"]
        method = [c for c in at if c.get("reference_kind") == "method"]
        if scratch:
            best = max(scratch, key=lambda c: c["mean_diff"] if hib else -c["mean_diff"])
            lo, hi = best.get("diff_ci_low"), best.get("diff_ci_high")
            ci = f" [{_num(lo)}, {_num(hi)}]" if lo is not None and hi is not None else ""
            lines.append(
                f"{task} ({metric}), {frac:g} of the labels: best gain over scratch "
                f"{best['strategy']} ({best['adapter']}) {_num(best['mean_diff'])}{ci} -> "
                f"{verdict(best, hib)}"
            )
        elif real or pruned or method:  # no scratch arm: the contrasts below still name their task
            lines.append(f"{task} ({metric}), {frac:g} of the labels (no scratch arm):")
        for what, group in (
            ("synthetic / mixed vs real-only pretraining", real),
            ("pruned (Less is More) vs full real pool", pruned),
            ("other methods vs SimCLR on real images", method),
        ):
            if group:
                counts = summary_counts([{"verdict": verdict(c, hib)} for c in group])
                lines.append(
                    f"  {what} at {frac:g}: "
                    + ", ".join(f"{v} {n}" for v, n in counts.items())
                    + f" (of {len(group)} contrasts)"
                )
    bad = sorted(unhealthy_rows(board))
    if bad:
        lines.append("did not learn during pretraining (rows flagged ⚠): " + ", ".join(bad))
    return lines
