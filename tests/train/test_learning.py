"""The RCRL loop improves a policy (issue 14): from a weak start the mean reward climbs and the held-out
answer accuracy rises, for two seeds; each of three sabotages makes the same check fail."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1])
def test_rcrl_reward_climbs_and_heldout_accuracy_rises(seed, tmp_path):
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    result = run_learning_check(tmp_path, LearningCheck(seed=seed))
    print(result.line())
    assert result.passed, result.line()


@pytest.mark.parametrize("sabotage", ["advantage_sign", "no_weight_push", "zero_lr"])
def test_each_sabotage_fails_the_check(sabotage, tmp_path):
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    result = run_learning_check(tmp_path, LearningCheck(seed=0, sabotage=sabotage))
    print(result.line())
    assert not result.passed, result.line()
