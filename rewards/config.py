"""The reward config: one pydantic model, loaded from YAML plus ``key=value`` overrides.

Shipped files live in ``configs/rewards/``; ``default.yaml`` spells out every key::

    m3ad-rl reward score --config configs/rewards/preset_b.yaml --set weights.reflection=0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core.config import load_config
from m3ad_rl.core.output_format import ParseConfig
from m3ad_rl.core.taxonomy import SimilarityConfig
from rewards.presets import REFLECTION_PRESETS, ReflectionValues


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    """λ of R = λc·R_con + λa·R_acc + λr·R_ref (SPEC §3: all 1)."""

    consistency: float = Field(1.0, description="λc, weight of the consistency reward.")
    accuracy: float = Field(1.0, description="λa, weight of the gated accuracy reward.")
    reflection: float = Field(1.0, description="λr, weight of the reflection reward.")


class Enabled(_Strict):
    """On/off switch per term (the paper's Table 3 ablation). Parts are still reported."""

    consistency: bool = True
    accuracy: bool = True
    reflection: bool = True


class ConsistencyConfig(_Strict):
    reference: Literal["prediction", "ground_truth"] = Field(
        "prediction",
        description="Whose verdict sets the required fields: the output's own answer "
        "(coherence) or the ground truth (IAD-R1's behaviour).",
    )


class ReflectionConfig(_Strict):
    preset: str = Field("d", description="Reflection preset: a, b, c or d (SPEC §3 table).")
    correct: float | None = Field(None, description="Override the preset's reward for wrong -> right.")
    ineffective: float | None = Field(None, description="Override the preset's reflection cost.")
    erroneous: float | None = Field(None, description="Override the preset's right -> wrong penalty.")

    @field_validator("preset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in REFLECTION_PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed values: {', '.join(REFLECTION_PRESETS.names())}")
        return v

    def values(self) -> ReflectionValues:
        """The preset with any per-outcome overrides applied."""
        base = REFLECTION_PRESETS.get(self.preset)
        return ReflectionValues(
            correct=base.correct if self.correct is None else self.correct,
            ineffective=base.ineffective if self.ineffective is None else self.ineffective,
            erroneous=base.erroneous if self.erroneous is None else self.erroneous,
        )


class RewardConfig(_Strict):
    """Everything that decides a reward. Recorded with every training run."""

    weights: Weights = Weights()
    enabled: Enabled = Enabled()
    consistency: ConsistencyConfig = ConsistencyConfig()
    reflection: ReflectionConfig = ReflectionConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    parse: ParseConfig = ParseConfig()


def load_reward_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RewardConfig:
    """RewardConfig from a YAML file (optional) and ``key=value`` overrides."""
    return load_config(RewardConfig, path, overrides)
