"""Tests of the real / synthetic / mixed pretraining sources on tiny HDF5 files.

Every image is a constant whose value identifies it: real train images are
10..21, synthetic images 100.., and real val/test images 255, so a batch
tells exactly which images it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmark.core.errors import DataError, SSLBenchError, UnknownNameError
from benchmark.data.dataset import H5Dataset
from benchmark.data.h5format import DatasetMeta, H5Writer
from pretrain.sources import SOURCES, Source, create_source, mixed_counts

N_TRAIN, N_HELD_OUT = 12, 8
HELD_OUT = 255


def write_h5(
    path: Path,
    values: Sequence[int],
    splits: Sequence[str],
    shape: tuple[int, ...] = (1, 8, 8),
    dtype: type = np.uint8,
) -> Path:
    """A tiny sslbench file whose image ``i`` is the constant ``values[i]``."""
    meta = DatasetMeta(name=path.stem, modality="test")
    with H5Writer(
        path, n=len(values), image_shape=shape, meta=meta, image_dtype=dtype, label_shape=None
    ) as w:
        for i, (v, s) in enumerate(zip(values, splits, strict=True)):
            img = np.full(shape, v, dtype=np.uint8)
            w.write(
                i,
                img if dtype == np.uint8 else (img / 255.0).astype(np.float32),
                patient_id=f"p{i // 2}",
                split=s,
            )
    return path


@pytest.fixture
def real_h5(tmp_path: Path) -> Path:
    values = [10 + i for i in range(N_TRAIN)] + [HELD_OUT] * N_HELD_OUT
    splits = ["train"] * N_TRAIN + ["val"] * (N_HELD_OUT // 2) + ["test"] * (N_HELD_OUT // 2)
    order = np.random.default_rng(0).permutation(len(values))  # interleave the splits
    return write_h5(tmp_path / "real.h5", [values[i] for i in order], [splits[i] for i in order])


@pytest.fixture
def synth_h5(tmp_path: Path) -> Path:
    return write_h5(tmp_path / "synth.h5", [100 + i for i in range(10)], ["train"] * 10)


def ids(batch: torch.Tensor) -> list[int]:
    """The identifying constant of each image of a batch."""
    flat = batch.flatten(1)
    assert torch.equal(flat.amin(1), flat.amax(1))
    return (flat[:, 0] * 255).round().long().tolist()


def test_registry_names() -> None:
    assert {"real", "synthetic", "mixed"} <= set(SOURCES.names())
    with pytest.raises(UnknownNameError, match="mixd"):
        create_source("mixd", batch_size=2, seed=0)


def test_real_never_yields_val_or_test(real_h5: Path) -> None:
    src = create_source("real", real=real_h5, batch_size=5, seed=1)
    seen: set[int] = set()
    for step in range(40):
        batch = src.batch(step)
        assert batch.shape == (5, 1, 8, 8) and batch.dtype == torch.float32
        seen.update(ids(batch))
    assert HELD_OUT not in seen
    assert seen == {10 + i for i in range(N_TRAIN)}


def test_without_replacement_within_an_epoch(real_h5: Path) -> None:
    src = create_source("real", real=real_h5, batch_size=4, seed=3)
    first_epoch = [i for step in range(3) for i in ids(src.batch(step))]
    assert sorted(first_epoch) == [10 + i for i in range(N_TRAIN)]


def test_deterministic_per_seed_and_step(real_h5: Path, synth_h5: Path) -> None:
    kw: dict[str, Any] = dict(real=real_h5, synthetic=synth_h5, synthetic_ratio=0.5, batch_size=6)
    a = create_source("mixed", seed=5, **kw)
    b = create_source("mixed", seed=5, **kw)
    c = create_source("mixed", seed=6, **kw)
    batches_a = [a.batch(s) for s in range(8)]
    for step in reversed(range(8)):  # any order, any object: same batch
        assert torch.equal(b.batch(step), batches_a[step])
    assert any(not torch.equal(c.batch(s), batches_a[s]) for s in range(8))


def test_resume_gives_same_batches_and_stats(real_h5: Path, synth_h5: Path) -> None:
    kw: dict[str, Any] = dict(
        real=real_h5, synthetic=synth_h5, synthetic_ratio=0.25, batch_size=8, seed=2
    )
    full = create_source("mixed", **kw)
    batches = [full.batch(s) for s in range(10)]
    resumed = create_source("mixed", **kw)
    state = create_source("mixed", **kw)
    for s in range(6):
        state.batch(s)
    resumed.load_state_dict(state.state_dict())
    for s in range(6, 10):
        assert torch.equal(resumed.batch(s), batches[s])
    assert resumed.stats() == full.stats()


def test_load_state_dict_rejects_other_runs(real_h5: Path, synth_h5: Path, tmp_path: Path) -> None:
    src = create_source("real", real=real_h5, batch_size=4, seed=0)
    other_seed = create_source("real", real=real_h5, batch_size=4, seed=1)
    with pytest.raises(SSLBenchError, match="seed"):
        other_seed.load_state_dict(src.state_dict())
    changed = write_h5(
        tmp_path / "changed.h5", [10 + i for i in range(N_TRAIN)], ["train"] * N_TRAIN
    )
    other_data = create_source("real", real=changed, batch_size=4, seed=0)
    with pytest.raises(DataError, match="changed.h5"):
        other_data.load_state_dict(src.state_dict())


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_mixed_ratio_exact_in_every_batch(real_h5: Path, synth_h5: Path, ratio: float) -> None:
    src = create_source(
        "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=ratio, batch_size=10, seed=0
    )
    n_real, n_syn = mixed_counts(ratio, 10)
    assert n_syn == round(ratio * 10)
    for step in range(12):
        values = ids(src.batch(step))
        assert sum(v >= 100 for v in values) == n_syn
        assert sum(v < 100 for v in values) == n_real
        assert HELD_OUT not in values


def test_stats_and_distinct_counts(real_h5: Path, synth_h5: Path) -> None:
    src = create_source(
        "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=0.5, batch_size=8, seed=0
    )
    real_seen: set[int] = set()
    syn_seen: set[int] = set()
    for step in range(5):
        for v in ids(src.batch(step)):
            (syn_seen if v >= 100 else real_seen).add(v)
        st = src.stats()
        assert st["steps"] == step + 1
        assert st["images_seen"] == (step + 1) * 8
        assert st["images_seen_real"] == st["images_seen_synthetic"] == (step + 1) * 4
        assert st["distinct_real"] == len(real_seen)
        assert st["distinct_synthetic"] == len(syn_seen)
    assert st["pool_real"] == N_TRAIN and st["pool_synthetic"] == 10
    assert st["epochs_synthetic"] == pytest.approx(2.0)
    assert src.stats(steps=100)["images_seen"] == 800


def test_compute_matching_across_sources(real_h5: Path, synth_h5: Path) -> None:
    for name in ("real", "synthetic", "mixed"):
        src = create_source(name, real=real_h5, synthetic=synth_h5, batch_size=4, seed=0)
        assert src.stats(steps=25)["images_seen"] == 100
    real_only = create_source("real", real=real_h5, batch_size=4, seed=0).stats(steps=2)
    assert real_only["images_seen_synthetic"] == 0 and real_only["pool_synthetic"] == 0


def test_describe_records_files_and_hashes(real_h5: Path, synth_h5: Path) -> None:
    src = create_source(
        "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=0.5, batch_size=4, seed=0
    )
    d = src.describe()
    assert d["name"] == "mixed" and d["synthetic_ratio"] == 0.5
    assert d["per_batch"] == {"real": 2, "synthetic": 2}
    for kind, path in (("real", real_h5), ("synthetic", synth_h5)):
        info = d[kind]
        assert info["path"] == str(path)
        assert info["content_hash"] == H5Dataset(path).meta["content_hash"]
    assert d["real"]["pool_size"] == N_TRAIN
    assert d["real"]["split"] == "train"


def test_synthetic_uses_train_split_or_all(tmp_path: Path) -> None:
    marked = write_h5(tmp_path / "marked.h5", [100, 101, 102, 250], ["train"] * 3 + ["val"])
    src = create_source("synthetic", synthetic=marked, batch_size=3, seed=0)
    assert {v for s in range(5) for v in ids(src.batch(s))} == {100, 101, 102}
    unmarked = write_h5(tmp_path / "unmarked.h5", [100, 101, 102], ["test"] * 3)
    src = create_source("synthetic", synthetic=unmarked, batch_size=3, seed=0)
    assert sorted(ids(src.batch(0))) == [100, 101, 102]
    assert src.describe()["synthetic"]["split"] == "all"


def test_float_files(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "float.h5", [51, 102], ["train"] * 2, dtype=np.float32)
    batch = create_source("real", real=path, batch_size=2, seed=0).batch(0)
    assert sorted(ids(batch)) == [51, 102] and batch.dtype == torch.float32


def test_source_is_a_source(real_h5: Path) -> None:
    src = create_source("real", real=real_h5, batch_size=2, seed=0)
    assert isinstance(src, Source)
    assert src.image_shape == (1, 8, 8)
    assert "RealSource" in repr(src)


# -- errors -------------------------------------------------------------------


def test_pool_smaller_than_batch(real_h5: Path, synth_h5: Path) -> None:
    with pytest.raises(DataError, match=r"real\.h5.*12 train images.*13"):
        create_source("real", real=real_h5, batch_size=13, seed=0)
    with pytest.raises(DataError, match=r"synth\.h5.*10 train images.*14 synthetic"):
        create_source(
            "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=0.7, batch_size=20, seed=0
        )
    # 12 real images suffice for the real part of a mixed batch of 20 at ratio 0.5 ...
    create_source(
        "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=0.5, batch_size=20, seed=0
    )
    # ... but not at ratio 0.25 (15 real per batch)
    with pytest.raises(DataError, match=r"real\.h5.*15 real"):
        create_source(
            "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=0.25, batch_size=20, seed=0
        )


def test_shape_mismatch(real_h5: Path, tmp_path: Path) -> None:
    other = write_h5(tmp_path / "big.h5", [100] * 4, ["train"] * 4, shape=(1, 16, 16))
    with pytest.raises(DataError, match=r"big\.h5.*\(1, 16, 16\).*\(1, 8, 8\)"):
        create_source("mixed", real=real_h5, synthetic=other, batch_size=4, seed=0)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval(real_h5: Path, synth_h5: Path, ratio: float) -> None:
    with pytest.raises(SSLBenchError, match="synthetic_ratio"):
        create_source(
            "mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=ratio, batch_size=4, seed=0
        )


def test_missing_files(real_h5: Path, tmp_path: Path) -> None:
    with pytest.raises(SSLBenchError, match="synthetic dataset file"):
        create_source("synthetic", real=real_h5, batch_size=4, seed=0)
    with pytest.raises(SSLBenchError, match="real dataset file"):
        create_source("mixed", synthetic=real_h5, batch_size=4, seed=0)
    with pytest.raises(DataError, match=r"nothere\.h5"):
        create_source("real", real=tmp_path / "nothere.h5", batch_size=4, seed=0)


def test_real_file_without_train_split(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "heldout.h5", [1, 2, 3, 4], ["val", "val", "test", "test"])
    with pytest.raises(DataError, match=r"heldout\.h5.*train"):
        create_source("real", real=path, batch_size=2, seed=0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 0, "seed": 0}, "batch_size"),
        ({"batch_size": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments(real_h5: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(SSLBenchError, match=match):
        create_source("real", real=real_h5, **kw)
    src = create_source("real", real=real_h5, batch_size=2, seed=0)
    with pytest.raises(SSLBenchError, match="step"):
        src.batch(-1)


# -- mixing modes, real weight, pool size (issue 20) ---------------------------------
def test_add_mode_samples_the_weighted_union(real_h5: Path, synth_h5: Path) -> None:
    """Mode ``add``: the synthetic pool added to the real one, real images weighted ``w``;
    the share follows from the pools (12 real, 10 synthetic), the batch keeps its size and
    ``synthetic_ratio`` is not used."""
    kw: dict[str, Any] = {"real": real_h5, "synthetic": synth_h5, "mode": "add", "seed": 3}
    union = create_source("mixed", synthetic_ratio=None, batch_size=11, **kw)
    assert union.synthetic_ratio == pytest.approx(10 / 22)  # recorded: the pooled share
    for step in range(6):
        values = ids(union.batch(step))
        assert len(values) == 11 and sum(v >= 100 for v in values) == 5  # round(11 x 10/22)
    weighted = create_source("mixed", real_weight=10, batch_size=13, **kw)
    assert weighted.synthetic_ratio == pytest.approx(10 / 130)
    assert sum(v >= 100 for v in ids(weighted.batch(0))) == 1  # round(13 x 10/130)
    smaller = create_source("mixed", pool_size=6, batch_size=12, **kw)
    assert sum(v >= 100 for v in ids(smaller.batch(0))) == 4  # round(12 x 6/18)
    real = create_source("real", real=real_h5, batch_size=11, seed=3)
    assert union.stats(steps=7)["images_seen"] == real.stats(steps=7)["images_seen"] == 77
    assert union.describe()["mode"] == "add" and union.describe()["real_weight"] == 1.0
    # replace mode at the default weight describes itself as before modes existed
    assert "mode" not in create_source("mixed", real=real_h5, synthetic=synth_h5,
                                       batch_size=4, seed=3).describe()  # fmt: skip


@pytest.mark.parametrize(
    ("ratio", "weight", "expected"),
    [
        (0.5, 1.0, (5, 5)),
        (0.5, 4.0, (8, 2)),  # q = 0.5 / (0.5 + 4 x 0.5) = 0.2
        (0.75, 3.0, (5, 5)),  # q = 0.75 / (0.75 + 0.75) = 0.5
    ],
)
def test_real_weight_sets_the_synthetic_share(
    real_h5: Path, synth_h5: Path, ratio: float, weight: float, expected: tuple
) -> None:
    assert mixed_counts(ratio, 10, weight) == expected
    src = create_source("mixed", real=real_h5, synthetic=synth_h5, synthetic_ratio=ratio,
                        real_weight=weight, batch_size=10, seed=0)  # fmt: skip
    for step in range(4):
        values = ids(src.batch(step))
        assert (sum(v < 100 for v in values), sum(v >= 100 for v in values)) == expected


def test_pool_size_keeps_the_first_samples(real_h5: Path, tmp_path: Path) -> None:
    """``pool_size``: the first N synthetic samples, or as many as the real train split
    (``matched``); recorded with the size of the file it was taken from."""
    big = write_h5(tmp_path / "big.h5", [100 + i for i in range(20)], ["train"] * 20)
    four = create_source("synthetic", synthetic=big, pool_size=4, batch_size=4, seed=0)
    assert {v for s in range(6) for v in ids(four.batch(s))} == {100, 101, 102, 103}
    assert four.describe()["synthetic"]["pool_size"] == 4
    assert four.describe()["synthetic"]["pool_of"] == 20
    matched = create_source("synthetic", synthetic=big, real=real_h5, pool_size="matched",
                            batch_size=4, seed=0)  # fmt: skip
    assert matched.stats(steps=1)["pool_synthetic"] == N_TRAIN
    assert {v for s in range(6) for v in ids(matched.batch(s))} == set(range(100, 100 + N_TRAIN))
    mixed = create_source("mixed", real=real_h5, synthetic=big, pool_size="matched",
                          batch_size=4, seed=0)  # fmt: skip
    assert mixed.stats(steps=1)["pool_synthetic"] == N_TRAIN
    whole = create_source("synthetic", synthetic=big, pool_size="all", batch_size=4, seed=0)
    assert "pool_of" not in whole.describe()["synthetic"]


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"pool_size": 11}, DataError, "pool_size 11 asked for, but the file has 10"),
        ({"pool_size": "matched"}, DataError, "pool_size 12 asked for"),  # 12 real > 10
        ({"pool_size": 0}, SSLBenchError, "pool_size must be a positive int"),
        ({"pool_size": "half"}, SSLBenchError, "pool_size must be a positive int"),
        ({"mode": "inflate"}, SSLBenchError, r"mode must be one of \['replace', 'add'\]"),
        ({"synthetic_ratio": None}, SSLBenchError, "synthetic_ratio must be in"),
        ({"real_weight": 0.0}, SSLBenchError, "real_weight must be > 0"),
    ],
)
def test_bad_mixing_options(
    real_h5: Path, synth_h5: Path, kw: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        create_source("mixed", real=real_h5, synthetic=synth_h5, batch_size=4, seed=0, **kw)


def test_matched_pool_needs_the_real_file(synth_h5: Path) -> None:
    with pytest.raises(SSLBenchError, match="'matched' needs the real dataset file"):
        create_source("synthetic", synthetic=synth_h5, pool_size="matched", batch_size=4, seed=0)


def test_resume_refuses_another_mode_or_pool(real_h5: Path, synth_h5: Path) -> None:
    kw: dict[str, Any] = {"real": real_h5, "synthetic": synth_h5, "batch_size": 4, "seed": 0}
    replace = create_source("mixed", **kw)
    replace.batch(0)
    with pytest.raises(SSLBenchError, match="mode was 'replace', now 'add'"):
        create_source("mixed", mode="add", **kw).load_state_dict(replace.state_dict())
    with pytest.raises(SSLBenchError, match="synthetic pool had 10 images, now 5"):
        create_source("mixed", pool_size=5, **kw).load_state_dict(replace.state_dict())
    again = create_source("mixed", **kw)
    again.load_state_dict(replace.state_dict())
    assert again.steps_done == 1
