"""The verl entry point, loaded through verl 0.9.1's own custom-reward loader."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import out

verl_reward = pytest.importorskip("verl.trainer.ppo.reward")

MODULE = Path(__file__).resolve().parents[2] / "rewards" / "verl_reward.py"
GT = {"label": "anomalous", "defects": [{"type": "bent", "box": [0.1, 0.1, 0.3, 0.3]}]}


def _load(path: str, **reward_kwargs):
    cfg = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": path, "name": "compute_score", "reward_kwargs": reward_kwargs}}}
    )
    return verl_reward.get_custom_reward_fn(cfg)


@pytest.mark.parametrize("path", [str(MODULE), "pkg://rewards.verl_reward"])
def test_verl_loads_compute_score_and_gets_every_part(path):
    fn = _load(path)
    text = out(
        "yes", initial="no", reflection="The lead is bent after all.", types=["bent"], boxes=[[0.1, 0.1, 0.3, 0.3]]
    )
    res = fn(data_source="m3ad", solution_str=text, ground_truth=GT, extra_info={"index": 0})
    assert res == {
        "score": 5.0,
        "acc": 1.0,
        "consistency": 1.0,
        "answer": 1.0,
        "type": 1.0,
        "location": 1.0,
        "reflection": 1.0,
        "reflected": 1.0,
        "reflection_correct": 1.0,
        "reflection_ineffective": 0.0,
        "reflection_erroneous": 0.0,
    }
    assert all(isinstance(v, float) for v in res.values())  # verl averages every extra key


def test_reward_kwargs_choose_the_config_and_json_ground_truth_works():
    fn = _load(str(MODULE), config="configs/rewards/preset_a.yaml", overrides=["weights.accuracy=0"])
    text = out("no", initial="no", reflection="Still normal.")
    res = fn(data_source="m3ad", solution_str=text, ground_truth='{"label": "normal", "defects": []}')
    assert res["reflection"] == 0.2 and res["score"] == pytest.approx(1.0 + 0.2)
    assert res["reflection_ineffective"] == 1.0


def test_pixel_boxes_use_the_image_size_in_extra_info():
    fn = _load(str(MODULE), overrides=["parse.box_scale=pixels"])
    text = out("yes", types=["bent"], boxes=[[0.1, 0.1, 0.3, 0.3]]).replace(
        "(0.100,0.100)(0.300,0.300)", "(20,20)(60,60)"
    )
    res = fn(data_source="m3ad", solution_str=text, ground_truth=GT, extra_info={"width": 200, "height": 200})
    assert res["location"] == pytest.approx(1.0)
