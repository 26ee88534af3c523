"""Imports go one way (STYLE.md): each stage imports only its own and lower stages, so a layer can be read
without the ones above it; the pure core and the reward terms import no training framework, so the reward
service and the verl ``compute_score`` stay light. Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lowest first: data flows data → rollout (engines) → reward → update (train) → eval; ops and CLI on top
LAYERS = ["core", "rewards", "data", "models", "engines", "train", "eval", "k8s", "pipeline", "cli", "api"]
HEAVY = {"torch", "ray", "deepspeed", "vllm", "verl", "transformers"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "rewards":
        return "rewards"
    return "api" if len(parts) == 1 else parts[1]


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


FILES = sorted(p for p in [*ROOT.glob("m3ad_rl/**/*.py"), *ROOT.glob("rewards/*.py")] if "resources" not in p.parts)
KNOWN = {module_name(p) for p in FILES}


def internal(names: set[str]) -> set[str]:
    """The project modules among ``names`` (``from m3ad_rl.core import storage`` counts as its module)."""
    return {n for n in names if n in KNOWN and n not in ("m3ad_rl", "rewards")}


def test_every_module_has_a_layer():
    assert {layer(module_name(p)) for p in FILES} <= set(LAYERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_imports_only_go_down(path):
    me = module_name(path)
    up = sorted(n for n in internal(imports(path)) if LAYERS.index(layer(n)) > LAYERS.index(layer(me)))
    assert not up, f"{me} ({layer(me)}) imports a higher layer: {up}"


LIGHT = [p for p in FILES if layer(module_name(p)) == "core" or (layer(module_name(p)) == "rewards"
                                                                  and p.name != "service.py")]  # fmt: skip


@pytest.mark.parametrize("path", LIGHT, ids=lambda p: module_name(p))
def test_core_and_reward_terms_import_no_training_framework(path):
    heavy = {n.split(".")[0] for n in imports(path)} & HEAVY
    assert not heavy, f"{module_name(path)} imports {sorted(heavy)}"


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself works: a core module importing the trainer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from m3ad_rl.train import sft\n")
    assert LAYERS.index(layer("m3ad_rl.train.sft")) > LAYERS.index(layer("m3ad_rl.core.x"))
    assert "m3ad_rl.train.sft" in internal(imports(bad))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly
    connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at module level or in a function. Its own packages
    are left out: Python runs them before the module, so importing from them loads nothing new."""
    graph = {}
    for path in files:
        me = module_name(path)
        ancestors = {".".join(me.split(".")[:i]) for i in range(1, me.count(".") + 1)}
        graph[me] = internal(imports(path)) - ancestors - {me}
    return graph


# Function-level cycles not broken yet; a new cycle anywhere fails the test below.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles():
    """Modules that import each other (even inside functions) cannot be read or moved apart; the
    types both sides need go into a module below them (``data/captions.py`` for FT and its captioners)."""
    cycles = import_cycles(import_graph(FILES))
    assert not [c for c in cycles if c not in KNOWN_CYCLES], cycles
    data = [p for p in FILES if layer(module_name(p)) == "data"]
    assert import_cycles(import_graph(data)) == []


def test_the_check_catches_a_cycle_through_a_function_import(tmp_path):
    """ft importing a captioner in a function while the captioner imports ft's types is a cycle."""
    ft = tmp_path / "ft.py"
    ft.write_text("def make():\n    from m3ad_rl.data.captioner_template import TemplateCaptioner\n")
    template = tmp_path / "template.py"
    template.write_text("from m3ad_rl.data.ft import CaptionJob\n")
    graph = {
        "m3ad_rl.data.ft": internal(imports(ft)),
        "m3ad_rl.data.captioner_template": internal(imports(template)),
    }
    assert import_cycles(graph) == [["m3ad_rl.data.captioner_template", "m3ad_rl.data.ft"]]
