"""The typed registry: decorator, factory, aliases and suggestions."""

from __future__ import annotations

import pytest

from benchmark.cli.data import load_plugins
from benchmark.core.errors import UnknownNameError
from benchmark.core.registry import REGISTRIES, Registry


def test_register_create_alias_and_suggestion() -> None:
    reg: Registry[type] = Registry("widgets-test")
    try:

        @reg.register("square", aliases=("sq",))
        class Square:
            def __init__(self, side: int = 1) -> None:
                self.side = side

        assert reg.names() == ["square"] and "sq" in reg and len(reg) == 1
        assert reg.create("sq", side=3).side == 3
        assert reg.aliases_of("square") == ["sq"]
        with pytest.raises(UnknownNameError, match="did you mean 'square'"):
            reg.get("sqare")
        with pytest.raises(ValueError, match="twice"):
            reg.register("sq")(Square)
    finally:
        del REGISTRIES["widgets-test"]


def test_builtin_registries_are_populated() -> None:
    regs = load_plugins()
    assert {"busi", "folder", "medmnist", "msd"} <= set(regs["converters"].names())
    assert {"resnet18", "resnet50", "vit_tiny"} <= set(regs["encoders"].names())
    for kind, reg in regs.items():
        assert len(reg) > 0, f"registry {kind} is empty"
