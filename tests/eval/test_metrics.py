"""Benchmark metrics against SPEC §4 and hand computations; balanced accuracy against sklearn."""

import random

import pytest
from sklearn.metrics import balanced_accuracy_score

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.data.simulated_responses import make_records
from m3ad_rl.eval.metrics import EvalConfig, Prediction, evaluate, f1
from tests.helpers import out

A = GroundTruth.from_obj(
    {
        "label": "anomalous",
        "defects": [{"type": "scratch", "box": [0.0, 0.0, 0.5, 0.5]}, {"type": "hole", "box": [0.5, 0.5, 1.0, 1.0]}],
    }
)
N = GroundTruth.from_obj({"label": "normal", "defects": []})


def P(i, scene, response, gt, source=None):
    return Prediction(str(i), scene, response, gt, source)


def test_hand_computed_scene():
    preds = [
        # TP anomaly: types {scratch ✓ (1.0), scuff ✗ vs hole (0.25 < τ)}; boxes IoU 1.0 and 0.2
        P(0, "texture", out("yes", types=["scratch", "scuff"], boxes=[[0, 0, 0.5, 0.5], [0.5, 0.5, 0.7, 0.8]]), A),
        # missed anomaly: 2 FN types, 2 FN boxes
        P(1, "texture", out("no"), A),
        # false alarm on a normal image: 1 FP type, 1 FP box
        P(2, "texture", out("yes", types=["dent"], boxes=[[0, 0, 1, 1]]), N),
        # correct normal
        P(3, "texture", out("no"), N),
    ]
    rep = evaluate(preds)
    s = rep["scenes"]["texture"]
    assert s["n"] == 4 and s["accuracy"] == 0.5
    assert s["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    # types: TP=1, FP=1 (scuff) + 1 (dent) = 2, FN=1 (hole) + 2 = 3 -> 2/(2+2+3)
    assert s["type_f1"] == pytest.approx(2 / 7)
    # boxes at IoU 0.3: the second box has IoU (0.2*0.3)/(0.25) = 0.24 -> TP=1, FP=1+1, FN=1+2
    assert s["loc_f1"] == pytest.approx(2 / 7)
    assert rep["loc_f1_by_iou"]["0.2"] == pytest.approx(4 / 7)  # at 0.2 both boxes of sample 0 count
    assert rep["loc_f1_by_iou_per_scene"]["texture"]["0.3"] == s["loc_f1"]


def test_type_threshold_counts_same_level2_but_not_level1():
    gt = GroundTruth.from_obj({"label": "anomalous", "defects": [{"type": "scratch", "box": [0, 0, 1, 1]}]})
    near = evaluate([P(0, "texture", out("yes", types=["scuff"], boxes=[[0, 0, 1, 1]]), gt)])
    far = evaluate([P(0, "texture", out("yes", types=["surface anomaly"], boxes=[[0, 0, 1, 1]]), gt)])
    assert near["scenes"]["texture"]["type_f1"] == 1.0
    assert far["scenes"]["texture"]["type_f1"] == 0.0
    strict = evaluate(
        [P(0, "texture", out("yes", types=["scuff"], boxes=[[0, 0, 1, 1]]), gt)], EvalConfig(type_threshold=1.0)
    )
    assert strict["scenes"]["texture"]["type_f1"] == 0.0


def test_iou_threshold_is_inclusive():
    gt = GroundTruth.from_obj({"label": "anomalous", "defects": [{"type": "scratch", "box": [0, 0, 1, 1]}]})
    rep = evaluate([P(0, "texture", out("yes", types=["scratch"], boxes=[[0, 0, 0.3, 1]]), gt)])
    assert rep["scenes"]["texture"]["loc_f1"] == 1.0
    assert rep["loc_f1_by_iou"]["0.4"] == 0.0


def test_average_is_the_mean_of_scenes_not_of_samples():
    preds = [P(i, "texture", out("no"), N) for i in range(9)] + [P(9, "texture", out("no"), A)]
    preds += [P(10, "workpiece", out("no"), A)]
    rep = evaluate(preds)
    assert rep["scenes"]["texture"]["accuracy"] == 0.9 and rep["scenes"]["workpiece"]["accuracy"] == 0.0
    assert rep["average"]["accuracy"] == pytest.approx(0.45)  # not 9/11
    assert set(rep["average"]) == {"accuracy", "balanced_accuracy", "type_f1", "loc_f1"}
    assert list(rep["scenes"]) == ["texture", "workpiece"]


def test_exclude_source():
    preds = [
        P(0, "texture", out("no"), N, "real-iad"),
        P(1, "texture", out("yes", types=["dent"], boxes=[[0, 0, 1, 1]]), N, "mvtec-ad"),
    ]
    assert evaluate(preds)["scenes"]["texture"]["n"] == 2
    rep = evaluate(preds, EvalConfig(exclude_sources=("Real-IAD",)))
    assert rep["scenes"]["texture"] == {
        "n": 1,
        "accuracy": 0.0,
        "balanced_accuracy": 0.0,
        "type_f1": 0.0,
        "loc_f1": 0.0,
    }


def test_reflection_report_before_and_after():
    preds = [
        P(0, "workpiece", out("yes", initial="no", reflection="r", types=["hole"], boxes=[[0.5, 0.5, 1, 1]]), A),
        P(1, "workpiece", out("yes", initial="no", reflection="r", types=["hole"], boxes=[[0.5, 0.5, 1, 1]]), N),
        P(2, "workpiece", out("no", initial="no", reflection="r"), N),
        P(3, "workpiece", out("no", initial="no"), N),
    ]
    rep = evaluate(preds)["reflection"]
    w = rep["scenes"]["workpiece"]
    assert w["rate"] == 0.75
    assert w["accuracy_before"] == 0.75 and w["accuracy_after"] == 0.75
    assert w["balanced_accuracy_before"] == pytest.approx((0 + 1) / 2)
    assert w["balanced_accuracy_after"] == pytest.approx((1 + 2 / 3) / 2)
    assert rep["counts"] == {"reflected": 3, "correct": 1, "ineffective": 1, "erroneous": 1, "n": 4}
    assert rep["correct"] == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_balanced_accuracy_matches_sklearn():
    rng = random.Random(0)
    records = make_records(400, seed=1)
    preds = [
        P(r["id"], rng.choice(["texture", "workpiece"]), r["response"], GroundTruth.from_obj(r["ground_truth"]))
        for r in records
    ]
    rep = evaluate(preds)
    from m3ad_rl.core.output_format import parse

    for scene in ("texture", "workpiece"):
        ps = [p for p in preds if p.scene == scene]
        y = [p.ground_truth.verdict for p in ps]
        yhat = [parse(p.response).answer or "invalid" for p in ps]
        assert rep["scenes"][scene]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, yhat))


def test_all_report_metrics_are_fractions():
    rep = evaluate(
        [
            P(r["id"], r["scene"], r["response"], GroundTruth.from_obj(r["ground_truth"]), r["source"])
            for r in make_records(300, seed=2)
        ]
    )
    for scene in rep["scenes"].values():
        assert all(0 <= v <= 1 for k, v in scene.items() if k != "n")
    assert all(0 <= v <= 1 for v in rep["average"].values())
    assert list(rep["loc_f1_by_iou"]) == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    sweep = list(rep["loc_f1_by_iou"].values())
    assert sweep == sorted(sweep, reverse=True)  # a stricter IoU never finds more


def test_f1_edge_cases():
    assert f1(0, 0, 0) == 0.0 and f1(3, 0, 0) == 1.0 and f1(1, 1, 0) == pytest.approx(2 / 3)
