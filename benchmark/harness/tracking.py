"""Weights & Biases tracking: offline by default, never fatal.

Every stage of a run logs one W&B run (``job_type`` = ``generate``,
``pretrain``, ``evaluate`` or ``leaderboard``; ``group`` = the experiment name)
with its resolved config, its metrics over steps and its final metrics. The
mode is ``offline`` unless the user chose otherwise (``--wandb``, the
experiment's ``wandb.mode`` or ``WANDB_MODE``); offline runs live in
``RESULTS/wandb/offline-run-*`` and are uploaded later with
``wandb sync RESULTS/wandb/offline-run-*``.

A W&B failure (no network, a bad key, a full disk) is a warning: the benchmark
goes on and its own files are the record. :func:`read_offline_run` reads an
offline run file back (config, summary, history) without a server, which the
tests use and which is handy to inspect a run before syncing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("disabled", "offline", "online")


class TrackingWarning(UserWarning):
    """W&B could not log; the benchmark continues."""


def resolve_mode(mode: str | None) -> str:
    """``mode``, else ``WANDB_MODE``, else ``offline`` (``dryrun`` counts as offline)."""
    value = (mode or os.environ.get("WANDB_MODE") or "offline").lower()
    value = {"dryrun": "offline", "run": "online", "false": "disabled"}.get(value, value)
    if value not in MODES:
        raise ValueError(f"wandb mode must be one of {', '.join(MODES)}, got {value!r}")
    return value


def _warn(what: str, exc: BaseException) -> None:
    warnings.warn(
        f"W&B {what} failed ({exc.__class__.__name__}: {exc}); continuing without it",
        TrackingWarning,
        stacklevel=3,
    )


class RunHandle:
    """A live W&B run whose every call is guarded (a failure warns once and disables it)."""

    def __init__(self, run: Any) -> None:
        self._run = run

    @property
    def active(self) -> bool:
        return self._run is not None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # W&B must never fail the benchmark
            _warn(what, exc)
            self._run = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log metrics at ``step``."""
        if self._run is not None:
            self._call("log", self._run.log, metrics, step=step)

    def log_history(self, rows: list[dict[str, Any]], step_key: str = "step") -> None:
        """Log per-step rows (e.g. a ``metrics.jsonl``) with their own step numbers.

        Only numbers are logged: nested records (the kNN monitor's ``calibration``
        provenance at step 0), strings and booleans are left out, and a row without a
        number is skipped. Rows that all carry a step are logged in step order (W&B
        drops a step below the last one logged), so series logged at different
        cadences (the training log and the kNN monitor of a pretraining run) each land
        at their own steps; rows sharing a step merge into it.
        """
        if rows and all(row.get(step_key) is not None for row in rows):
            rows = sorted(rows, key=lambda row: int(row[step_key]))  # stable
        for row in rows:
            step = row.get(step_key)
            values = {k: v for k, v in row.items() if k != step_key and _loggable(v)}
            if values:
                self.log(values, step=int(step) if step is not None else None)

    def summary(self, values: dict[str, Any]) -> None:
        """Set final metrics in the run summary."""
        if self._run is not None:
            self._call("summary", self._run.summary.update, values)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a ``wandb.Table``."""
        if self._run is None:
            return
        import wandb

        self._call(
            "table",
            lambda: self._run.log({key: wandb.Table(columns=list[Any](columns), data=rows)}),
        )

    def images(self, values: dict[str, str | Path]) -> None:
        """Log PNG files as ``wandb.Image``."""
        if self._run is None:
            return
        import wandb

        self._call(
            "image", lambda: self._run.log({k: wandb.Image(str(p)) for k, p in values.items()})
        )

    def artifact(self, path: str | Path, name: str, kind: str) -> None:
        """Log a folder or file as an artifact (e.g. an encoder checkpoint)."""
        if self._run is None:
            return
        import wandb

        def _log() -> None:
            art = wandb.Artifact(name, type=kind)
            p = Path(path)
            art.add_dir(str(p)) if p.is_dir() else art.add_file(str(p))
            self._run.log_artifact(art)

        self._call("artifact", _log)


def _loggable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Tracker:
    """Opens W&B runs for the stages of one experiment.

    Attributes:
        mode: ``disabled``, ``offline`` or ``online``.
        project: W&B project (default ``WANDB_PROJECT`` or ``sslbench``).
        entity: W&B entity (default ``WANDB_ENTITY``).
        group: Run group, the experiment name.
        dir: Folder holding ``wandb/``.
        log_checkpoints: Log encoder checkpoints as artifacts.
    """

    mode: str = "offline"
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    dir: str | Path = "."
    log_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.mode = resolve_mode(self.mode)
        self.project = self.project or os.environ.get("WANDB_PROJECT") or "sslbench"
        self.entity = self.entity or os.environ.get("WANDB_ENTITY") or None

    @contextlib.contextmanager
    def run(self, name: str, job_type: str, config: dict[str, Any]) -> Iterator[RunHandle]:
        """A W&B run for one stage; yields a handle whose calls never raise."""
        if self.mode == "disabled":
            yield RunHandle(None)
            return
        handle = RunHandle(self._init(name, job_type, config))
        try:
            yield handle
        finally:
            if handle._run is not None:
                sync_file = getattr(handle._run.settings, "sync_file", None)
                handle._call("finish", handle._run.finish)
                if self.mode == "offline" and sync_file:
                    _wait_for_exit(Path(sync_file))

    def _init(self, name: str, job_type: str, config: dict[str, Any]) -> Any:
        try:
            import wandb

            Path(self.dir).mkdir(parents=True, exist_ok=True)
            return wandb.init(
                mode=self.mode,  # type: ignore[arg-type]
                project=self.project,
                entity=self.entity,
                group=self.group,
                job_type=job_type,
                name=name,
                config=json.loads(json.dumps(config, default=str)),
                dir=str(self.dir),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:
            _warn("init", exc)
            return None


# -- reading offline run files ----------------------------------------------------------
def _wait_for_exit(path: Path, timeout: float = 60.0) -> bool:
    """Wait until an offline run file holds its ``exit`` record.

    ``run.finish()`` returns when the W&B service has answered, which can be before its
    writer has flushed the last records to disk (seen once on a loaded CI machine: the
    last history row was missing from a file read right after ``finish``). Readers of
    the run files (``read_offline_run``, ``wandb sync``) need the whole file, so the
    tracker waits for the record that ends it, at most ``timeout`` seconds.

    Returns:
        Whether the record was found; a warning is printed otherwise.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb  # type: ignore[attr-defined]

    deadline = time.monotonic() + timeout
    while True:
        try:
            for raw in _records(path):
                rec = pb.Record()  # type: ignore[attr-defined]
                rec.ParseFromString(raw)
                if rec.WhichOneof("record_type") == "exit":
                    return True
        except (OSError, ValueError, DecodeError):
            pass  # not written yet, or a record still being written
        if time.monotonic() > deadline:
            _warn("finish", TimeoutError(f"{path}: no exit record after {timeout:.0f} s"))
            return False
        time.sleep(0.05)


_BLOCK = 32768
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    """Raw records of a ``.wandb`` file (LevelDB log format, 32 KiB blocks)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            return  # truncated (a writer killed mid-record)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, summary, history and run info of an offline run folder.

    Args:
        run_dir: ``wandb/offline-run-*`` folder (or its ``run-*.wandb`` file).

    Returns:
        ``{"run": {id, name, group, job_type, project}, "config": {...},
        "summary": {...}, "history": [{...}, ...]}``.
    """
    from wandb.proto import wandb_internal_pb2 as pb  # type: ignore[attr-defined]

    p = Path(run_dir)
    files = [p] if p.is_file() else sorted(p.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": []}
    for raw in _records(files[0]):
        rec = pb.Record()  # type: ignore[attr-defined]
        try:
            rec.ParseFromString(raw)
        except Exception:  # a damaged record: keep what was read so far
            break
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {
                "id": r.run_id,
                "name": r.display_name,
                "group": r.run_group,
                "job_type": r.job_type,
                "project": r.project,
            }
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or ".".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or ".".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
    for key, value in list(out["config"].items()):
        if isinstance(value, dict) and set(value) == {"value"}:
            out["config"][key] = value["value"]  # W&B wraps config values as {"value": v}
        elif isinstance(value, dict) and "value" in value and "desc" in value:
            out["config"][key] = value["value"]
    return out
