"""The ``sslbench`` command line.

Every subcommand is a small function taking the parsed arguments. Errors a user
can cause (bad files, unknown names, existing outputs) raise
:class:`benchmark.errors.SSLBenchError`; :func:`main` prints them as one line
``sslbench: error: ...`` and exits with status 2. Set ``SSLBENCH_DEBUG=1`` to
see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmark import __version__
from benchmark.allocator import tune_allocator
from benchmark.errors import SSLBenchError

Handler = Callable[[argparse.Namespace], int]


# -- data ----------------------------------------------------------------------
def _cmd_data_convert(args: argparse.Namespace) -> int:
    from benchmark.data.converters import CONVERTERS

    cls = CONVERTERS.get(args.kind)
    options = {k: v for k, v in vars(args).items() if k not in _COMMON_DESTS}
    converter = cls(**options)
    start = time.perf_counter()
    out = converter.convert(Path(args.src), Path(args.output), overwrite=args.overwrite)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    if not args.quiet:
        from benchmark.data.info import format_summary, summarize

        print(format_summary(summarize(out)))
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from benchmark.data.h5format import compute_content_hash
    from benchmark.data.info import format_summary, summarize

    for path in args.files:
        summary = summarize(path)
        if args.verify:
            actual = compute_content_hash(path)
            stored = summary["attributes"].get("content_hash")
            summary["content_hash_ok"] = actual == stored
            if actual != stored:
                raise SSLBenchError(
                    f"{path}: content hash mismatch (stored {stored}, computed {actual})"
                )
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
        else:
            print(format_summary(summary))
            if args.verify:
                print("  content hash verified")
    return 0


def _cmd_data_phantom(args: argparse.Namespace) -> int:
    from benchmark.data.phantom import generate_phantom

    start = time.perf_counter()
    out = generate_phantom(
        args.output,
        n=args.n,
        size=args.size,
        dims=args.dims,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


# -- discovery -----------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    from benchmark.registry import load_plugins, unknown_name_error

    registries = load_plugins()
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
        if kind not in registries:
            raise unknown_name_error("component kind", kind, list(registries))
        reg = registries[kind]
        if not args.kind:
            print(f"{kind}:")
        for name in reg.names():
            aliases = reg.aliases_of(name)
            suffix = f"  (alias: {', '.join(aliases)})" if aliases and args.verbose else ""
            print(f"{'  ' if not args.kind else ''}{name}{suffix}")
    return 0


# -- pretraining ---------------------------------------------------------------
def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` with YAML scalar parsing."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SSLBenchError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from pretrain.train import PretrainConfig, pretrain

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SSLBenchError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise SSLBenchError(f"{path}: config must be a mapping of PretrainConfig fields")
        unknown = sorted(set(loaded) - fields)
        if unknown:
            from benchmark.registry import unknown_name_error

            raise unknown_name_error(f"key in {path}", unknown[0], sorted(fields))
        values.update(loaded)
    cli = {
        "method": args.method,
        "encoder": args.encoder,
        "source": args.source,
        "real": args.data,
        "synthetic": args.synthetic,
        "synthetic_ratio": args.ratio,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.size,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "device": args.device,
        "amp": args.amp,
        "channels_last": args.channels_last,
    }
    values.update({k: v for k, v in cli.items() if v is not None})
    if args.set:
        values["method_config"] = {
            **values.get("method_config", {}),
            **parse_assignments(args.set, "--set"),
        }
    if args.encoder_set:
        values["encoder_config"] = {
            **values.get("encoder_config", {}),
            **parse_assignments(args.encoder_set, "--encoder-set"),
        }
    config = PretrainConfig(**values)
    from pretrain import distributed

    try:
        result = pretrain(
            config,
            args.output,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    finally:
        info = distributed.env_info()
        distributed.shutdown(info)
    if not info.is_main:
        return 0
    s = result.summary
    print(f"encoder checkpoint: {result.checkpoint}")
    print(
        f"final loss {s['final_loss']:.4f}, embedding std {s['final_embedding_std']:.4f}, "
        f"{s['images_per_s']:.1f} images/s, {s['images_seen']} images seen"
    )
    return 0


def _add_pretrain(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder with an SSL method on a source")
    p.add_argument("--config", help="YAML file of PretrainConfig fields (CLI flags win)")
    p.add_argument("--data", help="real dataset .h5 (its train split is used)")
    p.add_argument("--synthetic", help="synthetic dataset .h5")
    p.add_argument("--source", help="real | synthetic | mixed (default real)")
    p.add_argument("--ratio", type=float, help="synthetic fraction per batch for mixed")
    p.add_argument("--method", help="SSL method (sslbench list methods)")
    p.add_argument("--encoder", help="encoder (sslbench list encoders)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--size", type=int, help="view size in pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method option")
    p.add_argument("--encoder-set", action="append", metavar="KEY=VALUE", help="encoder option")
    p.add_argument("--checkpoint-every", type=int, help="save training state every N steps")
    p.add_argument("--log-every", type=int)
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--amp", help="auto, bf16, fp16 or none")
    p.add_argument("--channels-last", help="auto (2D CNNs), on or off")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the saved state")
    p.add_argument("--overwrite", action="store_true", help="start the run again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_pretrain)


# -- main job ------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.demo import run_demo

    return run_demo(
        Path(args.output), overwrite=args.overwrite, quick=args.quick, progress=not args.no_progress
    )


# -- parser --------------------------------------------------------------------
_COMMON_DESTS = {"command", "subcommand", "handler", "kind", "src", "output", "overwrite", "quiet"}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands register their own options)."""
    parser = argparse.ArgumentParser(
        prog="sslbench",
        description="Does self-supervised pretraining on real, synthetic or mixed medical "
        "images give a better encoder when labels are scarce?",
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="convert, inspect and generate datasets")
    dsub = data.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    conv = dsub.add_parser("convert", help="convert a dataset into the sslbench HDF5 format")
    conv_kinds = conv.add_subparsers(dest="kind", required=True, metavar="KIND")
    from benchmark.data.converters import CONVERTERS

    for name in CONVERTERS.names():
        cls = CONVERTERS.get(name)
        p = conv_kinds.add_parser(
            name,
            aliases=CONVERTERS.aliases_of(name),
            help=cls.description,
            description=cls.description,
        )
        p.add_argument("src", help="source folder or file")
        p.add_argument("-o", "--output", required=True, help="output .h5 file")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")
        cls.add_arguments(p)
        p.set_defaults(handler=_cmd_data_convert)

    info = dsub.add_parser("info", help="print shape, class balance, masks and provenance")
    info.add_argument("files", nargs="+", help="sslbench .h5 files")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--verify", action="store_true", help="recompute the content hash")
    info.set_defaults(handler=_cmd_data_info)

    ph = dsub.add_parser("phantom", help="generate the built-in procedural phantom dataset")
    ph.add_argument("-o", "--output", required=True, help="output .h5 file")
    ph.add_argument("-n", type=int, default=240, help="number of images (default 240)")
    ph.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ph.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D images or 3D volumes")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--overwrite", action="store_true")
    ph.set_defaults(handler=_cmd_data_phantom)

    ls = sub.add_parser("list", help="list registered components by kind")
    ls.add_argument("kind", nargs="?", help="only this kind (e.g. converters, methods)")
    ls.add_argument("-v", "--verbose", action="store_true", help="show aliases")
    ls.set_defaults(handler=_cmd_list)

    demo = sub.add_parser("demo", help="the main job on the built-in phantom data")
    demo.add_argument("-o", "--output", default="runs/demo", help="output folder")
    demo.add_argument("--overwrite", action="store_true", help="start again from scratch")
    demo.add_argument("--quick", action="store_true", help="smallest settings (for smoke tests)")
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    demo.set_defaults(handler=_cmd_demo)

    _add_pretrain(sub)
    from pretrain.generators.cli import add_synth_command

    add_synth_command(sub)
    from tasks.cli import add_evaluate_command

    add_evaluate_command(sub)
    from benchmark.run_cli import add_harness_commands

    add_harness_commands(sub)
    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


#: Functions ``f(subparsers)`` adding further subcommands (pretraining, evaluation, ...).
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslbench`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        return int(args.handler(args))
    except SSLBenchError as exc:
        if os.environ.get("SSLBENCH_DEBUG"):
            raise
        msg = " ".join(str(exc).split())  # always one line
        print(f"sslbench: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
