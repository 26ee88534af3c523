"""Small helpers shared by the tests."""

from __future__ import annotations

from m3ad_rl.output_format import render


def out(answer: str, *, initial: str | None = None, reflection: str | None = None, types=(), boxes=()) -> str:
    """A canonical response (built with render, so the tests also exercise the renderer)."""
    return render(
        think="I inspect the part.", answer=answer, reflection=reflection, types=types, boxes=boxes, initial=initial
    )
