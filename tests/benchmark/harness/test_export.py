"""``sslbench export``: the committable part of a results folder, current jobs only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.core.errors import DataError
from benchmark.harness.export import export_results


def write(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_export_skips_the_outputs_of_superseded_jobs(tmp_path: Path) -> None:
    """A sampling config changed mid-run (hippocampus-ref: 120 -> 300 volumes): the old
    sampling job's report, any pretraining folder of an old key and the marker of a job no
    longer planned stay behind."""
    run = tmp_path / "run"
    index = {
        "experiment_hash": "e",
        "compute_s": {},
        "jobs": [
            {"job": "generate/train", "key": "aaa111", "stage": "generate", "status": "ok"},
            {"job": "generate/sample", "key": "bbb222", "stage": "generate", "status": "ok"},
            {"job": "pretrain/real-simclr", "key": "ccc333", "stage": "pretrain", "status": "ok"},
        ],
        "records": ["evaluate/t-1/records/t/linear/x/frac1_seed0.json"],
    }
    write(run / "index.json", json.dumps(index))
    write(run / "experiment.yaml", "name: x\n")
    write(run / "jobs" / "generate__sample.json")
    write(run / "jobs" / "pretrain__real-vicreg.json")  # a job no longer in the experiment
    write(run / index["records"][0])
    write(run / "generator" / "ddpm-aaa111" / "generator.json")
    write(run / "synthetic" / "ddpm-bbb222-report" / "report.json")
    write(run / "synthetic" / "ddpm-old999-report" / "report.json")  # superseded sampling
    write(run / "synthetic" / "ddpm-bbb222.h5", "data")  # never exported
    write(run / "pretrain" / "real-simclr-ccc333" / "pretrain.json")
    write(run / "pretrain" / "real-simclr-old888" / "pretrain.json")  # superseded pretraining
    out = tmp_path / "out"
    copied = {p.relative_to(out).as_posix() for p in export_results(run, out)}
    assert copied == {
        "index.json",
        "experiment.yaml",
        "jobs/generate__sample.json",
        index["records"][0],
        "generator/ddpm-aaa111/generator.json",
        "synthetic/ddpm-bbb222-report/report.json",
        "pretrain/real-simclr-ccc333/pretrain.json",
    }


def test_export_of_a_folder_without_an_index_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no index.json"):
        export_results(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
