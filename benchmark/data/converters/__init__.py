"""Converters from the layouts people download into the sslbench HDF5 format.

Each converter is one module registering a :class:`Converter` subclass in
:data:`CONVERTERS`; ``sslbench data convert KIND SRC -o OUT.h5`` looks the kind
up here. Adding a converter is one new module in this package (discovered
on import, like every other registry). A converter adds its own command-line options in
:meth:`Converter.add_arguments` and receives them as keyword arguments.
"""

from benchmark.core.plugins import import_submodules
from benchmark.data.converters.base import CONVERTERS, Converter

import_submodules(__name__)

__all__ = ["CONVERTERS", "Converter"]
