"""The committed reference leaderboards (``results/<name>/``): exactly what their records
regenerate, no weights or data committed, and reduced reruns from scratch on the real
images (the BUSI and BreastMNIST references) that agree with the committed numbers."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from benchmark.harness.leaderboard import (
    build_leaderboard,
    load_records,
    pretraining_seed,
    strategy_of,
)
from benchmark.harness.snapshot import repeatable_figures
from tests.benchmark.harness.test_runner import cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
#: committed experiment outputs (a results folder of `sslbench run`, exported)
REFERENCES = sorted(p.parent.name for p in (REPO / "results").glob("*/index.json"))
FILES = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json")
#: Largest difference of a cell's mean (AUC over 3 seeds) from the committed one when the
#: rerun's CPU gives other weights than the reference machine's.
CROSS_CPU_TOLERANCE = 0.03


def test_the_references_are_committed() -> None:
    assert {"busi", "busi-masked", "hippocampus", "breastmnist"} <= set(REFERENCES)


@pytest.mark.parametrize("name", REFERENCES)
def test_committed_leaderboard_is_what_the_records_give(name: str, tmp_path: Path) -> None:
    ref = REPO / "results" / name
    out = build_leaderboard(ref, out=tmp_path / "lb")
    for file in FILES:
        assert (out / file).read_bytes() == (ref / file).read_bytes(), (name, file)
    curves = {p.name for p in ref.glob("curves_*.png")}
    assert curves and curves == {p.name for p in out.glob("curves_*.png")}
    index = json.loads((ref / "index.json").read_text())
    assert len(load_records(ref)) == len(index["records"]) > 0
    for doc in ("README.md", "REPORT.md", "experiment.yaml"):
        assert (ref / doc).stat().st_size > 0, (name, doc)


def json_numbers(node: object) -> list[float]:
    """Every number of a JSON document."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in json_numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in json_numbers(v)]
    if isinstance(node, int | float) and not isinstance(node, bool):
        return [float(node)]
    return []


def quoted_numbers(text: str) -> list[str]:
    """The decimal numbers a report quotes (``0.91``, ``-0.030``, ``+0.05``)."""
    return re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?!\w|\.\d)", text)


def unsupported(report: str, board: dict) -> list[str]:
    """Numbers of ``report`` that no value of ``board`` gives at the quoted precision."""
    values = json_numbers(board)
    bad = []
    for q in quoted_numbers(report):
        digits = len(q.split(".")[1])
        x = float(q)
        if not any(
            round(v, digits) == round(x, digits) or round(abs(v), digits) == abs(x) for v in values
        ):
            bad.append(q)
    return bad


def published(ref: Path) -> dict:
    """The folder's ``published.json``: figures of other papers its REPORT compares with,
    each with its source (not produced by this suite; empty if absent)."""
    path = ref / "published.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    for figure in doc["figures"]:
        assert figure["source"] and figure["model"], figure
    return doc


def cell_summaries(board: dict) -> list[float]:
    """What a board lends to another REPORT: each cell's mean, interval and metrics."""
    out: list[float] = []
    for row in board["rows"]:
        for cell in row["cells"].values():
            out += [cell[k] for k in ("mean", "ci_low", "ci_high") if cell.get(k) is not None]
            out += cell.get("values") or []
            out += json_numbers(cell.get("metrics") or {})
    return out


def paragraphs(report: str) -> list[str]:
    """Paragraphs and list items of a Markdown text."""
    return [p for p in re.split(r"\n\s*\n|\n(?=\s*[-*|] )", report) if p.strip()]


def linked_boards(ref: Path, text: str) -> dict:
    """The cell summaries of every reference folder (one with a ``leaderboard.json``)
    that ``text`` links as ``](../<name>/...)``."""
    names = sorted(set(re.findall(r"\]\(\.\./([\w.-]+)/", text)))
    boards = {n: ref.parent / n / "leaderboard.json" for n in names}
    return {n: cell_summaries(json.loads(b.read_text())) for n, b in boards.items() if b.exists()}


def unsupported_in(ref: Path, report: str) -> list[str]:
    """Numbers of a REPORT that neither its own ``leaderboard.json``, nor ``published.json``,
    nor (in the same paragraph as the link) a linked reference's cell summaries give."""
    own = {"board": json.loads((ref / "leaderboard.json").read_text()), "published": published(ref)}
    bad: list[str] = []
    for para in paragraphs(report):
        bad += unsupported(para, {**own, "linked": linked_boards(ref, para)})
    return bad


@pytest.mark.parametrize("name", REFERENCES)
def test_reports_quote_only_generated_numbers(name: str) -> None:
    """Every decimal of REPORT.md is a value of ``leaderboard.json``, a cited figure of
    another paper listed in ``published.json``, or, in a paragraph that links another
    reference folder, one of that folder's cell means, intervals or metrics."""
    ref = REPO / "results" / name
    assert unsupported_in(ref, (ref / "REPORT.md").read_text()) == [], name


def test_a_linked_reference_lends_its_cells_to_the_linking_paragraph_only() -> None:
    ref = REPO / "results" / "breastmnist-medmnist"
    link = "The reference ([results/breastmnist](../breastmnist/REPORT.md)) gets 0.826."
    assert unsupported_in(ref, link) == []
    assert unsupported_in(ref, "The reference gets 0.826.") == ["0.826"]
    # the number in the next paragraph does not borrow the link
    assert unsupported_in(ref, link + "\n\nIt gets 0.826.") == ["0.826"]
    # a leaderboard's other numbers (p-values, counts, provenance) are not lent
    board = json.loads((REPO / "results" / "breastmnist" / "leaderboard.json").read_text())
    p_value = board["comparisons"][0]["p_value"]
    assert round(p_value, 4) not in {round(v, 4) for v in cell_summaries(board)}
    # a linked folder without a leaderboard (a generator profile) lends nothing
    assert linked_boards(ref, "[grid](../ddpm-busi64-cpu/README.md)") == {}


def test_no_weights_or_data_are_committed() -> None:
    heavy = [p for p in (REPO / "results").rglob("*") if p.suffix in {".pt", ".h5", ".npz"}]
    assert not heavy


def cell_key(record: dict) -> tuple:
    return (
        strategy_of(record)["strategy"],
        record["task"]["name"],
        record["adapter"]["name"],
        record["fraction"],
        record["seed"],
    )


#: The BreastMNIST reference (issue 22) reduced to its real-image SimCLR encoder of
#: pretraining seed 0 (the same job key, hence the same weights on the same CPU) and its
#: linear probe with the scratch arm at 2 fractions x 3 seeds: about 2 min on 2 cores.
BREASTMNIST_REDUCED = [
    "pretrain.sources=[real]",
    "pretrain.seeds=[0]",
    "pretrain.exclude=[]",
    "generator=null",
    "evaluate.tasks=[{spec: breastmnist-cls, dataset: breastmnist, adapters: [linear]}]",
    "evaluate.fractions=[0.1, 1.0]",
    "evaluate.seeds=[0, 1, 2]",
    "evaluate.baselines=[scratch]",
]


def seeded_key(record: dict) -> tuple:
    return (*cell_key(record), pretraining_seed(record))


def check_reduced_rerun(ref: Path, results: Path, n_records: int) -> None:
    """A reduced rerun of a reference (encoders of pretraining seed 0 and the scratch arm,
    some evaluation seeds) against its committed records.

    Same CPU kind (the pretrained encoders' hashes equal the committed ones): every rerun
    record equals its committed one, scratch arm included. Another CPU (other weights from
    the same recipe, other float kernels for every arm): each cell's mean over the rerun's
    evaluation seeds stays within ``CROSS_CPU_TOLERANCE`` of the committed one, or within
    1.5x the spread between the reference's pretraining seeds 0 and 1 where it has both, or,
    for a rerun of fewer than 3 seeds, 2 SDs of the committed seeds. A reference of
    baselines only (no encoder hash) tells the same CPU by each cell's first logged step.
    """
    committed = {seeded_key(r): r for r in load_records(ref)}
    rerun = load_records(results)
    assert len(rerun) == n_records
    pretrained = [r for r in rerun if not r["baseline"]]
    same = {r["encoder"]["hash"] == committed[seeded_key(r)]["encoder"]["hash"] for r in pretrained}
    if not pretrained:
        # baselines only (no weights to hash): the same CPU kind repeats the first logged
        # training step of every cell exactly
        same = {
            r["extra"]["history"][0] == committed[seeded_key(r)]["extra"]["history"][0]
            for r in rerun
        }
    assert len(same) == 1, "one pretraining run (or one CPU): all or none identical"
    if same == {True}:
        # the same weights: every pretraining figure repeats too (loss, health, monitor
        # curve, pools' content hashes), the check `sslbench snapshot check` makes
        for summary in sorted(results.glob("pretrain/*/pretrain.json")):
            committed_summary = ref / "pretrain" / summary.parent.name / "pretrain.json"
            assert committed_summary.exists(), summary.parent.name
            assert repeatable_figures(json.loads(summary.read_text())) == repeatable_figures(
                json.loads(committed_summary.read_text())
            ), summary.parent.name
        for rec in rerun:
            ref_rec = committed[seeded_key(rec)]
            for metric, value in rec["metrics"].items():
                assert value == pytest.approx(ref_rec["metrics"][metric], abs=1e-9), (
                    seeded_key(rec),
                    metric,
                )
        return
    seeds = {r["seed"] for r in rerun}

    def mean(key: tuple, seed: int | None) -> float | None:
        """The committed mean of a cell over the rerun's evaluation seeds (None: no such
        pretraining seed in the reference)."""
        vals = _committed_values(committed, key, seed, seeds)
        return sum(vals) / len(vals) if vals else None

    for key, (pseed, values) in _by_cell(rerun).items():
        ref0 = mean(key, pseed)
        ref1 = mean(key, 1) if pseed == 0 else None
        assert ref0 is not None, key
        # another CPU's weights are another draw of the same recipe: compare with the
        # spread between the reference's two pretraining seeds where it has both, and a
        # rerun of fewer than 3 evaluation seeds with 2 SDs of the committed seeds
        tol = CROSS_CPU_TOLERANCE
        if ref1 is not None:
            tol = max(tol, 1.5 * abs(ref0 - ref1))
        if len(values) < 3:
            every_seed = _committed_values(committed, key, pseed)
            if len(every_seed) > 1:
                tol = max(tol, 2 * statistics.stdev(every_seed))
        assert sum(values) / len(values) == pytest.approx(ref0, abs=tol), key


def _committed_values(
    committed: dict[tuple, dict], key: tuple, pseed: int | None, seeds: set[int] | None = None
) -> list[float]:
    """A committed cell's primary metric at pretraining seed ``pseed``, over the evaluation
    ``seeds`` (all of them when None)."""
    return [
        r["metrics"][r["primary_metric"]]
        for k, r in committed.items()
        if k[:4] == key and k[5] == pseed and (seeds is None or k[4] in seeds)
    ]


def _by_cell(records: list[dict]) -> dict[tuple, tuple[int | None, list[float]]]:
    """Primary metrics per (strategy, task, adapter, fraction) with the pretraining seed."""
    out: dict[tuple, tuple[int | None, list[float]]] = {}
    for rec in records:
        key = seeded_key(rec)
        out.setdefault(key[:4], (key[5], []))[1].append(rec["metrics"][rec["primary_metric"]])
    return out


#: The BUSI reference (issue 22) reduced to its real-image SimCLR encoder of pretraining
#: seed 0 (the same job key, hence the same weights on the same CPU), no generator, and the
#: linear probe with the scratch arm at 2 fractions x 3 seeds: about 4 min on 2 cores.
BUSI_REDUCED = [
    "pretrain.sources=[real]",
    "pretrain.seeds=[0]",
    "pretrain.exclude=[]",
    "pretrain.inflation=null",
    "generator=null",
    "evaluate.tasks=[{spec: busi-cls, dataset: busi, adapters: [linear]}]",
    "evaluate.fractions=[0.25, 1.0]",
    "evaluate.seeds=[0, 1, 2]",
    "evaluate.baselines=[scratch]",
]


#: The hippocampus reference (issue 22) reduced to its real-image SimCLR encoder (the same
#: job key, hence the same weights on the same CPU, dense-probe monitor included), no
#: generator, and segmentation fine-tuning with the scratch arm at 5 % x 2 seeds: about
#: 9 min on 2 cores.
HIPPOCAMPUS_REDUCED = [
    "pretrain.sources=[real]",
    "pretrain.methods=[simclr]",
    "pretrain.curation=[null]",
    "pretrain.exclude=[]",
    "generator=null",
    "evaluate.fractions=[0.05]",
    "evaluate.seeds=[0, 1]",
    "evaluate.baselines=[scratch]",
]


#: The masked-vs-contrastive reference (issue 22) reduced to its SimCLR encoder (the same
#: job key, hence the same weights on the same CPU, kNN monitor included) and the linear
#: probe with the scratch arm at 25 % x 2 seeds: about 12 min on 2 cores.
BUSI_MASKED_REDUCED = [
    "pretrain.methods=[simclr]",
    "evaluate.tasks=[{spec: busi-cls, dataset: busi, adapters: [linear], image_size: 128}]",
    "evaluate.fractions=[0.25]",
    "evaluate.seeds=[0, 1]",
    "evaluate.baselines=[scratch]",
]


#: The MedMNIST-protocol check (issue 22) reduced to its ImageNet-stem ResNet-18 at seed 0
#: (100 epochs under MedMNIST's recipe): about 2 min on 2 cores. Baselines only, so the
#: same CPU is told by the first logged training step (no encoder hash to compare).
BREASTMNIST_MEDMNIST_REDUCED = [
    "evaluate.baseline_encoders=[resnet18]",
    "evaluate.seeds=[0]",
]


#: Reduced reruns: reference folder -> (experiment, overrides, its data source under
#: ``../shared/data`` as ``datasets.<key>.convert.src``, records the rerun writes).
REDUCED_RERUNS = {
    "breastmnist": (
        "breastmnist-ref",
        BREASTMNIST_REDUCED,
        "breastmnist",
        "medmnist/breastmnist.npz",
        2 * 3 * 2,
    ),
    "breastmnist-medmnist": (
        "breastmnist-medmnist",
        BREASTMNIST_MEDMNIST_REDUCED,
        "breastmnist",
        "medmnist/breastmnist.npz",
        1,
    ),
    "busi": ("busi-ref", BUSI_REDUCED, "busi", "busi_256", 2 * 3 * 2),
    "busi-masked": ("busi-masked", BUSI_MASKED_REDUCED, "busi", "busi_256", 2 * 2),
    "hippocampus": ("hippocampus-ref", HIPPOCAMPUS_REDUCED, "hippocampus", "msd_hippocampus", 4),
}


@pytest.mark.parametrize("name", sorted(REDUCED_RERUNS))
def test_reduced_rerun_reproduces_the_reference(
    name: str, tmp_path: Path, shared_data: Path
) -> None:
    experiment, overrides, dataset, data, n_records = REDUCED_RERUNS[name]
    results = tmp_path / f"{name}-reduced"
    src = f"datasets.{dataset}.convert.src={shared_data / data}"
    args = ["run", experiment, *overrides, src, "-o", str(results)]
    proc = cli(*args, "--no-progress", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_reduced_rerun(REPO / "results" / name, results, n_records=n_records)
