"""Small typed registries with a decorator and a single factory.

Every pluggable kind of component (converters, encoders, sources, SSL methods,
generators, tasks, metrics, ...) has one :class:`Registry`. Adding a component is
one new module that decorates a class or function::

    from benchmark.data.converters import CONVERTERS

    @CONVERTERS.register("busi")
    class BusiConverter(Converter): ...

and the component becomes available to ``CONVERTERS.create("busi", ...)`` and
to ``sslbench list``. Modelled on timm's ``create_model`` and the registry of
lm-evaluation-harness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from benchmark.core.errors import UnknownNameError, did_you_mean

T = TypeVar("T")

#: Every registry ever created, by kind, in creation order (for ``sslbench list``).
REGISTRIES: dict[str, Registry[Any]] = {}


def unknown_name_error(
    what: str, name: str, valid: list[str], shown: list[str] | None = None
) -> UnknownNameError:
    """An :class:`UnknownNameError` for ``name`` suggesting the closest of ``valid``."""
    hint = did_you_mean(name, sorted(valid), n=3)
    listed = ", ".join(sorted(shown if shown is not None else valid)) or "none"
    return UnknownNameError(f"unknown {what} {name!r}{hint} (available: {listed})")


class Registry(Generic[T]):
    """A name -> component mapping for one kind of component.

    Args:
        kind: Plural noun shown to users, e.g. ``"converters"``.
        description: One line describing the kind.
    """

    def __init__(self, kind: str, description: str = "") -> None:
        if kind in REGISTRIES:
            raise ValueError(f"a registry for {kind!r} exists already")
        self.kind = kind
        self.description = description
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        REGISTRIES[kind] = self

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (and optional aliases)."""

        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise ValueError(f"{self.kind}: name {key!r} is registered twice")
            self._items[name] = obj
            if isinstance(obj, type) and getattr(obj, "name", None) == "":
                obj.name = name  # type: ignore[attr-defined]  # classes learn their registered name
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return decorator

    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` or an alias of it."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        singular = self.kind[:-1] if self.kind.endswith("s") else self.kind
        raise unknown_name_error(singular, name, [*self._items, *self._aliases], self.names())

    def get(self, name: str) -> T:
        """The registered object for ``name``; raises :class:`UnknownNameError`."""
        return self._items[self.resolve(name)]

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Instantiate (or call) the component registered as ``name``."""
        factory = self.get(name)
        if not callable(factory):
            raise TypeError(f"{self.kind}: {name!r} is not callable")
        return factory(*args, **kwargs)

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._items)

    def aliases_of(self, name: str) -> list[str]:
        """Aliases that resolve to ``name``."""
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
