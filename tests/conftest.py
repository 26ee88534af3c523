"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny offline Qwen3-VL (small vocabulary), built once per test session."""
    pytest.importorskip("transformers")
    from m3ad_rl.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))
