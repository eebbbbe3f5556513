"""Synthetic image generators: a DDPM, the procedural phantom and an importer.

Every module in this package registers its generator in :data:`GENERATORS`
on import, so adding a generator is one new file. ``sslbench synth`` (see
:mod:`benchmark.cli.synth`) trains, samples, imports and reports on them.
"""

from benchmark.core.plugins import import_submodules
from pretrain.generators.base import (
    GENERATORS,
    Generator,
    GeneratorDivergedError,
    GeneratorError,
    write_synthetic,
)

import_submodules(__name__, skip=("base", "cli", "report"))

__all__ = ["GENERATORS", "Generator", "GeneratorDivergedError", "GeneratorError", "write_synthetic"]
