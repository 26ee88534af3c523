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


def flip_threshold(values: ReflectionValues, answer: float = 1.0) -> float:
    """P(initial answer wrong) above which, once a response reflects, changing the answer earns more on average
    than keeping it (the flip incentive of Eq. 13).

    ``answer`` is what a right final answer adds through the accuracy term (1 for R_ans; 1 + R_type + R_loc
    for a fully right anomalous answer). With p = P(initial wrong), keeping earns ``(1-p)·answer +
    ineffective`` and flipping ``p·(answer + correct) + (1-p)·erroneous``; they are equal at
    ``p* = (answer + ineffective - erroneous) / (2·answer + correct - erroneous)``. p* = 0.5 (no incentive
    either way) exactly when ``erroneous = 2·ineffective - correct``, whatever ``answer`` is.

    >>> [round(flip_threshold(REFLECTION_PRESETS.get(p)), 3) for p in "abcd"]
    [0.4, 0.55, 0.5, 0.375]
    >>> flip_threshold(ReflectionValues(correct=1.0, ineffective=-0.5, erroneous=-2.0), answer=3.0)
    0.5
    """
    return (answer + values.ineffective - values.erroneous) / (2 * answer + values.correct - values.erroneous)
