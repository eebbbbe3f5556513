"""Resuming a pretraining run: run-control keys (device, cadence, memory format) may change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark.core.errors import SSLBenchError
from pretrain.train import RUN_CONTROL_KEYS, PretrainConfig, Trainer, pretrain
from tests.conftest import one_thread
from tests.pretrain.test_train import config, weights


def test_run_control_keys_are_config_fields() -> None:
    fields = set(PretrainConfig().to_dict())
    assert set(RUN_CONTROL_KEYS) <= fields
    assert {"device", "log_every", "checkpoint_every"} <= set(RUN_CONTROL_KEYS)
    assert not {"method", "method_config", "batch_size", "steps", "seed", "amp"} & set(
        RUN_CONTROL_KEYS
    )


def test_gpu_run_resumes_on_cpu_with_other_run_control(tmp_path: Path) -> None:
    with one_thread():
        ref = pretrain(config(tmp_path), tmp_path / "ref", progress=False)
        # a run started on a GPU, killed after its step-2 checkpoint
        t = Trainer(config(tmp_path), tmp_path / "run")
        (tmp_path / "run").mkdir()
        for record in t.run(progress=False):
            if record["step"] == 3:
                break
        state_path = tmp_path / "run" / "state.pt"
        state = torch.load(state_path, weights_only=False)
        state["config"]["device"] = "cuda:0"
        torch.save(state, state_path)
        # resumed on this CPU host, logging and checkpointing at other rates
        resumed = config(
            tmp_path, device="auto", log_every=2, checkpoint_every=1, channels_last="on"
        )
        res = pretrain(resumed, tmp_path / "run", resume=True, progress=False)
    history = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [h["step"] for h in history] == [1, 2, 4], "must continue from the saved step 2"
    wa, wb = weights(ref.out_dir), weights(res.out_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed run must match"
    assert res.summary["config"]["device"] == "auto" and res.summary["device"] == "cpu"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"batch_size": 8}, "batch_size"),
        ({"method_config": {"lr": 0.1}}, "method_config"),
        ({"steps": 6}, "steps"),
        ({"amp": "bf16"}, "amp"),
    ],
)
def test_resume_refuses_a_change_of_training_settings(
    tmp_path: Path, change: dict, key: str
) -> None:
    t = Trainer(config(tmp_path, steps=4), tmp_path / "run")
    (tmp_path / "run").mkdir()
    t.save_state()
    other = config(tmp_path, device="auto", log_every=3, **{"steps": 4, **change})
    with pytest.raises(SSLBenchError, match=rf"different config \({key}\)"):
        pretrain(other, tmp_path / "run", resume=True, progress=False)
