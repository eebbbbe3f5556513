"""Import every module of a package so that its components register themselves."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, skip: tuple[str, ...] = ("base",)) -> list[str]:
    """Import all direct submodules of ``package`` (except ``skip``); return their names."""
    pkg = importlib.import_module(package)
    names = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        importlib.import_module(f"{package}.{info.name}")
        names.append(info.name)
    return names
