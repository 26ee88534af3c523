"""Training-side batches and log-probs: prompt + sampled response -> per-token log π(token).

A row is the chat prompt (with its image) followed by one sampled response, right-padded;
``response_mask`` marks the response tokens, the only ones the loss sees (SPEC §6: loss on the
response only). Shapes: ``N`` rows (= B prompts × n samples), ``T`` = longest prompt + response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m3ad_rl.engines.base import GenerationRequest


@dataclass
class PolicyBatch:
    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    mm_token_type_ids: torch.Tensor  # [N, T]
    response_mask: torch.Tensor  # [N, T-1]: 1 where target token t+1 is a response token
    vision: dict  # pixel_values, image_grid_thw (all rows' images, in row order)
    response_len: torch.Tensor  # [N]
    prompt_len: torch.Tensor  # [N]

    def to(self, device) -> PolicyBatch:
        return PolicyBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.mm_token_type_ids.to(device),
            self.response_mask.to(device), {k: v.to(device) for k, v in self.vision.items()},
            self.response_len.to(device), self.prompt_len.to(device),
        )  # fmt: skip


def build_batch(processor, requests: list[GenerationRequest], responses: list[list[int]]) -> PolicyBatch:
    """One row per (request, response token ids) pair."""
    texts = [processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False) for r in requests]
    images = [r.pil_image() for r in requests if r.image is not None]
    processor.tokenizer.padding_side = "left"  # prompts are cut out of the padded batch from the right
    enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    pad = processor.tokenizer.pad_token_id or 0
    prompts = [[t for t, m in zip(ids, am, strict=True) if m] for ids, am in zip(
        enc["input_ids"].tolist(), enc["attention_mask"].tolist(), strict=True)]  # fmt: skip
    mm = enc.get("mm_token_type_ids")
    rows, types, masks = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        rows.append(p + list(r))
        t = mm[i].tolist()[-len(p) :] if mm is not None else [0] * len(p)
        types.append(t + [0] * len(r))
        masks.append([0] * (len(p) - 1) + [1] * len(r))
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    mmt = torch.zeros((len(rows), width), dtype=torch.long)
    rmask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (x, t, m) in enumerate(zip(rows, types, masks, strict=True)):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        mmt[i, : len(t)] = torch.tensor(t)
        rmask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    vision = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    return PolicyBatch(
        ids, att, mmt, rmask, vision, torch.tensor([len(r) for r in responses]), torch.tensor([len(p) for p in prompts])
    )  # fmt: skip


def token_log_probs(model, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
    """``[N, T-1]`` log π(token t+1 | ≤ t) (zero outside the response); differentiable."""
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_token_type_ids=batch.mm_token_type_ids,
        **batch.vision,
    )  # fmt: skip
    logits = out.logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(2, batch.input_ids[:, 1:, None]).squeeze(2)
    return lp * batch.response_mask


def response_log_probs(
    model, batch: PolicyBatch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, L]`` log-probs of the response tokens, left-aligned (row i: its ``response_len[i]`` tokens,
    then zeros), the layout the controller's advantages use; plus the per-token entropy if asked."""
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_token_type_ids=batch.mm_token_type_ids,
        **batch.vision,
    )  # fmt: skip
    width = int(batch.response_len.max())
    pos = batch.prompt_len[:, None] - 1 + torch.arange(width, device=batch.input_ids.device)[None]  # [N, L]
    mask = torch.arange(width, device=pos.device)[None] < batch.response_len[:, None]
    pos = torch.where(mask, pos, batch.prompt_len[:, None] - 1)
    logits = out.logits.gather(1, pos[:, :, None].expand(-1, -1, out.logits.shape[-1])).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    targets = batch.input_ids.gather(1, (pos + 1).clamp(max=batch.input_ids.shape[1] - 1))
    lp = logp.gather(2, targets[:, :, None]).squeeze(2) * mask
    ent = (-(logp.exp() * logp).sum(-1) * mask) if with_entropy else None
    return lp, ent
