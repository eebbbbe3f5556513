"""Converters from the layouts people download into the sslbench HDF5 format.

Each converter is one module registering a :class:`Converter` subclass in
:data:`CONVERTERS`; ``sslbench data convert KIND SRC -o OUT.h5`` looks the kind
up here. A converter adds its own command-line options in
:meth:`Converter.add_arguments` and receives them as keyword arguments.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from benchmark.registry import Registry

CONVERTERS: Registry[type[Converter]] = Registry(
    "converters", "turn downloaded datasets into sslbench HDF5 files"
)


class Converter(ABC):
    """Base class of dataset converters.

    Subclasses set :attr:`description` and :attr:`version` (bump it whenever the
    output for the same input changes) and implement :meth:`convert`.
    """

    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add converter-specific options to ``sslbench data convert`` (none by default)."""
        return None

    @abstractmethod
    def convert(self, src: Path, out: Path, *, overwrite: bool = False) -> Path:
        """Convert ``src`` into the HDF5 file ``out`` atomically; return ``out``."""


# Built-in converters register themselves on import.
from benchmark.data.converters import busi, medmnist, msd  # noqa: E402,F401
