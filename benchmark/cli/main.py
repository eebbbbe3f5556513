"""The ``sslbench`` command line.

Every subcommand is a small function taking the parsed arguments. Errors a user
can cause (bad files, unknown names, existing outputs) raise
:class:`benchmark.core.errors.SSLBenchError`; :func:`main` prints them as one line
``sslbench: error: ...`` and exits with status 2. Set ``SSLBENCH_DEBUG=1`` to
see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmark import __version__
from benchmark.core.allocator import tune_allocator
from benchmark.core.errors import SSLBenchError

Handler = Callable[[argparse.Namespace], int]


# -- main job ------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.harness.demo import run_demo

    return run_demo(
        Path(args.output), overwrite=args.overwrite, quick=args.quick, progress=not args.no_progress
    )


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands register their own options)."""
    parser = argparse.ArgumentParser(
        prog="sslbench",
        description="Does self-supervised pretraining on real, synthetic or mixed medical "
        "images give a better encoder when labels are scarce?",
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from benchmark.cli.data import add_data_commands

    add_data_commands(sub)
    demo = sub.add_parser("demo", help="the main job on the built-in phantom data")
    demo.add_argument("-o", "--output", default="runs/demo", help="output folder")
    demo.add_argument("--overwrite", action="store_true", help="start again from scratch")
    demo.add_argument("--quick", action="store_true", help="smallest settings (for smoke tests)")
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    demo.set_defaults(handler=_cmd_demo)

    from benchmark.cli.pretrain import add_pretrain_command

    add_pretrain_command(sub)
    from benchmark.cli.synth import add_synth_command

    add_synth_command(sub)
    from benchmark.cli.evaluate import add_evaluate_command

    add_evaluate_command(sub)
    from benchmark.cli.run import add_harness_commands

    add_harness_commands(sub)
    return parser


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
