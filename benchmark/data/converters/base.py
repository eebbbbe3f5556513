"""The converter contract and registry (every other module of this package is a converter)."""

from __future__ import annotations

import argparse
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from benchmark.core.registry import Registry

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
    #: Spatial dimensions of the images it writes (2 or 3): the runner's cost estimates.
    dims: ClassVar[int] = 2

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add converter-specific options to ``sslbench data convert`` (none by default)."""
        return None

    @classmethod
    def count_images(cls, src: Path) -> int | None:
        """How many images converting ``src`` gives, if cheap to tell (for estimates)."""
        return None

    @classmethod
    def image_size(cls, src: Path, options: dict[str, Any]) -> int | None:
        """The image side converting ``src`` with ``options`` gives, if known (estimates)."""
        return int(options["size"]) if options.get("size") else None

    @abstractmethod
    def convert(self, src: Path, out: Path, *, overwrite: bool = False) -> Path:
        """Convert ``src`` into the HDF5 file ``out`` atomically; return ``out``."""


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers numerically (``a (2)`` < ``a (10)``)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def parse_names(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """A comma-separated string or a sequence of names as a list (None stays None)."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    return names or None
