"""What a captioner takes and gives back: ``CaptionJob``, ``CaptionResult`` and the ``Captioner`` interface.

They live below both FT construction (``ft.py``, which makes captioners by name) and the captioners
(``captioner_template.py``, ``captioner_openai.py``, which implement the interface), so neither has to
import the other to know the types: the imports go one way, ft -> captioners -> captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from m3ad_rl.data.schema import Sample


@dataclass(slots=True)
class CaptionJob:
    """One trajectory to write: the sample, its mode and the initial decision the text must reach."""

    sample: Sample
    mode: str  # thinking | reflective
    initial: str  # yes | no


@dataclass(slots=True)
class CaptionResult:
    """Outcome of one caption: the rendered trajectory, or the error that stopped it."""

    id: str
    text: str | None = None
    error: str | None = None
    cached: bool = False  # served from the captioner's cache (captioners that keep one)
    attempts: int = 0  # requests sent for it (captioners that ask a server)


class Captioner(Protocol):
    """What FT construction needs from a captioner (template, LLM endpoint …)."""

    name: str

    def caption_samples(self, jobs: Sequence[CaptionJob], progress: bool = False) -> list[CaptionResult]:
        """One result per job, in order; a failed caption has ``error`` set and never raises."""
        ...
