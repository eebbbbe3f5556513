"""The ``sslbench`` command line: the top layer, one module per group of subcommands.

``main`` (parser and entry point), ``data`` (convert, info, phantom, list),
``pretrain``, ``synth`` (generators), ``evaluate`` (sweeps), ``run`` (experiments,
leaderboards, export) and ``args`` (shared argument helpers).
"""

from benchmark.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
