"""Token limits against the data: build-ft records the targets' lengths; SFT, RCRL and eval refuse (or warn
about) a limit below the longest target, naming both numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from m3ad_rl.core.errors import UsageError
from m3ad_rl.data.lengths import check_limit, suggested_limit


@pytest.fixture(scope="module")
def ft(tmp_path_factory, tiny_model):
    """A small FT set built with the tiny model's tokenizer: OUT/lengths.json."""
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner
    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("lengths")
    synthesize(SynthConfig(n=16, seed=3, size=64), str(root / "pool"), progress=False)
    synthesize(SynthConfig(n=6, seed=4, size=64), str(root / "rl"), progress=False)
    with open(root / "preds.jsonl", "w") as fh:
        for i, s in enumerate(iter_samples(str(root / "pool"))):
            fh.write(json.dumps({"id": s.id, "answer": "yes" if i % 2 else "no"}) + "\n")
    report = build_ft(str(root / "pool"), str(root / "preds.jsonl"), str(root / "ft"), FTConfig(),
                      make_captioner("template"), tokenizer=str(tiny_model), rl_input=str(root / "rl"))  # fmt: skip
    return root, report


def test_build_ft_records_the_targets_token_lengths(ft, tiny_model):
    from transformers import AutoTokenizer

    root, report = ft
    rec = json.loads((root / "ft/lengths.json").read_text())
    assert rec == report.lengths and rec["count"] == report.sft_rows == 16 and report.rl_rows == 6
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "ft/sft.parquet").to_pylist()
    true = [len(tok(json.loads(r["messages"])[1]["content"][0]["text"], add_special_tokens=False)["input_ids"]) + 1
            for r in rows]  # fmt: skip
    assert rec["max"] == max(true) and rec["min"] == min(true)
    assert sum(rec["counts"].values()) == 16 and set(rec["by_mode"]) <= {"thinking", "reflective"}
    assert report.rl_overlap == 0


def test_a_limit_below_the_longest_target_is_refused_or_warned(ft):
    _, report = ft
    found = (report.lengths, "lengths.json")
    longest = report.lengths["max"]
    assert check_limit(longest, "k", found) is None  # every target fits
    with pytest.raises(UsageError) as e:
        check_limit(longest - 1, "rollout.sampling.max_new_tokens", found)
    assert f"max_new_tokens={longest - 1}" in str(e.value) and f"({longest} tokens" in str(e.value)
    assert "1 of 16" in str(e.value) or "of 16 targets longer" in str(e.value)
    assert check_limit(longest - 1, "k", found, "warn").startswith("warning:")
    assert check_limit(1, "k", found, "off") is None and check_limit(1, "k", None) is None
    assert suggested_limit(report.lengths) >= longest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "m3ad_rl.cli", *args], capture_output=True, text=True, timeout=600)


def test_sft_rcrl_and_eval_refuse_a_short_limit_before_starting(ft, tiny_model, tmp_path):
    """One line naming both numbers, exit 2, before Ray or DeepSpeed start; the model SFT would write carries the
    record, so evaluation checks it too."""
    root, report = ft
    longest = report.lengths["max"]
    said = f"({longest} tokens"
    sft, rl = f"data={root / 'ft/sft.parquet'}", f"data={root / 'ft/rl.parquet'}"
    r = _cli("train", "sft", "--config", "configs/train/sft-cpu.yaml", "--set", f"model={tiny_model}", sft,
             f"out={tmp_path / 'sft'}", f"max_response_tokens={longest - 5}")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and said in r.stderr, r.stderr[-2000:]
    r = _cli("train", "rcrl", "--config", "configs/train/rcrl-cpu.yaml", "--set", f"model={tiny_model}", rl,
             f"out={tmp_path / 'rcrl'}", "rollout.sampling.max_new_tokens=24")  # fmt: skip
    assert r.returncode == 2 and "max_new_tokens=24" in r.stderr and said in r.stderr, r.stderr[-2000:]
    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_model, model)
    (model / "m3ad_lengths.json").write_text(json.dumps(report.lengths))
    r = _cli("eval", "run", "--model", str(model), "--dataset", str(root / "rl"), "--out", str(tmp_path / "ev"),
             "--set", "sampling.max_new_tokens=24")  # fmt: skip
    assert r.returncode == 2 and f"({longest} tokens" in r.stderr and not (tmp_path / "ev").exists(), r.stderr[-2000:]
