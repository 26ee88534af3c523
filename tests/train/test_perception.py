"""Stage 0 of ``m3ad-rl reproduce``: targets, the dense defect map, and exact resume from a checkpoint."""

from __future__ import annotations

import pytest

from m3ad_rl.core.output_format import parse
from m3ad_rl.data.schema import DefectRecord
from m3ad_rl.train.perception import defect_map, plain_answer


class _S:
    def __init__(self, defects):
        self.defects = defects


def test_plain_answer_parses_to_the_truth_without_reasoning():
    yes = parse(plain_answer(_S([DefectRecord("scratch", [0.1, 0.2, 0.3, 0.4])])))
    assert (yes.answer, yes.types, yes.think) == ("yes", ["scratch"], None)
    assert [round(v, 3) for v in (yes.boxes[0].x1, yes.boxes[0].y2)] == [0.1, 0.4]
    no = parse(plain_answer(_S([])))
    assert (no.answer, no.types, no.boxes) == ("no", [], [])


def test_defect_map_marks_the_cells_a_box_overlaps():
    torch = pytest.importorskip("torch")
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])  # 8×8 patches -> 4×4 merged tokens each
    top_left = _S([DefectRecord("scratch", [0.0, 0.0, 0.5, 0.5])])
    sliver = _S([DefectRecord("crack", [0.76, 0.9, 0.8, 0.95])])  # inside the bottom-right cell only
    lab = defect_map([top_left, sliver], grid)
    assert lab.shape == (32,)
    assert lab[:16].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert lab[16:].nonzero().flatten().tolist() == [15]
    assert defect_map([_S([])], grid[:1]).sum() == 0


def test_resume_continues_exactly(tmp_path, tiny_model):
    """A run straight through equals one stopped at a checkpoint and resumed: same weights, same metrics."""
    torch = pytest.importorskip("torch")
    from m3ad_rl.train.perception import PerceptionConfig, run

    def cfg(out, steps):
        return PerceptionConfig(
            model=str(tiny_model),
            out=str(out),
            vision_steps=2,
            vision_batch=3,
            steps=steps,
            batch=2,
            image_size=64,
            lr=1e-3,
            warmup_steps=1,
            checkpoint_every=2,
            eval_every=2,
            eval_images=4,
            threads=1,
        )

    straight = run(cfg(tmp_path / "a", 3), progress=False)  # 2 vision steps, then 3 answer steps
    run(cfg(tmp_path / "b", 1), progress=False)  # checkpoints at 2 and 3
    resumed = run(cfg(tmp_path / "b", 3), progress=False)  # resumes inside the answer phase
    assert [(h["step"], h["phase"]) for h in resumed["history"]] == [
        (2, "vision"),
        (3, "answer"),
        (4, "answer"),
        (5, "answer"),
    ]
    assert resumed["history"][-1]["perception/nll"] == pytest.approx(straight["history"][-1]["perception/nll"])
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a/model/model.safetensors"))
    b = load_file(str(tmp_path / "b/model/model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("probe") for k in a)  # the probe is not part of the saved model
