"""The M3-AD anomaly taxonomy: 41 fine types under Level-2 and Level-1 groups (SPEC §1).

The taxonomy is data (``resources/taxonomy.yaml``); this module loads it, maps free text a model
writes onto a node (a fine type, or a Level-2 / Level-1 group when the text names only a group),
and scores how close a predicted node is to a ground-truth fine type (SPEC §3, s(p, g)).

>>> tax = default_taxonomy()
>>> tax.lookup("Scratches").name
'scratch'
>>> tax.similarity(tax.lookup("dent"), tax.lookup("pitting"))   # same Level-2: irregular surface
0.5
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Level = Literal["type", "level2", "level1"]


class SimilarityConfig(BaseModel):
    """Partial credit s(p, g) for a predicted node p against a ground-truth fine type g."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    same_type: float = Field(1.0, ge=0, le=1, description="p is g (after synonyms).")
    same_level2: float = Field(0.5, ge=0, le=1, description="p and g share the Level-2 group.")
    same_level1: float = Field(0.25, ge=0, le=1, description="p and g share only the Level-1 group.")


@dataclass(frozen=True, slots=True)
class Node:
    """One taxonomy node. ``level`` says how specific it is; the parents are names."""

    name: str
    level: Level
    level1: str
    level2: str | None = None
    definition: str = ""

    @property
    def is_fine(self) -> bool:
        return self.level == "type"


_PUNCT = " \t\r\n.,;:!?\"'`*()[]{}<>"
_SPACES = re.compile(r"[\s_\-]+")
_ARTICLES = ("a ", "an ", "the ", "some ")
_SUFFIXES = (" defects", " defect", " anomalies", " anomaly", " issues", " issue", " problem", " type")


def normalize(text: str) -> str:
    """Lower-case, turn ``_``/``-`` into spaces, collapse spaces and trim punctuation."""
    text = _SPACES.sub(" ", text.lower()).strip(_PUNCT)
    for article in _ARTICLES:
        if text.startswith(article):
            text = text[len(article) :]
            break
    return text


class Taxonomy:
    """Loaded taxonomy with free-text lookup and the similarity s(p, g)."""

    def __init__(self, spec: dict):
        self.types: dict[str, Node] = {}
        self.level2: dict[str, Node] = {}
        self.level1: dict[str, Node] = {}
        self._keys: dict[str, Node] = {}
        for l1 in spec["level1"]:
            n1 = Node(l1["name"], "level1", l1["name"])
            self._add(self.level1, n1, l1.get("synonyms") or [])
            for l2 in l1["level2"]:
                n2 = Node(l2["name"], "level2", n1.name, l2["name"])
                self._add(self.level2, n2, l2.get("synonyms") or [])
                for t in l2["types"]:
                    node = Node(t["name"], "type", n1.name, n2.name, t.get("definition", ""))
                    self._add(self.types, node, t.get("synonyms") or [])
        # Longest phrase first, so "missing section" wins over "missing" inside free text.
        phrases = sorted(self._keys, key=len, reverse=True)
        self._phrase_re = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")\b")
        self._lookup = lru_cache(maxsize=65536)(self._lookup_uncached)
        self._rows: dict[tuple[float, float, float], dict[int, dict[str, float]]] = {}

    def _add(self, table: dict[str, Node], node: Node, synonyms: list[str]) -> None:
        if node.name in table:
            raise ValueError(f"taxonomy: duplicate {node.level} name {node.name!r}")
        table[node.name] = node
        for key in [node.name, *synonyms]:
            key = normalize(key)
            other = self._keys.get(key)
            if other is not None and other != node:
                raise ValueError(f"taxonomy: {key!r} names both {other.name!r} and {node.name!r}")
            self._keys[key] = node

    @property
    def fine_types(self) -> list[Node]:
        """The fine types in file order."""
        return list(self.types.values())

    def group(self, level2: str) -> list[Node]:
        """Fine types of one Level-2 group."""
        return [n for n in self.types.values() if n.level2 == level2]

    def get(self, name: str) -> Node:
        """A fine type by its canonical name or a synonym; KeyError naming the type otherwise."""
        node = self.lookup(name)
        if node is None or not node.is_fine:
            raise KeyError(f"unknown anomaly type {name!r}; see m3ad_rl/resources/taxonomy.yaml")
        return node

    def lookup(self, text: str) -> Node | None:
        """Map free text to a node, or None when nothing in the taxonomy is named.

        Rule, in order: exact name or synonym; the same without a plural ``s``/``es``; without
        a trailing "defect"/"anomaly"/"issue"; else the longest name or synonym that occurs as
        whole words inside the text ("a deep scratch near the rim" -> scratch).
        """
        if not isinstance(text, str):
            return None
        return self._lookup(text)

    def _lookup_uncached(self, text: str) -> Node | None:
        key = normalize(text)
        if not key:
            return None
        keys = self._keys
        for cand in (key, key[:-1] if key.endswith("s") else "", key[:-2] if key.endswith("es") else ""):
            if cand in keys:
                return keys[cand]
        for suffix in _SUFFIXES:
            if key.endswith(suffix) and key[: -len(suffix)] in keys:
                return keys[key[: -len(suffix)]]
        best = None
        for m in self._phrase_re.finditer(key):
            if best is None or len(m.group()) > len(best):
                best = m.group()
        return keys[best] if best is not None else None

    def resolve_set(self, items: list[str]) -> list[Node | None]:
        """The set of types named by free-text items, duplicates removed, order kept.

        Unmapped items stay as None (they count in |P| and score 0); two unmapped items are the
        same when their normalised text is.
        """
        seen: set[object] = set()
        out: list[Node | None] = []
        lookup = self._lookup
        for item in items:
            node = lookup(item)
            key = id(node) if node is not None else normalize(item)  # nodes are unique objects
            if key not in seen:
                seen.add(key)
                out.append(node)
        return out

    def similarity_rows(self, cfg: SimilarityConfig | None = None) -> dict[int, dict[str, float]]:
        """For every node, s(node, g) for every fine type g, keyed by ``id(node)`` then g's name.

        A lookup table for hot loops: nodes are unique objects of this taxonomy.
        """
        cfg = cfg or _DEFAULT_SIM
        key = (cfg.same_type, cfg.same_level2, cfg.same_level1)
        rows = self._rows.get(key)
        if rows is None:
            nodes = [*self.types.values(), *self.level2.values(), *self.level1.values()]
            rows = {id(n): {g.name: self.similarity(n, g, cfg) for g in self.types.values()} for n in nodes}
            self._rows[key] = rows
        return rows

    def type_scores(self, preds: list[Node | None], truths: list[Node], rows: dict[int, dict[str, float]]):
        """Score matrix s(p, g) from ``similarity_rows``; unmapped predictions score 0."""
        return [[rows[id(p)][g.name] for g in truths] if p is not None else [0.0] * len(truths) for p in preds]

    def similarity(self, pred: Node | None, truth: Node, cfg: SimilarityConfig | None = None) -> float:
        """s(p, g): same type, same Level-2, same Level-1 only, or 0 (unmapped p scores 0)."""
        cfg = cfg or _DEFAULT_SIM
        if pred is None:
            return 0.0
        if pred.level == "type" and pred.name == truth.name:
            return cfg.same_type
        if pred.level != "level1" and pred.level2 == truth.level2:
            return cfg.same_level2
        if pred.level1 == truth.level1:
            return cfg.same_level1
        return 0.0


_DEFAULT_SIM = SimilarityConfig()


@cache
def default_taxonomy() -> Taxonomy:
    """The shipped taxonomy, loaded once per process."""
    text = resources.files("m3ad_rl").joinpath("resources/taxonomy.yaml").read_text(encoding="utf-8")
    return Taxonomy(yaml.safe_load(text))
