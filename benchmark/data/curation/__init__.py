"""Data curation before SSL pretraining (Less is More): one curator per module.

Adding a curator is one new module in this package registering a
:class:`Curator` in :data:`CURATORS` (discovered on import).
"""

from benchmark.core.plugins import import_submodules
from benchmark.data.curation.base import CURATORS, CurationError, Curator, curate_file

import_submodules(__name__)

__all__ = ["CURATORS", "CurationError", "Curator", "curate_file"]
