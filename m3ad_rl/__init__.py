"""m3ad-rl: reflection-aware RL for industrial anomaly detection with vision-language models.

The Python API is the same pipeline as the ``m3ad-rl`` command, one function per stage::

    from m3ad_rl import RCRLConfig, SFTConfig, EvalRunConfig, evaluate, load_config, train_rcrl, train_sft

    sft = train_sft(load_config(SFTConfig, "configs/train/sft-cpu.yaml",
                                ["model=runs/tiny", "data=runs/ft/sft.parquet", "out=runs/sft"]))
    rcrl = train_rcrl(RCRLConfig(model=sft["model"], data="runs/ft/rl.parquet", out="runs/rcrl", steps=8))
    report = evaluate(EvalRunConfig(model=rcrl["model"], dataset="runs/split/bench", out="runs/eval"))
    print(report["average"]["balanced_accuracy"])

Every path may be a storage URL (``s3://…``). Rewards score one response at a time::

    >>> from m3ad_rl import RewardFunction
    >>> RewardFunction()("<think>Clean. Initial answer: no.</think><answer>no</answer>",
    ...                  {"label": "normal", "defects": []}).score
    2.0

Names load on first use, so ``import m3ad_rl`` stays light (no torch, no Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {  # public name -> (module, attribute)
    "load_config": ("m3ad_rl.core.config", "load_config"),
    "SFTConfig": ("m3ad_rl.train.sft", "SFTConfig"),
    "train_sft": ("m3ad_rl.train.sft", "run"),
    "RCRLConfig": ("m3ad_rl.train.rcrl", "RCRLConfig"),
    "RCRLTrainer": ("m3ad_rl.train.rcrl", "RCRLTrainer"),
    "train_rcrl": ("m3ad_rl.train.rcrl", "run"),
    "EvalRunConfig": ("m3ad_rl.eval.run", "EvalRunConfig"),
    "evaluate": ("m3ad_rl.eval.run", "run"),
    "EvalConfig": ("m3ad_rl.eval.metrics", "EvalConfig"),
    "score_predictions": ("m3ad_rl.eval.metrics", "evaluate"),
    "make_engine": ("m3ad_rl.engines", "make_engine"),
    "RewardConfig": ("rewards.config", "RewardConfig"),
    "RewardFunction": ("rewards.scorer", "RewardFunction"),
    "load_reward_config": ("rewards.config", "load_reward_config"),
}
__all__ = [  # noqa: RUF022 (grouped by stage, as _API)
    "__version__", "load_config", "SFTConfig", "train_sft", "RCRLConfig", "RCRLTrainer", "train_rcrl",
    "EvalRunConfig", "evaluate", "EvalConfig", "score_predictions", "make_engine", "RewardConfig",
    "RewardFunction", "load_reward_config",
]  # fmt: skip

if TYPE_CHECKING:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.engines import make_engine
    from m3ad_rl.eval.metrics import EvalConfig
    from m3ad_rl.eval.metrics import evaluate as score_predictions
    from m3ad_rl.eval.run import EvalRunConfig
    from m3ad_rl.eval.run import run as evaluate
    from m3ad_rl.train.rcrl import RCRLConfig, RCRLTrainer
    from m3ad_rl.train.rcrl import run as train_rcrl
    from m3ad_rl.train.sft import SFTConfig
    from m3ad_rl.train.sft import run as train_sft
    from rewards.config import RewardConfig, load_reward_config
    from rewards.scorer import RewardFunction


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'm3ad_rl' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
