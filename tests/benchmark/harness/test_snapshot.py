"""``sslbench snapshot``: a run killed mid-grid, saved light, restored on a bare folder, resumed.

The phantom grid stands for a reference run that spans sessions: the snapshot must hold
no data or weights, the resumed run must regenerate the same jobs (checked figure by
figure) and keep every cell recorded before the snapshot byte for byte.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmark.core.errors import DataError
from benchmark.harness.experiment import load_experiment
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.snapshot import check_resume, restore_run, snapshot_run
from tests.benchmark.harness.test_runner import CLI, TINY, cli, env, records_of

pytestmark = pytest.mark.slow


def test_snapshot_of_a_killed_run_resumes_elsewhere_with_the_same_figures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*CLI, "run", str(TINY), "-o", str(run), "--no-progress"],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(records_of(run)) < 3:
        time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = {p.relative_to(run) for p in records_of(run)}
    # a record of older weights of the same arm (a superseded encoder) stays behind
    first = run / sorted(recorded)[0]
    label = first.parent.name.rsplit("-", 1)[0]
    stale = first.parent.with_name(f"{label}-deadbeef") / first.name
    stale.parent.mkdir()
    stale.write_text(first.read_text())

    snap = tmp_path / "partial-runs" / "phantom-tiny"
    saved = cli("snapshot", "save", str(run), str(snap))
    assert saved.returncode == 0, saved.stderr
    assert f"({len(recorded)} cell records)" in saved.stdout
    files = {p.relative_to(snap) for p in snap.rglob("*") if p.is_file()}
    # light: no data, synthetic images, weights or W&B runs; nothing where the runner
    # would take a job for done although its outputs stayed behind
    assert not [f for f in files if f.suffix in (".h5", ".pt", ".safetensors", ".wandb")]
    assert {f.parts[0] for f in files} <= {
        "experiment.yaml",
        "experiment.json",
        "jobs",
        "evaluate",
        "pretrain-summaries",
        "generator-summaries",
        "snapshot.json",
    }
    assert {f for f in files if "records" in f.parts} == recorded
    meta = json.loads((snap / "snapshot.json").read_text())
    assert meta["experiment"] == "phantom-tiny" and meta["records"] == len(recorded)
    jobs = plan_jobs(load_experiment(TINY), run.resolve())
    pretrained = [j for j in jobs if j.stage == "pretrain" and (j.out / "pretrain.json").exists()]
    assert pretrained  # the kill came during evaluation
    for job in pretrained:
        assert Path("pretrain-summaries", job.out.name, "pretrain.json") in files
    generator = {f.parts[1] for f in files if f.parts[0] == "generator-summaries"}
    train = next(j for j in jobs if j.id == "generate/train")
    assert generator == {train.out.name}  # (the tiny grid writes no sampling report)
    assert (snap / "generator-summaries" / train.out.name / "generator.json").exists()
    for marker in (snap / "jobs").glob("*.json"):
        assert json.loads(marker.read_text())["status"] == "ok"

    # restore on a bare folder (the next session's machine) and resume
    resumed = tmp_path / "resumed"
    restored = cli("snapshot", "restore", str(snap), str(resumed))
    assert restored.returncode == 0, restored.stderr
    assert not (resumed / "pretrain-summaries").exists()
    assert not (resumed / "snapshot.json").exists()
    done = cli("run", str(TINY), "-o", str(resumed), "--no-progress", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(records_of(resumed)) == sum(len(j.cells) for j in jobs)
    check = cli("snapshot", "check", str(snap), str(resumed))
    assert check.returncode == 0, check.stdout
    assert "repeat the snapshot's figures" in check.stdout

    # a figure that did not repeat is named, and so is a rewritten record
    summary = next(snap.glob("pretrain-summaries/*/pretrain.json"))
    data = json.loads(summary.read_text())
    data["health"]["loss"]["last"] += 1e-9
    summary.write_text(json.dumps(data))
    record = sorted(recorded)[0]
    (resumed / record).write_text((resumed / record).read_text().replace("{", "{ ", 1))
    problems = check_resume(snap, resumed)
    assert any(f"pretrain/{summary.parent.name}.health.loss.last: " in p for p in problems)
    assert any(str(record) in p and "rewritten" in p for p in problems)
    bad = cli("snapshot", "check", str(snap), str(resumed))
    assert bad.returncode == 1 and "2 difference(s)" in bad.stdout, bad.stdout
    # one arm whose records of another task carry other weights
    index = json.loads((resumed / "index.json").read_text())
    arm = sorted(recorded)[0].parent.name
    other = next(resumed / r for r in index["records"] if f"/{arm}/" in r and "phantom-seg" in r)
    rec = json.loads(other.read_text())
    rec["encoder"]["hash"] = "0" * 64
    other.write_text(json.dumps(rec))
    assert f"{arm.rsplit('-', 1)[0]}: records of 2 different encoder weights" in check_resume(
        snap, resumed
    )

    # bad input loses nothing: restoring into a used folder, saving a folder that is not a run
    before = sorted(p.relative_to(resumed) for p in resumed.rglob("*"))
    again = cli("snapshot", "restore", str(snap), str(resumed))
    assert again.returncode == 2 and "not an empty folder" in again.stderr
    assert sorted(p.relative_to(resumed) for p in resumed.rglob("*")) == before
    kept = sorted(p.relative_to(snap) for p in snap.rglob("*"))
    wrong = cli("snapshot", "save", str(tmp_path / "partial-runs"), str(snap))
    assert wrong.returncode == 2 and "experiment.yaml" in wrong.stderr
    swapped = cli("snapshot", "save", str(snap), str(resumed))  # arguments the wrong way
    assert swapped.returncode == 2 and "is a snapshot" in swapped.stderr
    assert sorted(p.relative_to(snap) for p in snap.rglob("*")) == kept
    assert sorted(p.relative_to(resumed) for p in resumed.rglob("*")) == before
    missing = cli("snapshot", "check", str(tmp_path / "nowhere"), str(resumed))
    assert missing.returncode == 2 and "snapshot.json" in missing.stderr


def test_a_save_replaces_only_a_snapshot_and_never_the_run(tmp_path: Path) -> None:
    """Re-saving after more cells ran leaves no file of the earlier snapshot behind; a
    folder that is not a snapshot (a forgotten NAME: ``partial-runs`` itself), the run
    folder and anything inside it are refused and left as they were."""
    run = tmp_path / "run"
    done = cli("run", str(TINY), "-o", str(run), "--no-progress", "--stage", "data")
    assert done.returncode == 0, done.stdout + done.stderr
    snap = tmp_path / "partial-runs" / "tiny"
    snapshot_run(run, snap)
    (snap / "evaluate" / "stale").mkdir(parents=True)
    (snap / "evaluate" / "stale" / "old.json").write_text("{}")
    written = snapshot_run(run, snap)
    assert not (snap / "evaluate" / "stale").exists()
    assert {p.relative_to(snap).as_posix() for p in written} == {
        "experiment.yaml",
        "experiment.json",
        "jobs/data__phantom.json",
        "snapshot.json",
    }
    (tmp_path / "partial-runs" / "README.md").write_text("keep me")
    for dest, message in (
        (tmp_path / "partial-runs", "is not a snapshot"),
        (run, "cannot be the run folder"),
        (run / "jobs", "cannot be the run folder"),
        (tmp_path, "cannot be the run folder"),
    ):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(DataError, match=message):
            snapshot_run(run, dest)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "partial-runs" / "README.md").read_text() == "keep me"
    # a restore writes a new folder whole
    restored = tmp_path / "restored"
    assert restore_run(snap, restored) == 3
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(DataError, match="not a folder of `sslbench snapshot save`"):
        restore_run(run, tmp_path / "other")
    assert not (tmp_path / "other").exists()
