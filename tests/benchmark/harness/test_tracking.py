"""W&B tracking with the real wandb in offline mode, read back from its run files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from benchmark.harness.tracking import (
    Tracker,
    TrackingWarning,
    _records,
    _wait_for_exit,
    read_offline_run,
    resolve_mode,
)


def test_offline_run_files_hold_config_history_and_summary(tmp_path: Path) -> None:
    tracker = Tracker(mode="offline", project="p", group="exp", dir=tmp_path)
    config = {"method": "simclr", "steps": 3, "nested": {"lr": 0.1}}
    with tracker.run("pretrain/x", "pretrain", config) as wb:
        assert wb.active
        wb.log_history([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5, "lr": 0.1}])
        wb.summary({"final_loss": 1.5})
        wb.table("cells", ["a", "b"], [[1, "x"], [2, "y"]])
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["run"]["name"] == "pretrain/x"
    assert run["run"]["group"] == "exp" and run["run"]["job_type"] == "pretrain"
    assert run["run"]["project"] == "p"
    assert run["config"]["method"] == "simclr" and run["config"]["nested"] == {"lr": 0.1}
    assert [h["loss"] for h in run["history"] if "loss" in h] == [2.0, 1.5]
    assert run["summary"]["final_loss"] == 1.5
    assert run["summary"]["cells._type"] == "table-file"


def test_the_tracker_waits_for_the_exit_record(tmp_path: Path) -> None:
    """A run file cut before its last records (an unflushed writer) is waited on, then
    reported; the whole file is accepted at once."""
    tracker = Tracker(mode="offline", dir=tmp_path)
    with tracker.run("x", "pretrain", {}) as wb:
        wb.log_history([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}])
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert _wait_for_exit(run_file, timeout=0.0)
    data = run_file.read_bytes()
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[: len(data) - 8])  # the exit record, the last one, is torn
    assert len(list(_records(cut))) == len(list(_records(run_file))) - 1
    with pytest.warns(TrackingWarning, match="no exit record"):
        assert not _wait_for_exit(cut, timeout=0.2)


def test_disabled_mode_writes_nothing(tmp_path: Path) -> None:
    with Tracker(mode="disabled", dir=tmp_path).run("x", "evaluate", {}) as wb:
        assert not wb.active
        wb.log({"a": 1.0})
        wb.summary({"b": 2.0})
    assert not (tmp_path / "wandb").exists()


def test_a_wandb_failure_is_a_warning_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where W&B wants a folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(mode="offline", dir=blocker).run("x", "pretrain", {"a": 1}) as wb:
            assert not wb.active
            wb.log({"loss": 1.0}, step=0)  # no-ops, no exceptions
            wb.summary({"final": 1.0})
    assert any(issubclass(w.category, TrackingWarning) for w in caught)
    assert "continuing without it" in str(caught[0].message)


def test_resolve_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="wandb mode"):
        resolve_mode("sometimes")
    with pytest.raises(FileNotFoundError):
        read_offline_run(Path("/nonexistent/run"))
