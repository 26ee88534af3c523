"""A name -> factory table, so a choice among variants is a lookup, not an if/elif chain.

Each variant registers itself under a name; callers ask for it by name and an unknown name lists
the known ones. A duplicate name is refused: a silent overwrite would swap a variant unnoticed.

>>> SHAPES = Registry("shape")
>>> @SHAPES.register("square")
... def square(side: float) -> float:
...     return side * side
>>> SHAPES.get("square")(3)
9
>>> SHAPES.names()
('square',)
>>> SHAPES.get("circle")
Traceback (most recent call last):
...
m3ad_rl.core.registry.UnknownName: unknown shape 'circle'; choose one of: square
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownName(KeyError, ValueError):
    """A name nobody registered: a KeyError for table-like callers, a ValueError for argument checks."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[F]):
    """Name -> factory, in registration order; refuses duplicates, lists the names for an unknown one."""

    def __init__(self, kind: str):
        self.kind = kind  # what the names are names of ("engine", "dataset" …), for the error messages
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the function (or class) under ``name`` and return it unchanged."""

        def add(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> F:
        """The factory registered under ``name``; ``UnknownName`` lists the valid names."""
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._factories)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
