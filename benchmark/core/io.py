"""Atomic file output, hashing and provenance shared by every stage.

Outputs are written to a temporary name in the destination folder and renamed
into place only when complete, so an interrupted or failed write never leaves a
half-written file under the final name and never destroys an existing output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.core.allocator import allocator_state
from benchmark.core.errors import OutputExistsError

#: Packages whose versions are recorded in every output's provenance.
TRACKED_PACKAGES = (
    "sslbench",
    "torch",
    "torchvision",
    "lightly",
    "monai",
    "timm",
    "numpy",
    "scipy",
    "scikit-learn",
    "h5py",
    "nibabel",
    "pillow",
    "wandb",
)


def check_output_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Return ``path`` as a Path, refusing an existing file unless ``overwrite``.

    Raises:
        OutputExistsError: if the file exists and ``overwrite`` is false.
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise OutputExistsError(f"{out}: output path is a directory")
    return out


def partial_path(final: Path) -> Path:
    """A unique temporary sibling of ``final`` that never matches its name."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.partial-", dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get normal permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``final``, on error delete it.

    Example::

        with atomic_path("out.h5", overwrite=False) as tmp:
            write_everything(tmp)
    """
    final_p = check_output_path(final, overwrite)
    tmp = partial_path(final_p)
    try:
        yield tmp
        tmp.replace(final_p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsync, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None (standard JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return json_safe(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted, standard JSON (NaN -> null) atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the tracked packages (``"missing"`` if absent)."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def git_commit(repo: str | os.PathLike[str] | None = None) -> str:
    """Current git commit of the sslbench checkout (``+dirty`` if modified), or ``unknown``."""
    where = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    """A short description of the machine running the job."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "allocator": allocator_state(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def provenance() -> dict[str, Any]:
    """Versions, git commit, hardware, command line and UTC time of this process."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "hardware": hardware(),
        "argv": sys.argv,
    }


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, ``None`` if missing or unreadable."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def source_fingerprint(path: str | os.PathLike[str]) -> str:
    """A location-free fingerprint of a source file or folder, for job keys.

    A file: its SHA-256. A folder: the SHA-256 of every file's relative path and
    size (cheap for thousands of images, and independent of where the folder lies),
    so a moved folder keeps its fingerprint and an edited one (files added, removed,
    replaced by one of another size) changes it.
    """
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()
