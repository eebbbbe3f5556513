"""Data-parallel pretraining across processes with ``torch.distributed``.

``sslbench pretrain`` runs unchanged under ``torchrun`` (one process per GPU,
or several CPU processes on ``gloo``)::

    torchrun --standalone --nproc_per_node 4 -m benchmark.cli pretrain --config run.yaml -o out

How a step is split. The *global* batch of step ``t`` is the same as in a
single-process run: the source draws it from ``(seed, t)``
(:mod:`pretrain.sources`), so a ``mixed`` batch holds exactly
``round(ratio * B)`` synthetic images globally, and rank ``r`` of ``W`` takes
rows ``[r*B/W, (r+1)*B/W)`` of it. Augmentation parameters are drawn for the
whole global batch and each rank applies its rows
(:func:`pretrain.augment.make_views` with ``shard``), so the views are those
of the single-process run. Losses that compare samples across the batch
(NT-Xent, Barlow Twins, VICReg, the DINO centre) gather embeddings across
ranks with lightly's ``gather_distributed``; batch norm is synchronised
(:class:`torch.nn.SyncBatchNorm`) on CUDA, where torch supports it, and is
per rank on CPU. Gradients are averaged with one all-reduce of a flat buffer
per step (the arithmetic of ``DistributedDataParallel``, without overlapping
communication with the backward pass, which keeps every method's own
momentum/teacher networks and multi-forward steps outside a wrapper), so all
ranks hold identical weights after every step.

Rank 0 alone writes checkpoints, metrics and the encoder; the others wait at
a barrier. A run may be resumed with a different number of ranks: the state
holds no per-rank data, and the batch of step ``t`` does not depend on ``W``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmark.core.errors import SSLBenchError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1``: not distributed).

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        backend: ``gloo``, ``nccl`` or ``""`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size``."""
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def env_info() -> DistInfo:
    """The rank and world size that ``torchrun`` put in the environment (1 process if none)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise SSLBenchError(f"torchrun environment: {exc}") from None
    return DistInfo(rank, world, local)


def setup(device: torch.device, batch_size: int) -> tuple[DistInfo, torch.device]:
    """Join the process group of a ``torchrun`` launch, if any.

    Args:
        device: The device the run asked for (``cuda`` becomes ``cuda:LOCAL_RANK``).
        batch_size: The global batch size; it must divide evenly across ranks.

    Returns:
        The process's :class:`DistInfo` and the device it trains on.
    """
    info = env_info()
    if not info.enabled:
        return info, device
    if batch_size % info.world_size:
        raise SSLBenchError(
            f"batch_size {batch_size} does not divide across {info.world_size} processes; "
            "use a multiple of the number of processes"
        )
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(info.rank, info.world_size, info.local_rank, backend), device


def gather_across_ranks() -> bool:
    """Whether losses should gather embeddings from other ranks (a multi-process job)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sync_batch_norm(module: torch.nn.Module, info: DistInfo, device: torch.device) -> bool:
    """Convert batch norm to :class:`torch.nn.SyncBatchNorm` where torch supports it (CUDA).

    Returns whether the module was converted. Parameter and buffer names are
    unchanged, so checkpoints load into the plain encoder.
    """
    if not info.enabled or device.type != "cuda":
        return False
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return True


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting weights)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """Average the gradients of ``module`` over the ranks with one flat all-reduce."""
    if not info.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(info.world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict:
    """The mean of each scalar over the ranks (the logged loss of the global batch)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t.div_(info.world_size)
    return dict(zip(keys, t.tolist(), strict=True))


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op when not distributed)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, config: str | Path, out: str | Path, *args: str) -> list[str]:
    """``sslbench pretrain --config CONFIG -o OUT ARGS`` under ``torchrun`` with ``nproc``
    processes on this node (``--standalone`` rendezvous); one process without torchrun
    for ``nproc == 1``."""
    import sys

    cli = ["-m", "benchmark.cli", "pretrain", "--config", str(config), "-o", str(out), *args]
    if nproc == 1:
        return [sys.executable, *cli]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable, *launcher, *cli]


def launch_torchrun(config: Any, out_dir: str | Path, nproc: int) -> dict[str, Any]:
    """Run (or resume) ``sslbench pretrain`` for ``config`` under ``torchrun`` on this node.

    Used by the experiment runner for ``pretrain.nproc_per_node > 1``: the
    resolved config is written to ``OUT/launch.yaml`` and ``nproc`` processes
    train it (``--standalone`` rendezvous; each CPU process gets an equal share
    of the cores as OpenMP threads). Returns the run summary (``pretrain.json``).
    """
    import subprocess

    import yaml

    from benchmark.core.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    launch = out / "launch.yaml"
    atomic_write_text(launch, yaml.safe_dump(config.to_dict(), sort_keys=False))
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    cmd = torchrun_command(nproc, launch, out, "--resume", "--no-progress")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise SSLBenchError(
            f"torchrun with {nproc} processes failed (exit {proc.returncode}) for {out}: "
            + " | ".join(tail)
        )
    summary = json.loads((out / "pretrain.json").read_text())
    assert isinstance(summary, dict)
    return summary
