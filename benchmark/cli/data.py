"""``sslbench data ...`` and ``sslbench list``: datasets and registered components."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmark.core.errors import SSLBenchError

#: Parsed arguments that are not converter options.
_COMMON_DESTS = {"command", "subcommand", "handler", "kind", "src", "output", "overwrite", "quiet"}


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
        from benchmark.data.info import format_dataset_summary, summarize_dataset

        print(format_dataset_summary(summarize_dataset(out)))
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from benchmark.data.h5format import compute_content_hash
    from benchmark.data.info import format_dataset_summary, summarize_dataset

    for path in args.files:
        summary = summarize_dataset(path)
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
            print(format_dataset_summary(summary))
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
        variant=args.variant,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


def _cmd_data_curate(args: argparse.Namespace) -> int:
    from benchmark.data.curation import CURATORS, CurationError, curate_file

    options = {
        k: v for k, v in (("threshold", args.threshold), ("scope", args.scope)) if v is not None
    }
    curator = CURATORS.create(args.method, **options)
    start = time.perf_counter()
    if args.no_prune and not args.drop_near_real:
        raise CurationError("--no-prune keeps every image unless --drop-near-real is given")
    record = curate_file(
        args.input,
        args.output,
        curator,
        drop_near=args.drop_near_real,
        overwrite=args.overwrite,
        unit=args.unit,
        prune=not args.no_prune,
    )
    print(
        f"wrote {args.output} in {time.perf_counter() - start:.1f}s: {args.method} "
        f"{record['options']} kept {record['train_kept']} of {record['train_in']} train "
        f"{record['unit']}s ({100 * record['kept_fraction']:.1f} %); val / test unchanged"
        + (
            f"; {record['dropped_near_real']} near-duplicates of real train images dropped"
            if args.drop_near_real
            else ""
        )
    )
    return 0


# -- discovery -----------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    from benchmark.core.registry import unknown_name_error

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


#: Packages imported by :func:`load_plugins` so that their components register.
PLUGIN_PACKAGES: list[str] = [
    "benchmark.data.converters",
    "benchmark.data.curation",
    "pretrain.encoders",
    "pretrain.sources",
    "pretrain.methods",
    "pretrain.generators",
    "tasks.metrics",
    "tasks.adapters",
]


def load_plugins() -> dict[str, Any]:
    """Import every built-in component package and return all registries by kind."""
    import importlib

    from benchmark.core.registry import REGISTRIES

    for package in PLUGIN_PACKAGES:
        importlib.import_module(package)
    return REGISTRIES


def add_data_commands(sub: Any) -> None:
    """``sslbench data convert|info|phantom`` and ``sslbench list``."""
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
    ph.add_argument(
        "--variant",
        choices=("shape", "birads"),
        default="shape",
        help="shape: none / smooth / irregular lesions (default); birads: benign / malignant "
        "by orientation and margin, a lesion in every image (the demo's task)",
    )
    ph.add_argument("--overwrite", action="store_true")
    ph.set_defaults(handler=_cmd_data_phantom)

    cur = dsub.add_parser(
        "curate",
        help="prune redundant train images before SSL pretraining (Less is More)",
        description="Keep the train images a curator selects (dhash: Less is More's Hash-N); "
        "val / test samples are copied unchanged. A 3D file is curated as its slices and "
        "written as the 2D file of those slices, or with --unit volume as whole volumes "
        "(a 3D file, for 3D encoders).",
    )
    cur.add_argument("input", help="sslbench .h5 file")
    cur.add_argument("-o", "--output", required=True, help="output .h5 file")
    cur.add_argument("--method", default="dhash", help="curator (sslbench list curators)")
    cur.add_argument("--threshold", type=int, help="dhash: largest redundant Hamming distance (6)")
    cur.add_argument(
        "--scope",
        choices=("volume", "dataset"),
        help="dhash: compare within a volume / patient (default) or across the train split",
    )
    cur.add_argument(
        "--drop-near-real",
        metavar="REAL_H5",
        help="first drop images that near-duplicate a train image of this real file "
        "(memorisation filter for synthetic files)",
    )
    cur.add_argument(
        "--unit",
        choices=("slice", "volume"),
        default="slice",
        help="3D inputs: curate slices into a 2D file (default) or whole volumes (dhash: "
        "with --scope dataset)",
    )
    cur.add_argument(
        "--no-prune",
        action="store_true",
        help="only the --drop-near-real filter, no pruning of redundant images",
    )
    cur.add_argument("--overwrite", action="store_true")
    cur.set_defaults(handler=_cmd_data_curate)

    ls = sub.add_parser("list", help="list registered components by kind")
    ls.add_argument("kind", nargs="?", help="only this kind (e.g. converters, methods)")
    ls.add_argument("-v", "--verbose", action="store_true", help="show aliases")
    ls.set_defaults(handler=_cmd_list)
