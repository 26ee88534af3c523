"""RCRL: reflection-aware GRPO with one controller (``trainer``), its settings (``config``), the prompt set
and seeds (``prompts``), the reward service client (``reward_client``) and the step metrics (``metrics``).

>>> from m3ad_rl.train.rcrl import RCRLConfig, run
>>> cfg = RCRLConfig(model="runs/sft/model", data="runs/ft/rl.parquet", out="runs/rcrl", steps=8)
>>> result = run(cfg)  # doctest: +SKIP
"""

from m3ad_rl.train.rcrl.config import RCRLConfig
from m3ad_rl.train.rcrl.prompts import PromptSet
from m3ad_rl.train.rcrl.trainer import RCRLTrainer, run

__all__ = ["PromptSet", "RCRLConfig", "RCRLTrainer", "run"]
