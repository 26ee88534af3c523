"""``m3ad-rl reproduce`` end to end at toy sizes: every stage runs, the report is written, and a rerun
skips the finished stages (the markers), redoing only what is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

slow = [pytest.mark.slow, pytest.mark.timeout(1800)]

TOY = {
    "seeds": [0, 1],
    "data": {
        "image_size": 64,
        "defect_scale": 2.0,
        "ft_categories": ["brick", "screw", "pcb", "parts tray"],
        "bench_categories": ["grass", "nut", "ic chip", "pill blister"],
        "ft_images": 12,
        "rl_images": 8,
        "val_images": 8,
        "ft_heldout_images": 8,
        "bench_images": 8,
    },
    "model": {"hidden_size": 64, "layers": 1, "intermediate_size": 128, "vision_hidden_size": 32, "vision_depth": 1},
    "perception": {
        "vision_steps": 2,
        "vision_batch": 4,
        "steps": 2,
        "batch": 4,
        "checkpoint_every": 2,
        "eval_every": 2,
        "eval_images": 4,
    },
    "sft": {"epochs": 1, "max_steps": 3, "micro_batch": 4, "freeze": ["model.visual.*"]},
    "rcrl": {
        "steps": 2,
        "batch_prompts": 2,
        "rollout": {"sampling": {"n": 2}},  # max_new_tokens: derived from the FT targets' lengths
        "actor": {"freeze": ["model.visual.*"], "optim": {"lr": 1e-3}},
        "checkpoint": {"every": 1, "keep": 1},
    },
    "variants": ["rewards/preset_a.yaml"],
    "bootstrap": 200,
}


def _run(config, out, *extra):
    cmd = [sys.executable, "-m", "m3ad_rl.cli", "reproduce", "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


@slow[0]
@slow[1]
def test_reproduce_runs_every_stage_then_resumes_by_stage(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({**TOY, "variants": []}))  # the variants: in the multi-node run (one seed)
    out = tmp_path / "run"
    first = _run(config, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (out / "report/results.md").read_text()
    for heading in ("Unseen categories", "Seen categories", "Targets", "Figure 5", "Wall time per stage"):
        assert heading in report
    assert "Base (stage 0)" in report and "RCRL (GRPO, preset_d)" in report
    assert "Token limits" in report and "paired by seed" in report
    assert (out / "report/curves.png").stat().st_size > 0 and (out / "report/reflection.png").stat().st_size > 0
    assert "The cases" in report and 'data-model="RCRL"' in (out / "report/gallery.html").read_text()
    summary = json.loads((out / "report/summary.json").read_text())
    assert len(summary["average"]["rcrl"]["bench"]) == 2  # one report per seed
    assert set(summary["differences"]) == {"rcrl"}
    assert (out / "seed-1/rcrl/model/config.json").exists()
    lengths = json.loads((out / "seed-0/ft/lengths.json").read_text())
    rl_limit = json.loads((out / "seed-0/rcrl/config.json").read_text())["rollout"]["sampling"]["max_new_tokens"]
    assert rl_limit >= lengths["max"] and summary["truncation"]["sft_rows"] == 0
    assert (out / "seed-0/sft/model/m3ad_lengths.json").exists() and (
        out / "seed-0/rcrl/model/m3ad_lengths.json"
    ).exists()
    _assert_frozen_tower(out / "perception/model", out / "seed-0/sft/model", out / "seed-0/rcrl/model")

    # a lost stage is redone; the others are skipped
    (out / "stages/seed-1-eval.json").unlink()
    second = _run(config, out, "--seeds", "0", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "perception: done" in second.stdout and "seed-0-rcrl: done" in second.stdout
    assert "seed-1-eval: running" in second.stdout


@slow[0]
def test_reproduce_config_mistakes_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TOY, "data": {**TOY["data"], "bench_images": 0}}))
    r = _run(bad, tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    r = _run(tmp_path / "missing.yaml", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("section", ["perception", "sft", "rcrl"])
def test_a_typo_in_a_trainer_section_fails_before_any_stage_runs(tmp_path, section):
    from m3ad_rl.core.config import ConfigError
    from m3ad_rl.pipeline.reproduce import ReproduceConfig, reproduce

    cfg = ReproduceConfig(**{**TOY, "out": str(tmp_path / "run"), section: {**TOY[section], "epoch": 5}})
    with pytest.raises(ConfigError, match=rf"{section}\.epoch"):
        reproduce(cfg)
    assert not (tmp_path / "run").exists()  # nothing was started


def _stages(tmp_path, **changes):
    from m3ad_rl.pipeline.reproduce import ReproduceConfig, plan

    return plan(ReproduceConfig(**{**TOY, "out": str(tmp_path), **changes}))


def test_a_changed_setting_makes_its_stage_and_the_later_ones_stale(tmp_path):
    a, b = _stages(tmp_path), _stages(tmp_path, sft={**TOY["sft"], "max_steps": 4})
    same = [n for n in a.plan if a.plan[n][1] == b.plan[n][1]]
    assert same == ["data", "init", "perception", "base-eval", "seed-0-ft", "seed-1-ft"]
    d = _stages(tmp_path, variants=["rewards/preset_a.yaml", "rewards/preset_b.yaml"])  # added variants: new stages
    assert [n for n in d.plan if n in a.plan and d.plan[n][1] == a.plan[n][1]] == list(a.plan)
    c = _stages(tmp_path, perception={**TOY["perception"], "steps": 5})
    assert [n for n in a.plan if a.plan[n][1] == c.plan[n][1]] == ["data", "init"]


def test_a_stale_stage_is_refused_and_redo_clears_it_and_its_descendants(tmp_path):
    from m3ad_rl.core.errors import UsageError

    a = _stages(tmp_path)
    for name in ("seed-0-ft", "seed-0-sft"):
        a.run(name, lambda: {"ok": 1})
    (tmp_path / "seed-0/sft").mkdir(parents=True)
    (tmp_path / "seed-0/sft/weights").write_text("x")
    b = _stages(tmp_path, sft={**TOY["sft"], "max_steps": 4})
    assert b.run("seed-0-ft", lambda: {"ok": 2}) == {"ok": 1}  # unchanged: skipped
    with pytest.raises(UsageError, match=r"seed-0-sft .* other settings"):
        b.run("seed-0-sft", lambda: {"ok": 2})
    with pytest.raises(UsageError, match="no such stage"):
        b.redo(["seed-9-sft"])
    b.redo(["seed-0-sft"])
    assert not (tmp_path / "seed-0/sft").exists() and (tmp_path / "stages/seed-0-ft.json").exists()
    assert b.run("seed-0-sft", lambda: {"ok": 2}) == {"ok": 2}
    assert b.descendants("seed-0-sft") == ["seed-0-sft", "seed-0-rcrl", "seed-0-eval", "seed-0-rcrl-preset_a",
                                           "seed-0-eval-preset_a"]  # fmt: skip


def test_the_rcrl_sections_reward_keys_hold_for_every_variant(tmp_path):
    """``rcrl.reward.*`` in the reproduce config goes over each variant's reward file, not under it."""
    from m3ad_rl.pipeline.reproduce import ReproduceConfig, _rcrl_config

    rcrl = {**TOY["rcrl"], "reward": {"consistency": {"reference": "ground_truth"}}}
    cfg = ReproduceConfig(**{**TOY, "out": str(tmp_path), "rcrl": rcrl})
    for variant, preset in (("rewards/preset_d.yaml", "d"), ("rewards/preset_a.yaml", "a")):
        rc = _rcrl_config(cfg, 0, str(tmp_path / "sft"), variant, 100)
        assert (rc.reward.reflection.preset, rc.reward.consistency.reference) == (preset, "ground_truth")
    plain = _rcrl_config(ReproduceConfig(**{**TOY, "out": str(tmp_path)}), 0, str(tmp_path), "rewards/preset_d.yaml", 9)
    assert plain.reward.consistency.reference == "prediction"


def test_the_image_sets_are_disjoint(tmp_path):
    """SFT pool, RL prompts, validation, held-out and benchmark share no image (by id or by content), and the
    benchmark shares no category with the rest."""
    import hashlib

    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.pipeline.reproduce import ReproduceConfig, _data, data_sets

    cfg = ReproduceConfig(**{**TOY, "out": str(tmp_path)})
    assert set(data_sets(cfg)) == {"ft", "rl", "val", "ft-heldout", "bench"}
    urls = _data(cfg)
    seen: dict[str, str] = {}
    for name, url in urls.items():
        samples = list(iter_samples(url))
        assert len(samples) == dict(data_sets(cfg))[name][1]
        for s in samples:
            for key in (s.id, hashlib.sha1(s.image_bytes()).hexdigest()):
                assert key not in seen, f"{name} repeats an image of {seen.get(key)}"
                seen[key] = name
        if name == "bench":
            assert not {s.category for s in samples} & set(cfg.data.ft_categories)
        else:
            assert {s.category for s in samples} <= set(cfg.data.ft_categories)


def _assert_frozen_tower(base, *trained):
    """With freeze: [model.visual.*] in SFT and RCRL, the vision tower is the base's bit for bit, the rest moved."""
    from safetensors.torch import load_file

    b = load_file(str(base / "model.safetensors"))
    for path in trained:
        t = load_file(str(path / "model.safetensors"))
        vis = [k for k in b if ".visual." in k or k.startswith("visual.")]
        assert vis and all(b[k].equal(t[k]) for k in vis), f"{path}: the frozen tower changed"
        assert any(not b[k].equal(t[k]) for k in b if k not in vis), f"{path}: nothing trained"
