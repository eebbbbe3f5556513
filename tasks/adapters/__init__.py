"""Task adapters, one module each, registered in :data:`ADAPTERS` on import."""

from benchmark.core.plugins import import_submodules
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult

import_submodules(__name__)

__all__ = ["ADAPTERS", "Adapter", "CellData", "CellResult"]
