"""verl custom reward function: point verl's ``reward.custom_reward_function`` here.

    reward:
      custom_reward_function:
        path: pkg://rewards.verl_reward     # or the file path of this module
        name: compute_score
        reward_kwargs:
          config: configs/rewards/preset_d.yaml   # optional
          overrides: ["weights.reflection=0.5"]    # optional

verl passes ``reward_model.ground_truth`` of the RL Parquet row (a dict or its JSON string).
Every value returned is a number, because verl averages each extra key when it logs validation
metrics: the reflection outcome comes as one-hot ``reflection_<outcome>`` flags.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rewards.config import load_reward_config
from rewards.scorer import PART_NAMES, RewardFunction

OUTCOMES = ("correct", "ineffective", "erroneous")


@lru_cache(maxsize=16)
def _reward_fn(config: str | None, overrides: tuple[str, ...]) -> RewardFunction:
    return RewardFunction(load_reward_config(config, overrides))


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **kwargs: Any,
) -> dict[str, float]:
    """Score one rollout for verl: ``{"score": R, "acc": R_ans, <every part>}``."""
    fn = _reward_fn(config, tuple(overrides))
    size = None
    if isinstance(extra_info, dict) and extra_info.get("width") and extra_info.get("height"):
        size = (int(extra_info["width"]), int(extra_info["height"]))
    r = fn(solution_str, ground_truth, size)
    out = {"score": r.score, "acc": r.answer, **{k: getattr(r, k) for k in PART_NAMES},
           "reflected": float(r.reflection_outcome != "none")}  # fmt: skip
    for name in OUTCOMES:
        out[f"reflection_{name}"] = float(r.reflection_outcome == name)
    return out
