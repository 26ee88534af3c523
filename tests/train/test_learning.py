"""The RCRL loop improves a policy (issue 14): from a weak start the mean reward climbs and the held-out
answer accuracy rises, for two seeds; each of three sabotages makes the same check fail."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed0_work(tmp_path_factory):
    """The seed-0 check's folder: its weak start (the SFT model) is the sabotage checks' start too."""
    return tmp_path_factory.mktemp("learning-seed0")


@pytest.mark.parametrize("seed", [0, 1])
def test_rcrl_reward_climbs_and_heldout_accuracy_rises(seed, tmp_path, seed0_work):
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    result = run_learning_check(seed0_work if seed == 0 else tmp_path, LearningCheck(seed=seed))
    print(result.line())
    assert result.passed, result.line()


@pytest.mark.parametrize("sabotage", ["advantage_sign", "no_weight_push", "zero_lr"])
def test_each_sabotage_fails_the_check(sabotage, tmp_path, seed0_work):
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    start = seed0_work if (seed0_work / "sft-start.json").exists() else None  # (the seed-0 check ran first)
    result = run_learning_check(tmp_path, LearningCheck(seed=0, sabotage=sabotage), sft_from=start)
    print(result.line())
    assert not result.passed, result.line()


def test_a_start_from_another_recipe_is_refused(tmp_path):
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sft-start.json").write_text('{"seed": 1}')
    with pytest.raises(ValueError, match="was trained for"):
        run_learning_check(tmp_path / "run", LearningCheck(seed=0), sft_from=tmp_path / "other")
