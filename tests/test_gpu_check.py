"""bench/gpu_check.py (run on a lent GPU, docs/benchmarks.md) keeps working: the same code path on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m 'not slow'` skips it

ROOT = Path(__file__).resolve().parents[1]


# A GPU machine's image has torch and transformers but no Ray, DeepSpeed, verl or vLLM: the check runs
# with those hidden (``find_spec`` says they are not installed, an import fails), as they would be there.
WITHOUT = """\
import importlib.util, sys
HIDDEN = ("ray", "deepspeed", "vllm", "verl")
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in HIDDEN else _find(name, package)
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
"""


def _gpu_check(tmp_path, *extra: str) -> dict:
    """gpu_check.py on the tiny shape, in a process where Ray, DeepSpeed, verl and vLLM cannot import."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(WITHOUT)
    out = tmp_path / "r.json"
    argv = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--shapes", "tiny", "--device", "cpu",
            "--prompts", "2", "--n", "2", "--new-tokens", "8", "--micro", "2", "--steps", "1",
            "--image-px", "64", "--json", str(out), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    return r


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path):
    r = _gpu_check(tmp_path, "--rollout-modes", "dynamic", "static")
    assert r["shape"] == "tiny" and r["update_tokens"] > 0 and r["rollout_tokens_per_s"] > 0
    assert r["rollout_modes"]["static"]["rows_same_as_first_mode"] == 4  # fp32 on CPU: the same tokens
    assert r["params_M"] > 19  # the 151,936-row embedding is there
    assert r["share_prefix"] and r["shared_vs_full_max_abs_diff"] < 1e-4  # fp32 on CPU: the same log-probs


def test_gpu_check_updates_bf16_weights_through_fp32_masters(tmp_path):
    """``--weights bf16`` (the GPU lever to measure: no autocast casts, half the gradient memory) runs the
    same update with bf16 weights, stepping fp32 master copies."""
    r = _gpu_check(tmp_path, "--weights", "bf16", "--rollout-modes", "dynamic")
    assert r["weights"] == "bf16" and r["update_tokens"] > 0 and r["update_step_s"] > 0
