"""The ``sslbench`` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.data import read_meta


def sslbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) >= 1
    return lines[-1]


def test_list_prints_every_kind() -> None:
    proc = sslbench("list")
    assert proc.returncode == 0, proc.stderr
    assert "converters:" in proc.stdout and "  busi" in proc.stdout
    assert "encoders:" in proc.stdout and "  resnet18" in proc.stdout
    assert "curators:" in proc.stdout and "  dhash" in proc.stdout
    only = sslbench("list", "converters")
    assert only.stdout.split() == sorted(only.stdout.split())
    assert "medmnist" in only.stdout.split()
    err = one_line_error(sslbench("list", "convertors"))
    assert "did you mean 'converters'" in err


def test_phantom_info_and_json(tmp_path: Path) -> None:
    out = tmp_path / "ph.h5"
    proc = sslbench("data", "phantom", "-o", str(out), "-n", "48", "--size", "32")
    assert proc.returncode == 0, proc.stderr
    info = sslbench("data", "info", str(out), "--verify")
    assert info.returncode == 0, info.stderr
    for needle in (
        "train",
        "val",
        "test",
        "masks non-empty",
        "content hash verified",
        "phantom",
        "sha256:",
    ):
        assert needle in info.stdout
    js = json.loads(sslbench("data", "info", str(out), "--json").stdout)
    assert js["n"] == 48
    assert sum(s["n"] for s in js["splits"].values()) == 48
    assert js["attributes"]["content_hash"] == read_meta(out)["content_hash"]


def test_phantom_birads_variant(tmp_path: Path) -> None:
    out = tmp_path / "birads.h5"
    proc = sslbench(
        "data", "phantom", "-o", str(out), "-n", "40", "--size", "32", "--variant", "birads"
    )
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(out)
    assert meta["class_names"] == ["benign", "malignant"] and meta["extra"]["variant"] == "birads"
    bad = sslbench("data", "phantom", "-o", str(tmp_path / "x.h5"), "--variant", "nope")
    assert bad.returncode != 0 and "--variant" in bad.stderr
    assert not (tmp_path / "x.h5").exists()


def test_existing_output_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ph.h5"
    assert sslbench("data", "phantom", "-o", str(out), "-n", "24", "--size", "32").returncode == 0
    before = out.read_bytes()
    err = one_line_error(sslbench("data", "phantom", "-o", str(out), "-n", "24", "--size", "32"))
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == before
    proc = sslbench(
        "data", "phantom", "-o", str(out), "-n", "24", "--size", "32", "--seed", "1", "--overwrite"
    )
    assert proc.returncode == 0 and out.read_bytes() != before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "convert", "bussi", "x", "-o", "y.h5"], "invalid choice: 'bussi'"),
        (["data", "convert", "busi", "{tmp}/nope", "-o", "{tmp}/o.h5"], "nope"),
        (["data", "info", "{tmp}/missing.h5"], "missing.h5: no such file"),
        (["data", "info", "{tmp}/junk.h5"], "junk.h5: not a readable HDF5 file"),
        (["data", "convert", "medmnist", "{tmp}/bad.npz", "-o", "{tmp}/o.h5"], "bad.npz"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "junk.h5").write_bytes(b"garbage")
    import numpy as np

    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    proc = sslbench(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2
    assert needle in one_line_error(proc)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.h5").exists()


def test_convert_real_breastmnist_via_cli(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "breastmnist.h5"
    proc = sslbench(
        "data", "convert", "medmnist", str(shared_data / "medmnist/breastmnist.npz"), "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "train n=546" in proc.stdout and "val   n=78" in proc.stdout
    assert "test  n=156" in proc.stdout


def planted_folder(root: Path) -> Path:
    """Two classes of noise images; ``b/b5.png`` is a copy of ``a/a1.png``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(1, 6):
            pixels = rng.integers(0, 256, (24, 24), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{cls}{i}.png")
    (root / "b" / "b5.png").write_bytes((root / "a" / "a1.png").read_bytes())
    return root


def test_convert_and_info_show_duplicates(tmp_path: Path) -> None:
    src, out = planted_folder(tmp_path / "src"), tmp_path / "f.h5"
    proc = sslbench("data", "convert", "folder", str(src), "-o", str(out), "--size", "16", "-q")
    assert proc.returncode == 0, proc.stderr
    info = sslbench("data", "info", str(out))
    assert info.returncode == 0, info.stderr
    assert "duplicates  policy group, rule dhash+corr" in info.stdout
    assert "1 pairs in 1 groups (2 images, largest 2)" in info.stdout
    assert "conflicting-label groups: 1" in info.stdout
    assert "a/a1.png [a], b/b5.png [b]" in info.stdout
    js = json.loads(sslbench("data", "info", str(out), "--json").stdout)["duplicates"]
    assert (
        js["policy"] == "group"
        and js["groups"] == 1
        and js["groups_in_file"] == [["a/a1.png", "b/b5.png"]]
    )
    assert js["conflicting_groups"] == [
        [{"file": "a/a1.png", "label": "a"}, {"file": "b/b5.png", "label": "b"}]
    ]
    from benchmark.data.converters import CONVERTERS
    from benchmark.data.info import summarize_dataset

    drop = CONVERTERS.create("folder", size=16, duplicates="drop").convert(src, tmp_path / "d.h5")
    js = summarize_dataset(drop)  # what --json prints
    assert js["n"] == 8 and js["duplicates"]["dropped_files"] == ["a/a1.png", "b/b5.png"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--duplicates", "grop"], "--duplicates: unknown policy 'grop'"),
        (["--dup-hamming", "65"], "--dup-hamming: must be an integer from 0 to 64"),
        (["--dup-rule", "corr", "--dup-corr", "1.5"], "--dup-corr: must be a number in (0, 1]"),
    ],
)
def test_bad_duplicate_options_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    src, out = planted_folder(tmp_path / "src"), tmp_path / "o.h5"
    out.write_bytes(b"precious")
    proc = sslbench("data", "convert", "folder", str(src), "-o", str(out), "--overwrite", *args)
    assert proc.returncode == 2
    assert needle in one_line_error(proc) and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"precious" and not list(tmp_path.glob(".*partial*"))
