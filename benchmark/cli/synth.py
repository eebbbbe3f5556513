"""The ``sslbench synth`` command group: train, sample, phantom, import, report.

Usage::

    sslbench synth train --data real.h5 -o gen/ [--steps 2000 --batch-size 16 --lr 1e-4
        --channels 32,64,64 --attention-levels 0,0,1 --size S --seed 0 --sample-every 500
        --checkpoint-every 500 --ema-decay 0.999] [--resume | --overwrite]
    sslbench synth sample gen/ -n 1000 -o synth.h5 [--scheduler ddim|ddpm --steps 50
        --batch-size 16 --seed 0 --size S --overwrite]
    sslbench synth phantom -n 1000 -o synth.h5 [--size 64 --dims 2 --seed 0]
    sslbench synth import SRC -o synth.h5 [--key K --range auto|unit|signed --size S
        --like real.h5 -n N]
    sslbench synth report synth.h5 --real real.h5 -o report/ [--extractor CKPT
        --max-images 2000 --pairs 500 --seed 0]

Every synthetic file has uint8 images, no labels or masks, every sample in
split ``train`` and the generator's provenance in ``meta.extra.generator``.
User errors raise :class:`benchmark.core.errors.SSLBenchError` subclasses, which
``sslbench`` prints as one line before exiting with status 2.

Heavy modules (torch, MONAI, timm) are imported inside the handlers so that
building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmark.core.errors import SSLBenchError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _bool_list(text: str) -> tuple[bool, ...]:
    values = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    try:
        return tuple(values[v.strip().lower()] for v in text.split(",") if v.strip())
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated 0/1 flags, got {text!r}"
        ) from None


def _cmd_train(args: argparse.Namespace) -> int:
    from pretrain.generators.ddpm_train import DDPMConfig, train_ddpm

    if args.kind == "ldm":
        return _train_ldm(args)
    if args.set:
        raise SSLBenchError("--set is for the ldm kind's options; the ddpm has its own flags")
    names = (
        "steps",
        "batch_size",
        "lr",
        "channels",
        "attention_levels",
        "size",
        "seed",
        "sample_every",
        "checkpoint_every",
        "ema_decay",
        "num_res_blocks",
        "warmup_steps",
        "num_train_timesteps",
        "schedule",
        "device",
    )
    config = DDPMConfig(**{k: getattr(args, k) for k in names if getattr(args, k) is not None})
    return _train(train_ddpm, config, args)


def _train(train: Any, config: Any, args: argparse.Namespace) -> int:
    """Run a generator's ``train_*`` function with the shared flags and report its folder."""
    start = time.perf_counter()
    out = train(
        args.data,
        args.output,
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"generator checkpoint: {out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _train_ldm(args: argparse.Namespace) -> int:
    """``synth train --kind ldm``: the shared flags and ``--set`` for the ldm's own options
    (``ae_steps``, ``ae_channels``, ``latent_channels``, ``kl_weight``, ``profile``, ...)."""
    import yaml

    from pretrain.generators.ldm_train import LDMConfig, train_ldm

    shared = [
        *("steps", "batch_size", "lr", "channels", "attention_levels", "size", "seed"),
        *("sample_every", "checkpoint_every", "ema_decay", "num_res_blocks"),
        *("warmup_steps", "num_train_timesteps", "device"),
    ]
    if args.schedule is not None:
        raise SSLBenchError(
            "--schedule: the ldm uses the scaled-linear schedule of latent diffusion"
        )
    options = {k: getattr(args, k) for k in shared if getattr(args, k) is not None}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SSLBenchError(f"--set {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return _train(train_ldm, LDMConfig.from_options(options), args)


def _cmd_sample(args: argparse.Namespace) -> int:
    from benchmark.core.io import read_json
    from pretrain.generators import GENERATORS
    from pretrain.generators.base import write_synthetic

    shape = None
    if args.like:
        from benchmark.data.h5format import read_meta

        shape = tuple(read_meta(args.like)["image_shape"])
    folder = Path(args.generator)
    folder = folder.parent if folder.is_file() else folder
    kind = (read_json(folder / "generator.json") or {}).get("generator", "ddpm")
    gen = GENERATORS.get(kind).load(  # type: ignore[attr-defined]
        args.generator,
        scheduler=args.scheduler,
        steps=args.steps,
        device=_device(args.device),
        size=args.size,
        output_shape=shape,
    )
    start = time.perf_counter()
    out = write_synthetic(
        gen,
        args.n,
        args.output,
        seed=args.seed,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    dt = time.perf_counter() - start
    print(
        f"wrote {out}: {args.n} images {gen.image_shape} with {gen.scheduler_kind} "
        f"{gen.steps} steps in {dt:.1f}s ({args.n / dt:.2f} images/s)"
    )
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from pretrain.generators.base import write_synthetic
    from pretrain.generators.phantom import PhantomGenerator

    gen = PhantomGenerator(size=args.size, dims=args.dims)
    start = time.perf_counter()
    out = write_synthetic(
        gen,
        args.n,
        args.output,
        seed=args.seed,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"wrote {out}: {args.n} phantom images {gen.image_shape} in "
        f"{time.perf_counter() - start:.1f}s"
    )
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from benchmark.core.io import check_output_path
    from pretrain.generators.base import write_synthetic
    from pretrain.generators.importer import ImportedImages

    check_output_path(args.output, args.overwrite)  # before reading a large source
    gen = ImportedImages(
        args.src, key=args.key, value_range=args.range, size=args.size, like=args.like
    )
    n = args.n or gen.num_available
    out = write_synthetic(
        gen, n, args.output, overwrite=args.overwrite, batch_size=256, progress=False
    )
    info = gen.describe()
    print(
        f"wrote {out}: {n} images {gen.image_shape} from {info['source']} "
        f"({info['original_dtype']}, {info['interpretation']})"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pretrain.generators.report import synth_report

    report = synth_report(
        args.synthetic,
        args.real,
        args.output,
        extractor=args.extractor,
        max_images=args.max_images,
        n_pairs=args.pairs,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    mem, ms = report["memorisation"], report["ms_ssim"]
    print(
        f"FID {report['fid']:.4g} ({report['extractor']['name']}; real halves "
        f"{report['fid_real_halves'] or float('nan'):.4g}); MS-SSIM synthetic "
        f"{ms['synthetic']['mean']:.3f} vs real {ms['real']['mean']:.3f}; "
        f"closer than median real NN: {mem['fraction_closer_than_median_real_nn']:.3f}"
    )
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0


def _device(name: str) -> str:
    from benchmark.core.device import resolve_device

    return str(resolve_device(name))


def _common(p: argparse.ArgumentParser, progress: bool = True) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_synth_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``synth`` with its subcommands to an ``argparse`` subparsers object."""
    synth = subparsers.add_parser(
        "synth", help="train generators, sample, import and report on synthetic images"
    )
    ssub = synth.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    t = ssub.add_parser(
        "train", help="train a DDPM (or a latent diffusion model) on the train split of a real file"
    )
    t.add_argument(
        "--kind",
        choices=("ddpm", "ldm"),
        default="ddpm",
        help="ddpm: pixel space (default); ldm: autoencoder + latent DDPM (Medical Diffusion)",
    )
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="ldm options, e.g. --set ae_steps=600 --set profile=gpu (see LDMConfig)",
    )
    t.add_argument("--data", required=True, help="real sslbench .h5 (train split only is read)")
    t.add_argument("-o", "--output", required=True, help="run / checkpoint folder")
    t.add_argument("--steps", type=int, help="optimizer steps (default 2000)")
    t.add_argument("--batch-size", type=int, help="images per step (default 16)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    t.add_argument("--warmup-steps", type=int, help="linear lr warmup steps (default 100)")
    t.add_argument("--channels", type=_int_list, help="U-Net channels per level (32,64,64)")
    t.add_argument(
        "--attention-levels",
        type=_bool_list,
        help="0/1 per level (default: attention at the lowest resolution only)",
    )
    t.add_argument("--num-res-blocks", type=int, help="residual blocks per level (default 1)")
    t.add_argument("--num-train-timesteps", type=int, help="diffusion steps T (default 1000)")
    t.add_argument("--schedule", choices=("linear_beta", "scaled_linear_beta", "cosine"))
    t.add_argument("--size", type=int, help="resize H and W to SIZE (default: as stored)")
    t.add_argument("--seed", type=int, help="seed of weights, batches and noise (default 0)")
    t.add_argument("--sample-every", type=int, help="sample grid PNG every N steps (0: never)")
    t.add_argument("--checkpoint-every", type=int, help="save state.pt every N steps (0: end)")
    t.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights (0.999)")
    t.add_argument("--device", help="cpu, cuda or auto (default auto)")
    t.add_argument("--resume", action="store_true", help="continue from state.pt exactly")
    _common(t)
    t.set_defaults(handler=_cmd_train)

    s = ssub.add_parser("sample", help="sample a trained DDPM or LDM into an sslbench .h5")
    s.add_argument("generator", help="folder written by synth train (or its generator.pt)")
    s.add_argument("-n", type=int, required=True, help="number of images")
    s.add_argument("-o", "--output", required=True, help="output .h5")
    s.add_argument(
        "--scheduler",
        choices=("ddim", "ddpm"),
        default="ddim",
        help="ddim (deterministic, few steps) or ddpm (ancestral, all T steps)",
    )
    s.add_argument("--steps", type=int, help="sampling steps (ddim default 50; ddpm: T only)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0, help="same seed -> identical images")
    s.add_argument("--size", type=int, help="expected image size (must equal the trained one)")
    s.add_argument(
        "--like",
        help="real .h5 whose grid the samples are resized to (for a generator trained smaller)",
    )
    s.add_argument("--device", default="auto", help="cpu, cuda or auto")
    _common(s)
    s.set_defaults(handler=_cmd_sample)

    ph = ssub.add_parser("phantom", help="procedural phantom images as a synthetic source")
    ph.add_argument("-n", type=int, required=True, help="number of images")
    ph.add_argument("-o", "--output", required=True, help="output .h5")
    ph.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ph.add_argument("--dims", type=int, choices=(2, 3), default=2)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--batch-size", type=int, default=64)
    _common(ph)
    ph.set_defaults(handler=_cmd_phantom)

    im = ssub.add_parser("import", help="convert images generated by another tool")
    im.add_argument("src", help="folder of PNG/JPEG images, .npz, .npy or .h5")
    im.add_argument("-o", "--output", required=True, help="output .h5")
    im.add_argument("--key", help="array (npz) or dataset (hdf5) holding the images")
    im.add_argument(
        "--range",
        choices=("auto", "unit", "signed"),
        default="auto",
        help="float intensity range: auto, unit [0,1] or signed [-1,1]",
    )
    im.add_argument("--size", type=int, help="resize H and W to SIZE")
    im.add_argument("--like", help="real .h5 whose (C, H, W) the images must match")
    im.add_argument("-n", type=int, help="import only the first N images")
    _common(im, progress=False)
    im.set_defaults(handler=_cmd_import)

    r = ssub.add_parser("report", help="fidelity, diversity and memorisation report")
    r.add_argument("synthetic", help="synthetic .h5")
    r.add_argument("--real", required=True, help="real .h5 (its train split is the reference)")
    r.add_argument("-o", "--output", required=True, help="report folder")
    r.add_argument(
        "--extractor",
        help="sslbench encoder checkpoint for FID features (default: seeded random ResNet-18)",
    )
    r.add_argument("--max-images", type=int, default=2000, help="images per set (default 2000)")
    r.add_argument("--pairs", type=int, default=500, help="MS-SSIM pairs (default 500)")
    r.add_argument("--seed", type=int, default=0)
    _common(r, progress=False)
    r.set_defaults(handler=_cmd_report)
    return synth


__all__ = ["add_synth_command"]
