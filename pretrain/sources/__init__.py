"""Pretraining image sources: one module per source, registered in :data:`SOURCES` on import.

See :mod:`pretrain.sources.base` for the sampling and compute-matching contract.
"""

from benchmark.core.plugins import import_submodules
from pretrain.sources.base import SOURCES, Pool, Source, SourceError, create_source

import_submodules(__name__)

from pretrain.sources.mixed import mixed_counts  # noqa: E402

__all__ = ["SOURCES", "Pool", "Source", "SourceError", "create_source", "mixed_counts"]
