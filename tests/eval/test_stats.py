"""The paired bootstrap of Δ balanced accuracy: exact point values, a brute-force twin, and its pairing."""

from __future__ import annotations

import numpy as np
import pytest

from m3ad_rl.eval.stats import Outcomes, balanced_accuracy, paired_difference, reflection_totals


def _outcomes(correct, anomalous, scene, reflected=None, outcome=None) -> Outcomes:
    n = len(correct)
    return Outcomes(
        tuple(f"id{i:04d}" for i in range(n)), np.array(scene), np.array(anomalous, bool), np.array(correct, bool),
        np.zeros(n, bool) if reflected is None else np.array(reflected, bool),
        np.array([""] * n if outcome is None else outcome),
    )  # fmt: skip


def _world(n=400, seeds=3, gain=0.05, rng=None):
    rng = rng or np.random.default_rng(1)
    scene = np.where(np.arange(n) % 3 == 0, "texture", np.where(np.arange(n) % 3 == 1, "workpiece", "logical"))
    anomalous = rng.random(n) < 0.5
    hard = rng.random(n)  # images differ in difficulty: the pairing matters
    base, new = [], []
    for _ in range(seeds):
        b = hard > 0.3 + 0.05 * rng.standard_normal()
        flip = rng.random(n) < gain
        base.append(_outcomes(b, anomalous, scene))
        new.append(_outcomes(b | flip, anomalous, scene))
    return base, new


def test_point_value_is_the_mean_of_per_seed_differences_of_spec_balanced_accuracy():
    # two scenes; scene A: 2 pos (1 right), 2 neg (2 right) -> 0.75; scene B: 1 pos right, 1 neg wrong -> 0.5
    b = _outcomes([1, 0, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0], ["texture"] * 4 + ["logical"] * 2)
    n = _outcomes([1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0], ["texture"] * 4 + ["logical"] * 2)
    assert balanced_accuracy(b) == pytest.approx((0.75 + 0.5) / 2)
    assert balanced_accuracy(n) == pytest.approx((1.0 + 0.5) / 2)
    r = paired_difference([b, b], [n, b], n_boot=200)
    assert r["per_seed"] == pytest.approx([0.125, 0.0]) and r["mean"] == pytest.approx(0.0625)


def test_identical_models_give_a_zero_width_interval():
    base, _ = _world()
    r = paired_difference(base, base, n_boot=500)
    assert r["mean"] == r["lo"] == r["hi"] == 0.0


def test_bootstrap_equals_a_brute_force_loop():
    """The vectorised replicates equal a plain loop with the same draws (images within scenes, shared across
    seeds and models; seeds with replacement)."""
    base, new = _world(n=90, seeds=3)
    r = paired_difference(base, new, n_boot=300, seed=7)
    rng = np.random.default_rng(7)
    ref = base[0]
    n, k = len(ref.ids), len(base)
    w = np.zeros((300, n))
    for sc in dict.fromkeys(ref.scene.tolist()):
        idx = np.flatnonzero(ref.scene == sc)
        draws = rng.integers(0, len(idx), size=(300, len(idx)))
        for b in range(300):
            for j in idx[draws[b]]:
                w[b, j] += 1
    seeds = rng.multinomial(k, np.full(k, 1 / k), size=300) / k
    reps = [
        sum(seeds[b, s] * (balanced_accuracy(new[s], w[b]) - balanced_accuracy(base[s], w[b])) for s in range(k))
        for b in range(300)
    ]
    assert r["lo"] == pytest.approx(np.quantile(reps, 0.025)) and r["hi"] == pytest.approx(np.quantile(reps, 0.975))


def test_pairing_narrows_the_interval_and_it_covers_the_truth():
    """A model that fixes 5 % of images on every seed: the interval holds the true gain and is far narrower than
    the spread of either model's own accuracy over image resamples."""
    base, new = _world(n=600, seeds=3, gain=0.05)
    r = paired_difference(base, new, n_boot=2000)
    assert r["lo"] > 0 and r["lo"] <= r["mean"] <= r["hi"]
    assert r["hi"] - r["lo"] < 0.04  # unpaired, each Bal alone has a 95 % width of ~0.07 at n = 600


def test_different_images_are_refused():
    base, new = _world(n=30, seeds=2)
    other = _outcomes(new[1].correct[:-1], new[1].anomalous[:-1], new[1].scene[:-1])
    with pytest.raises(ValueError, match="same images"):
        paired_difference(base, [new[0], other])
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(base, new[:1])


def test_reflection_totals_count_every_response():
    o = _outcomes([1, 0, 1], [1, 1, 0], ["texture"] * 3, [1, 1, 0], ["correct", "erroneous", ""])
    assert reflection_totals([o, o]) == {"responses": 6, "reflected": 4, "correct": 2, "ineffective": 0,
                                         "erroneous": 2}  # fmt: skip
