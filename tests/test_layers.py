"""Imports go one way (STYLE.md): the pure core (output format, taxonomy, ground truth, matching, config,
errors, storage, …) and the rewards import no training framework and nothing above them, so the reward
service and the verl ``compute_score`` stay light and a layer can be read without the ones above it.
Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {
    "m3ad_rl.config", "m3ad_rl.errors", "m3ad_rl.guards", "m3ad_rl.jsonl", "m3ad_rl.labels", "m3ad_rl.matching",
    "m3ad_rl.output_format", "m3ad_rl.prompts", "m3ad_rl.storage", "m3ad_rl.taxonomy", "m3ad_rl.http_retry",
}  # fmt: skip
HEAVY = {"torch", "ray", "deepspeed", "vllm", "verl", "transformers"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def internal(names: set[str]) -> set[str]:
    """The project modules among ``names`` (``from m3ad_rl import storage`` counts as m3ad_rl.storage)."""
    known = {module_name(p) for p in [*ROOT.glob("m3ad_rl/**/*.py"), *ROOT.glob("rewards/*.py")]}
    return {n for n in names if n in known and n not in ("m3ad_rl", "rewards")}


CORE_FILES = sorted(p for p in ROOT.glob("m3ad_rl/*.py") if module_name(p) in CORE)
REWARD_FILES = sorted(p for p in ROOT.glob("rewards/*.py") if p.name != "service.py")  # the Serve app is a layer up


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_only_core(path):
    names = imports(path)
    assert not {n.split(".")[0] for n in names} & HEAVY, f"{path.name} imports a training framework"
    assert internal(names) <= CORE, f"{path.name} imports a higher layer: {sorted(internal(names) - CORE)}"


@pytest.mark.parametrize("path", REWARD_FILES, ids=lambda p: p.name)
def test_rewards_import_only_core_and_rewards(path):
    names = imports(path)
    assert not {n.split(".")[0] for n in names} & HEAVY, f"rewards/{path.name} imports a training framework"
    higher = {n for n in internal(names) if not n.startswith("rewards") and n not in CORE}
    assert not higher, f"rewards/{path.name} imports {sorted(higher)}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from m3ad_rl.rcrl import RCRLTrainer\n    import torch\n")
    names = imports(bad)
    assert "m3ad_rl.rcrl" in internal(names) and "torch" in names
