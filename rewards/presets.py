"""Reflection reward presets (a)-(d) of the paper's Figure 4 / appendix C.3, in a registry.

(d) is the authors' reward diagram; the paper gives only the signs of (a)-(c), so their
magnitudes are our choice (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReflectionValues:
    """Reward for each reflection outcome."""

    correct: float
    ineffective: float
    erroneous: float


class Registry:
    """Name -> value; refuses a duplicate name and lists the valid names for an unknown one."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, ReflectionValues] = {}

    def register(self, name: str, value: ReflectionValues) -> None:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = value

    def get(self, name: str) -> ReflectionValues:
        if name not in self._items:
            raise KeyError(f"unknown {self.what} {name!r}; choose one of: {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


REFLECTION_PRESETS = Registry("reflection preset")
REFLECTION_PRESETS.register("a", ReflectionValues(correct=1.0, ineffective=0.2, erroneous=0.0))
REFLECTION_PRESETS.register("b", ReflectionValues(correct=1.0, ineffective=0.2, erroneous=-1.0))
REFLECTION_PRESETS.register("c", ReflectionValues(correct=1.0, ineffective=0.0, erroneous=-1.0))
REFLECTION_PRESETS.register("d", ReflectionValues(correct=1.0, ineffective=-0.5, erroneous=-1.0))
