"""The tiny offline Qwen3-VL: built here, reloaded in a fresh process with the hub disabled."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("transformers")

from m3ad_rl.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["model", "tiny", "--out", str(out), "--vocab", "small"]) == 0
    return out


def test_reload_offline_in_a_fresh_process_and_generate(tiny_dir):
    code = textwrap.dedent(f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from m3ad_rl.core.prompts import question
        proc = AutoProcessor.from_pretrained({str(tiny_dir)!r})
        model = AutoModelForImageTextToText.from_pretrained({str(tiny_dir)!r})
        msgs = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question()}}]}}]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inputs = proc(text=[text], images=[Image.new("RGB", (448, 448), (90, 90, 90))], return_tensors="pt")
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=12, do_sample=True, num_return_sequences=4)
        print(json.dumps({{"model": type(model).__name__, "shape": list(out.shape),
                          "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
                          "prompt": text[:80]}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tiny_dir / "hf-home")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["model"] == "Qwen3VLForConditionalGeneration"
    assert info["shape"][0] == 4 and info["shape"][1] > 12
    assert info["image_tokens"] == 49  # 448² resized to 224², 16-px patches merged 2x2
    assert info["prompt"].startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")


def test_tiny_spec_is_recorded(tiny_dir):
    info = json.loads((tiny_dir / "m3ad_tiny.json").read_text())
    assert info["vocab"] == "small" and 100_000 < info["parameters"] < 5_000_000
    cfg = json.loads((tiny_dir / "config.json").read_text())
    section = cfg["text_config"]["rope_parameters"]["mrope_section"]
    assert sum(section) == cfg["text_config"]["head_dim"] // 2


def test_qwen_vocabulary_keeps_qwen_ids():
    from m3ad_rl.models.tiny import build_tokenizer

    tok = build_tokenizer("qwen")
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<think>"])
    assert ids == [151643, 151644, 151645, 151655, 151667]
    assert tok.decode(tok.encode("<think>A bent pin.</think>")) == "<think>A bent pin.</think>"


@pytest.mark.parametrize("vocab", ["small", "qwen"])
def test_decoded_text_keeps_the_think_tags(vocab):
    """Engines decode with skip_special_tokens=True: <think> must survive it (as in Qwen3's tokenizer), or no
    sampled response would ever parse and every reward would be the unparsable one."""
    from m3ad_rl.models.tiny import build_tokenizer

    tok = build_tokenizer(vocab)
    text = "<think>I inspect the part.</think>\n<answer>no</answer>"
    assert tok.decode([*tok.encode(text), tok.eos_token_id], skip_special_tokens=True) == text
