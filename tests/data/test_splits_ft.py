"""Cross-category splits and FT construction (difficulty, modes, trajectories, SFT and RL sets)."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from m3ad_rl.core.output_format import parse
from m3ad_rl.data import ft
from m3ad_rl.data.captioner_template import TemplateCaptioner, where
from m3ad_rl.data.splits import SplitConfig, SplitError, assign, check_disjoint
from m3ad_rl.data.synthetic import SynthConfig, generate
from rewards import RewardFunction

CATS = [("texture", c) for c in ("brick", "wood", "grass", "fabric")] + [("logical", "tray"), ("logical", "kit")]


def test_fraction_split_is_per_scene_seeded_and_disjoint():
    a = assign(CATS, SplitConfig(seed=1, bench_fraction=0.5))
    assert a == assign(CATS, SplitConfig(seed=1, bench_fraction=0.5))
    tex = Counter(v for (s, _), v in a.items() if s == "texture")
    assert tex == {"ft": 2, "bench": 2}
    assert Counter(v for (s, _), v in a.items() if s == "logical") == {"ft": 1, "bench": 1}
    seeds = {tuple(sorted(assign(CATS, SplitConfig(seed=k)).items())) for k in range(6)}
    assert len(seeds) > 1


def test_explicit_lists_and_refusals():
    a = assign(CATS, SplitConfig(bench={"texture": ["wood"]}, ft={"logical": ["tray"]}))
    assert a[("texture", "wood")] == "bench" and a[("texture", "brick")] == "ft" and a[("logical", "kit")] == "bench"
    with pytest.raises(SplitError, match=r"\['wood'\] are listed for both"):
        assign(CATS, SplitConfig(bench={"texture": ["wood"]}, ft={"texture": ["wood", "brick"]}))
    with pytest.raises(SplitError, match="unknown categories"):
        assign(CATS, SplitConfig(bench={"texture": ["marble"]}))
    with pytest.raises(SplitError, match="both sides"):
        check_disjoint([("texture", "wood")], [("texture", "wood"), ("texture", "grass")])


def test_difficulty_mode_and_initial_decision():
    samples = list(generate(SynthConfig(n=400, seed=2, size=64)))
    cfg = ft.FTConfig(seed=0)
    truth = {s.id: ("yes" if s.anomalous else "no") for s in samples}
    flip = {"yes": "no", "no": "yes"}
    preds = {sid: (v if i % 3 else flip[v]) for i, (sid, v) in enumerate(truth.items())}  # 1/3 wrong
    modes = Counter()
    for s in samples:
        difficulty, mode, initial = ft.assign(s, preds[s.id], cfg)
        assert difficulty == ("easy" if preds[s.id] == truth[s.id] else "hard")
        assert initial == (preds[s.id] if (difficulty, mode) == ("hard", "reflective") else truth[s.id])
        modes[(difficulty, mode)] += 1
    p_easy = modes[("easy", "reflective")] / (modes[("easy", "reflective")] + modes[("easy", "thinking")])
    p_hard = modes[("hard", "reflective")] / (modes[("hard", "reflective")] + modes[("hard", "thinking")])
    assert 0.22 < p_easy < 0.38 and 0.6 < p_hard < 0.8
    assert ft.assign(samples[0], None, cfg)[0] == "hard"  # unreadable base answer


def test_template_trajectories_parse_and_score_as_intended():
    samples = list(generate(SynthConfig(n=120, seed=5, size=64)))
    cap, fn = TemplateCaptioner(seed=0), RewardFunction()
    texts = set()
    for s in samples:
        verdict = "yes" if s.anomalous else "no"
        for mode, initial in [
            ("thinking", verdict),
            ("reflective", verdict),
            ("reflective", "no" if s.anomalous else "yes"),
        ]:
            text = cap.caption(s, mode, initial)
            p = parse(text)
            assert p.well_formed and not p.problems, (text, p.problems)
            assert p.answer == verdict and p.initial == initial
            assert (p.reflection is not None) == (mode == "reflective")
            r = fn(text, s.ground_truth())
            assert r.consistency == 1.0 and r.answer == 1.0
            if s.anomalous:
                assert r.type == 1.0 and r.location > 0.95  # boxes are written with 3 decimals
            expected = "none" if mode == "thinking" else ("ineffective" if initial == verdict else "correct")
            assert r.reflection_outcome == expected
            texts.add(text.split("</think>")[0])
    assert len(texts) > 200  # varied wording


def test_where_words():
    assert where([0.0, 0.0, 0.2, 0.2]) == "upper-left" and where([0.4, 0.4, 0.6, 0.6]) == "central"
    assert where([0.8, 0.4, 0.9, 0.6]) == "right"


def test_sft_and_rl_rows(tmp_path):
    samples = list(generate(SynthConfig(n=10, seed=1, size=64)))
    preds = {s.id: "no" for s in samples[:8]}  # two samples have no prediction
    report = ft.FTReport()
    cfg = ft.FTConfig()
    built = list(ft.build(samples, preds, TemplateCaptioner(), cfg, report))
    assert len(built) == 8 and [sid for sid, _ in report.skipped] == [samples[8].id, samples[9].id]
    n = ft.write_parquet(
        str(tmp_path / "rl.parquet"), (ft.rl_row(s, i, cfg) for i, s in enumerate(built)), ft.RL_SCHEMA
    )
    rl = pq.read_table(tmp_path / "rl.parquet").to_pylist()
    assert n == 8 and rl[0]["prompt"][0]["content"].startswith("<image>Are there any defects")
    assert rl[0]["images"][0]["bytes"] == built[0].image
    assert json.loads(rl[0]["reward_model"]["ground_truth"]) == built[0].ground_truth()
    ft.write_parquet(str(tmp_path / "sft.parquet"), (ft.sft_row(s, cfg) for s in built), ft.SFT_SCHEMA)
    sft = pq.read_table(tmp_path / "sft.parquet").to_pylist()
    msgs = json.loads(sft[0]["messages"])
    assert msgs[0]["content"][0] == {"type": "image"} and msgs[1]["content"][0]["text"] == built[0].target


# -- the captioner interface and build_ft (the library call behind `data build-ft`) -------------


class FailingCaptioner:
    """The ``Captioner`` interface with a caption that fails, as an LLM endpoint's can."""

    name = "failing"

    def __init__(self, fail: str):
        self.fail, self.inner = fail, TemplateCaptioner()
        self.calls = 0

    def caption_samples(self, jobs, progress=False):
        self.calls += 1
        out = self.inner.caption_samples(jobs)
        for r in out:
            if r.id == self.fail:
                r.text, r.error = None, "HTTP 503: busy"
        return out


def test_build_leaves_out_failed_captions_after_missing_predictions():
    samples = list(generate(SynthConfig(n=6, seed=3, size=64)))
    preds = {s.id: "no" for s in samples[1:]}
    report, cap = ft.FTReport(), FailingCaptioner(fail=samples[2].id)
    built = ft.build(samples, preds, cap, ft.FTConfig(), report)
    assert [s.id for s in built] == [s.id for s in samples[1:] if s.id != samples[2].id] and cap.calls == 1
    assert report.skipped == [
        (samples[0].id, "no base-model prediction"),
        (samples[2].id, "caption failed: HTTP 503: busy"),
    ]
    assert report.easy + report.hard == report.thinking + report.reflective == 4 and all(s.target for s in built)


@pytest.fixture
def ft_input(tmp_path):
    from m3ad_rl.data.store import write_dataset

    samples = list(generate(SynthConfig(n=10, seed=6, size=64)))
    write_dataset(str(tmp_path / "in"), samples, quiet=True)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": s.id, "answer": "yes"}) + "\n" for s in samples[:-1]))
    return str(tmp_path / "in"), str(preds), samples


def test_build_ft_writes_samples_sft_and_rl(ft_input, tmp_path):
    from m3ad_rl.data.store import iter_samples

    ds, preds, samples = ft_input
    out = str(tmp_path / "ft")
    report = ft.build_ft(ds, preds, out + "/", ft.FTConfig(seed=1), ft.make_captioner("template", seed=1))
    assert report.skipped == [(samples[-1].id, "no base-model prediction")]
    assert report.sft_rows == report.rl_rows == report.easy + report.hard == report.thinking + report.reflective == 9
    kept = list(iter_samples(f"{out}/samples", with_images=False))
    assert [s.id for s in kept] == [s.id for s in samples[:-1]] and all(s.target and s.mode for s in kept)
    rl = pq.read_table(f"{out}/rl.parquet").to_pylist()
    assert [r["extra_info"]["id"] for r in rl] == [s.id for s in kept] and pq.read_metadata(
        f"{out}/sft.parquet"
    ).num_rows == 9


def test_build_ft_publishes_all_sets_or_nothing(ft_input, tmp_path, monkeypatch):
    """The output contract: a folder of a user's files is refused and untouched; an interrupted rewrite of an
    earlier FT output leaves that output whole (its samples beside its own sets); predictions that match no
    sample are an error before anything is written."""
    from m3ad_rl.core.errors import DataError, UsageError
    from m3ad_rl.data.store import DatasetWriter

    ds, preds, _ = ft_input
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sft.parquet").write_bytes(b"a user's file")
    with pytest.raises(UsageError, match="did not write"):
        ft.build_ft(ds, preds, str(mine), ft.FTConfig(), TemplateCaptioner(), progress=False, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["sft.parquet"] and (
        mine / "sft.parquet"
    ).read_bytes() == b"a user's file"

    out = tmp_path / "ft"
    ft.build_ft(ds, preds, str(out), ft.FTConfig(), TemplateCaptioner(), progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="--overwrite"):
        ft.build_ft(ds, preds, str(out), ft.FTConfig(), TemplateCaptioner(), progress=False)

    def interrupted(self, sample):
        raise RuntimeError("disk full")

    monkeypatch.setattr(DatasetWriter, "write", interrupted)
    with pytest.raises(RuntimeError, match="disk full"):
        ft.build_ft(ds, preds, str(out), ft.FTConfig(), TemplateCaptioner(), progress=False, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    nobody = tmp_path / "nobody.jsonl"
    nobody.write_text('{"id": "not-a-sample", "answer": "yes"}\n')
    with pytest.raises(DataError, match=r"no sample .* has a prediction"):
        ft.build_ft(ds, str(nobody), str(out), ft.FTConfig(), TemplateCaptioner(), progress=False, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_build_ft_checks_before_any_work(ft_input, tmp_path):
    from m3ad_rl.core.errors import DataError, UsageError

    ds, preds, _ = ft_input
    cap = FailingCaptioner(fail="")
    with pytest.raises(UsageError, match="would write over what it reads"):
        ft.build_ft(ds, preds, f"{ds}/ft", ft.FTConfig(), cap)
    with pytest.raises(UsageError, match="--predictions"):
        ft.build_ft(ds, str(tmp_path / "nowhere.jsonl"), str(tmp_path / "a"), ft.FTConfig(), cap)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "answer": "maybe"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        ft.build_ft(ds, str(bad), str(tmp_path / "b"), ft.FTConfig(), cap)
    assert cap.calls == 0 and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
