"""m3ad-rl rewards: consistency, gated accuracy and reflection (SPEC §3), configurable by YAML.

>>> from rewards import RewardFunction, load_reward_config
>>> fn = RewardFunction(load_reward_config(overrides=["reflection.preset=b"]))
"""

from rewards.config import RewardConfig, load_reward_config
from rewards.presets import REFLECTION_PRESETS, ReflectionValues
from rewards.scorer import PART_NAMES, RewardFunction, RewardResult

__all__ = [
    "PART_NAMES",
    "REFLECTION_PRESETS",
    "ReflectionValues",
    "RewardConfig",
    "RewardFunction",
    "RewardResult",
    "load_reward_config",
]
