"""Optimizer benchmark: one Adam / AdamW step over an encoder, per PyTorch kernel.

PyTorch runs Adam and AdamW on CPU parameters with its single-tensor loop unless
``foreach`` or ``fused`` is asked for; sslbench builds every Adam-family optimizer
with :func:`benchmark.core.optim.adam` (fused where possible). This prints the
milliseconds of one optimizer step for each kernel next to one forward + backward
pass of the same model (batch of 32 single-channel images), so the share of the
optimizer in a training step can be read off.

Usage::

    python perf/bench_optim.py [--encoder resnet18] [--size 32] [--batch-size 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmark.core.optim import adam
from pretrain.encoders import create_encoder


def _ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (state allocation)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_encoder(args.encoder, img_size=args.size)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(args.batch_size, 1, args.size, args.size)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model.forward_features(x).mean().backward()

    fb = _ms(forward_backward, max(3, args.repeats // 4))
    out = {
        "encoder": args.encoder,
        "parameters_m": round(sum(p.numel() for p in params) / 1e6, 2),
        "threads": torch.get_num_threads(),
        "forward_backward_ms": round(fb, 1),
    }
    for p in params:
        p.grad = torch.randn_like(p)
    kernels = {
        "single-tensor": lambda: torch.optim.AdamW(params, foreach=False),
        "foreach": lambda: torch.optim.AdamW(params, foreach=True),
        "fused (sslbench)": lambda: adam(params),
    }
    for name, make in kernels.items():
        opt = make()
        out[f"adamw_step_ms[{name}]"] = round(_ms(opt.step, args.repeats), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
