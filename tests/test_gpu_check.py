"""bench/gpu_check.py (run on a lent GPU, docs/benchmarks.md) keeps working: the same code path on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m 'not slow'` skips it

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "r.json"
    argv = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--shapes", "tiny", "--device", "cpu",
            "--prompts", "2", "--n", "2", "--new-tokens", "8", "--micro", "2", "--steps", "1",
            "--image-px", "64", "--rollout-modes", "dynamic", "static", "--json", str(out)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    assert r["shape"] == "tiny" and r["update_tokens"] > 0 and r["rollout_tokens_per_s"] > 0
    assert r["rollout_modes"]["static"]["rows_same_as_first_mode"] == 4  # fp32 on CPU: the same tokens
    assert r["params_M"] > 19  # the 151,936-row embedding is there
    assert r["share_prefix"] and r["shared_vs_full_max_abs_diff"] < 1e-4  # fp32 on CPU: the same log-probs
