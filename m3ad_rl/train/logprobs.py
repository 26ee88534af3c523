"""Training-side batches and log-probs: prompt + sampled response -> per-token log π(token).

A row is the chat prompt (with its image) followed by one sampled response, right-padded;
``response_mask`` marks the response tokens, the only ones the loss sees (SPEC §6: loss on the
response only). Shapes: ``N`` rows (= B prompts × n samples), ``T`` = longest prompt + response.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
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
    # the distinct prompts, left-padded ([U, P]: input_ids, attention_mask, mm_token_type_ids), the prompt of
    # each row ("rows", [N]) and the responses alone, right-padded ("responses", [N, L]): share_prefix's inputs
    prefix: dict | None = None

    def to(self, device) -> PolicyBatch:
        return PolicyBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.mm_token_type_ids.to(device),
            self.response_mask.to(device), {k: v.to(device) for k, v in self.vision.items()},
            self.response_len.to(device), self.prompt_len.to(device),
            {k: v.to(device) for k, v in self.prefix.items()} if self.prefix is not None else None,
        )  # fmt: skip


def build_batch(processor, requests: list[GenerationRequest], responses: list[list[int]]) -> PolicyBatch:
    """One row per (request, response token ids) pair. Each distinct prompt (text + image) goes through
    the processor once: GRPO's n samples share theirs."""
    keys = [(r.text, hash(r.image) if isinstance(r.image, (bytes, bytearray)) else id(r.image)) for r in requests]
    first: dict = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    uniq = list(first.values())
    which = [uniq.index(first[k]) for k in keys]
    ureq = [requests[i] for i in uniq]
    texts = [processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False) for r in ureq]
    images = [r.pil_image() for r in ureq if r.image is not None]
    processor.tokenizer.padding_side = "left"  # prompts are cut out of the padded batch from the right
    enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    pad = processor.tokenizer.pad_token_id or 0
    uprompts = [[t for t, m in zip(ids, am, strict=True) if m] for ids, am in zip(
        enc["input_ids"].tolist(), enc["attention_mask"].tolist(), strict=True)]  # fmt: skip
    prompts = [uprompts[u] for u in which]
    mm = enc.get("mm_token_type_ids")
    rows, types, masks = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        rows.append(p + list(r))
        t = mm[which[i]].tolist()[-len(p) :] if mm is not None else [0] * len(p)
        types.append(t + [0] * len(r))
        masks.append([0] * (len(p) - 1) + [1] * len(r))
    width = max(len(x) for x in rows)
    # right-padded as Python lists, then one array each (a tensor per row cost 8 ms a batch on the tiny model)
    ids = _tensor([x + [pad] * (width - len(x)) for x in rows], np.int64)
    att = _tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows], np.int64)
    mmt = _tensor([t + [0] * (width - len(t)) for t in types], np.int64)
    rmask = _tensor([m + [0] * (width - 1 - len(m)) for m in masks], np.float32)
    vision = {}
    if "pixel_values" in enc:  # each distinct image once; image_rows maps rows to them (see _shared_images)
        vision["pixel_values"] = enc["pixel_values"]
        vision["image_grid_thw"] = enc["image_grid_thw"][which]
        vision["unique_grid_thw"] = enc["image_grid_thw"]
        vision["image_rows"] = torch.tensor(which)
    longest = max(1, max(len(r) for r in responses))
    resp = _tensor([list(r) + [pad] * (longest - len(r)) for r in responses], np.int64)
    prefix = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "rows": torch.tensor(which),
              "responses": resp}  # fmt: skip
    if mm is not None:
        prefix["mm_token_type_ids"] = mm
    lengths = torch.tensor([len(r) for r in responses]), torch.tensor([len(p) for p in prompts])
    return PolicyBatch(ids, att, mmt, rmask, vision, *lengths, prefix)


def _tensor(rows: list[list], dtype) -> torch.Tensor:
    """Equal-length lists as a tensor, through numpy (3× faster than ``torch.tensor`` on nested lists)."""
    return torch.from_numpy(np.array(rows, dtype=dtype))


def token_log_probs(model, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
    """``[N, T-1]`` log π(token t+1 | ≤ t) (zero outside the response); differentiable."""
    vision = {k: v for k, v in batch.vision.items() if k in ("pixel_values", "image_grid_thw")}
    with _shared_images(model, batch.vision):
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids, **vision,
        )  # fmt: skip
    logits = out.logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(2, batch.input_ids[:, 1:, None]).squeeze(2)
    return lp * batch.response_mask


@contextlib.contextmanager
def _shared_images(model, vision: dict):
    """Run the vision encoder once per distinct image and hand each row its copy.

    GRPO's n samples of a prompt share one image; the model's own ``get_image_features`` would encode
    it n times (and backpropagate n times). While active, the call gets the distinct images' patches
    and returns the per-row features (pooled embeddings and deepstack features) in row order.
    """
    inner = getattr(model, "model", None)
    if "image_rows" not in vision or inner is None or not hasattr(inner, "get_image_features"):
        yield
        return
    original = inner.get_image_features
    rows, ugrid = vision["image_rows"], vision["unique_grid_thw"]

    def per_row(pixel_values, image_grid_thw=None, **kwargs):
        out = original(pixel_values, ugrid, **kwargs)
        merge = inner.visual.spatial_merge_size**2
        sizes = (ugrid.prod(-1) // merge).tolist()
        out.pooler_output = tuple(out.pooler_output[u] for u in rows.tolist())
        if getattr(out, "deepstack_features", None) is not None:
            out.deepstack_features = [
                torch.cat([chunks[u] for u in rows.tolist()])
                for chunks in (f.split(sizes) for f in out.deepstack_features)
            ]
        return out

    inner.get_image_features = per_row
    try:
        yield
    finally:
        del inner.get_image_features  # back to the class method


_CHUNK_ELEMENTS = 1 << 25  # ~128 MB of fp32 logits per chunk


def _chunk_buffer(elements: int, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """One flat buffer for every chunk's logits of a call, on CPU in full precision (no autocast). A fresh
    [rows, V] tensor per chunk lets glibc's heap (kept, not returned: ray_setup.cpu_worker_env) hand
    the freed block's pieces to small tensors, so the next chunk's logits need new memory: +1 GiB of
    RSS measured. None elsewhere: the CUDA caching allocator reuses blocks, autocast picks the dtype, and bf16
    or fp16 weights (``actor.optim.bf16``) give logits of their own dtype, which ``torch.mm(out=)`` cannot
    write into a full-precision buffer."""
    full = hidden.dtype in (torch.float32, torch.float64) and weight.dtype == hidden.dtype
    if hidden.device.type != "cpu" or torch.is_autocast_enabled("cpu") or not full:
        return None
    return torch.empty(elements, dtype=hidden.dtype)


def _linear(h: torch.Tensor, weight: torch.Tensor, bias, buf: torch.Tensor | None) -> torch.Tensor:
    """``h Wᵀ + b``, written into the start of ``buf`` when there is one."""
    if buf is None:
        return torch.nn.functional.linear(h, weight, bias)
    out = buf[: h.shape[0] * weight.shape[0]].view(h.shape[0], weight.shape[0])
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def _chunk_log_probs(head, hidden, targets, temperature: float, with_entropy: bool):
    """log π(target) = logit - logsumexp(logits) for a few rows, without a [rows, L, V] log-softmax copy;
    the entropy (a metric) outside the graph. The fallback for heads :class:`LinearLogProbs` cannot take."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    lp = logits.gather(2, targets[:, :, None]).squeeze(2) - lse
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return lp, ent


class LinearLogProbs(torch.autograd.Function):
    """log softmax((h Wᵀ + b) / T)[target] per token, never holding more than one chunk of logits.

    The plain path keeps every chunk's ``[tokens, V]`` fp32 logits alive for the backward (with Qwen's
    151,936-row vocabulary that is most of the actor's memory). Here the forward keeps only its inputs and
    each token's logsumexp. The backward walks the vocabulary in slices: it recomputes the slice's logits
    for all tokens, turns them into ``∂/∂logits = g·(onehot(target) − softmax)/T`` with the saved
    logsumexp, writes that slice of W's gradient once and adds the slice's share of the hidden's gradient.
    One extra ``[tokens, H] × [H, V]`` matmul buys O(chunk) memory instead of O(tokens × V): the trade
    Liger-kernel's fused linear cross-entropy makes, here for per-token log-probs, whose upstream gradient
    is one number per token rather than one loss scalar. Where every token's logits fit in one chunk (a
    small vocabulary, or few tokens) the forward keeps that chunk's softmax and the backward skips the
    recompute.

    ``grad_of`` (the update's, :func:`loss_probe`): each token's upstream gradient as a function of the
    log-probs, known when the loss is a sum of per-token terms (GRPO's is). Then the forward computes the
    gradients too, from each chunk's logits while it has them (Liger-kernel's order): three matmuls, no
    recompute. The backward only checks the gradient it is handed against the predicted one and corrects
    the tokens where they differ through the recompute path, so any loss stays exact.

    Flat inputs: ``hidden [M, H]``, ``weight [V, H]``, ``bias [V] | None``, ``targets [M]``. The matmuls run
    in the dtype ``head(hidden)`` would have (autocast's, if on); softmax and logsumexp in fp32, as the
    plain path. Returns ``(log_probs [M], entropy [M] or None)`` in fp32; the entropy is a metric only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, with_entropy: bool,
                grad_of=None):  # fmt: skip
        m = hidden.shape[0]
        acc = torch.promote_types(torch.float32, hidden.dtype)  # fp32, or fp64 for gradcheck
        lp = torch.empty(m, dtype=acc, device=hidden.device)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp) if with_entropy else None
        if grad_of is not None and any(ctx.needs_input_grad[:3]):
            return _one_pass(ctx, hidden, weight, bias, targets, temperature, chunk, grad_of, lp, lse, ent)
        ctx.one_pass = False
        rows = max(1, chunk // weight.shape[0])
        keep = rows >= m and any(ctx.needs_input_grad[:3])  # one chunk: its softmax is kept for the backward
        if not (with_entropy or keep):  # one buffer a chunk (the logits, exponentiated in place): twice the rows
            rows *= 2
        dt, kept = hidden.dtype, None
        buf = _chunk_buffer(min(rows, m) * weight.shape[0], hidden, weight) if not keep else None
        ebuf = _chunk_buffer(min(rows, m) * weight.shape[0], hidden, weight) if with_entropy and not keep else None
        for s in range(0, m, rows):
            raw = _linear(hidden[s : s + rows], weight, bias, buf)
            dt = raw.dtype  # autocast's choice, reused by the backward
            logits = raw.to(acc)
            if temperature != 1.0:
                logits.div_(temperature)
            picked = logits.gather(1, targets[s : s + rows, None]).squeeze(1)
            if with_entropy or keep:  # one exp pass serves the logsumexp, the entropy and the kept softmax
                top = logits.amax(-1, keepdim=True)
                if ebuf is not None:
                    e = torch.sub(logits, top, out=ebuf[: logits.numel()].view(logits.shape)).exp_()
                else:
                    e = torch.sub(logits, top).exp_()
                total = e.sum(-1, keepdim=True)
                z = (top + total.log()).squeeze(1)
                if with_entropy:  # H = lse − Σ p·logit
                    ent[s : s + rows] = z - torch.linalg.vecdot(e, logits) / total.squeeze(1)
                kept = e.div_(total) if keep else None
                del e
            else:  # logsumexp in place
                top = logits.amax(-1, keepdim=True)
                z = top.squeeze(1) + logits.sub_(top).exp_().sum(-1).log()
            lse[s : s + rows] = z
            lp[s : s + rows] = picked - z
            del raw, logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse, kept)
        ctx.temperature, ctx.chunk, ctx.dt = temperature, chunk, dt
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, _g_ent):
        if ctx.one_pass:
            return _one_pass_backward(ctx, g_lp)
        hidden, weight, bias, targets, lse, kept = ctx.saved_tensors
        g_h, g_w, g_b = _recomputed_grads(hidden, weight, bias, targets, lse, g_lp, ctx, kept)
        return (g_h.to(hidden.dtype) if g_h is not None else None, g_w, g_b, None, None, None, None, None)


def _recomputed_grads(hidden, weight, bias, targets, lse, g_lp, ctx, kept=None):
    """The head's gradients for upstream gradient ``g_lp``, the logits recomputed one vocabulary slice at a
    time from the saved logsumexp (or the forward's ``kept`` softmax). ``hidden``'s in fp32 (or fp64)."""
    t, dt = ctx.temperature, ctx.dt
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    m, v = hidden.shape[0], weight.shape[0]
    g = g_lp.to(lse.dtype)[:, None] / t  # [M, 1]: each token's upstream gradient, with the 1/T of the logits
    h = hidden.to(dt)
    g_h = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device) if need_h else None
    g_w = torch.empty_like(weight) if need_w else None
    g_b = torch.empty_like(bias) if need_b else None
    width = max(1, ctx.chunk // max(1, m))
    buf = _chunk_buffer(m * min(width, v), h, weight) if kept is None else None
    for v0 in range(0, v, width):
        v1 = min(v, v0 + width)
        w = weight[v0:v1].to(dt)
        b = bias[v0:v1].to(dt) if bias is not None else None
        if kept is not None and v1 - v0 == v:  # the forward's softmax
            d = torch.mul(kept, -g)
        else:
            logits = _linear(h, w, b, buf).to(lse.dtype)
            if t != 1.0:
                logits.div_(t)
            d = logits.sub_(lse[:, None]).exp_().mul_(-g)  # −g·softmax
        here = (targets >= v0) & (targets < v1)
        rows = here.nonzero().squeeze(1)
        d[rows, targets[rows] - v0] += g[rows, 0]  # + g·onehot(target)
        if need_w:
            g_w[v0:v1] = (d.t().to(dt) @ h).to(weight.dtype)
        if need_b:
            g_b[v0:v1] = d.sum(0).to(bias.dtype)
        if need_h:
            g_h += (d.to(dt) @ w).to(g_h.dtype)
        del d
    return g_h, g_w, g_b


def _one_pass(ctx, hidden, weight, bias, targets, temperature, chunk, grad_of, lp, lse, ent):
    """LinearLogProbs' forward when the upstream gradient is known in advance: log-probs and gradients
    from each token chunk's logits at once (see the class)."""
    m, acc = hidden.shape[0], lp.dtype
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    grads = (torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None,
             torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
             torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None)  # fmt: skip
    values = torch.zeros_like(lp)  # the log-probs so far; the probe reads each token's own entry only
    predicted = torch.zeros_like(lp)
    g_h, g_w, g_b = grads
    rows = max(1, 2 * chunk // weight.shape[0])  # one [rows, V] buffer a chunk: twice the rows of two
    dt, w_dt = hidden.dtype, weight
    buf = _chunk_buffer(min(rows, m) * weight.shape[0], hidden, weight)
    # One [rows, V] buffer per chunk: the logits, then exp(logit − max) in place. Every other use of the
    # softmax p goes through two matmuls with it: pW = Σ_v p_v W_v (the hidden's gradient is
    # g/T·(W[target] − pW), and Σ_v p_v·logit_v = h·pW/T for the entropy) and pᵀ(g/T·h) for W's gradient,
    # whose one-hot part is a row update.
    for s in range(0, m, rows):
        e_ = min(m, s + rows)
        h, tgt = hidden[s:e_], targets[s:e_]
        raw = _linear(h, weight, bias, buf)
        dt = raw.dtype  # autocast's choice, reused by the backward
        if w_dt.dtype != dt:
            w_dt = weight.to(dt)
        x = raw.to(acc)
        del raw
        if temperature != 1.0:
            x.div_(temperature)
        picked = x.gather(1, tgt[:, None]).squeeze(1)
        top = x.amax(-1, keepdim=True)
        x.sub_(top).exp_()  # e = exp(logit − max)
        total = x.sum(-1)
        z = top.squeeze(1) + total.log()
        lse[s:e_] = z
        lp[s:e_] = values[s:e_] = picked - z
        pw = (x.to(dt) @ w_dt).to(acc) / total[:, None]  # [rows, H]
        hs = h.to(acc)
        if ent is not None:  # H = lse − Σ p·logit
            mean = torch.linalg.vecdot(hs, pw)
            if bias is not None:
                mean += (x @ bias.to(acc)) / total
            ent[s:e_] = z - mean / temperature
        with torch.enable_grad():
            g = grad_of(values)[s:e_].to(acc)
        predicted[s:e_] = g
        gt = g / temperature
        if g_h is not None:
            g_h[s:e_] = gt[:, None] * (weight[tgt].to(acc) - pw)
        scaled = gt / total  # −g/T·p = −(g/T/total)·e
        if g_w is not None:
            if x.dtype == dt == g_w.dtype:
                g_w.addmm_(x.t(), hs * scaled[:, None], alpha=-1)
            else:
                g_w -= (x.t().to(dt) @ (hs * scaled[:, None]).to(dt)).to(acc)
            g_w.index_add_(0, tgt, hs * gt[:, None])  # + g/T·onehot(target)
        if g_b is not None:
            g_b -= x.t() @ scaled
            g_b.index_add_(0, tgt, gt)
        del x
    ctx.dt = dt
    ctx.one_pass = True
    ctx.temperature, ctx.chunk = temperature, chunk
    ctx.grads = grads
    ctx.save_for_backward(hidden, weight, bias, targets, lse, predicted)
    if ent is not None:
        ctx.mark_non_differentiable(ent)
    return lp, ent


def _one_pass_backward(ctx, g_lp):
    """The forward's gradients, corrected (:func:`_recomputed_grads` on the difference) for every token whose
    upstream gradient is not the predicted one: exact for any loss, free when the prediction held."""
    hidden, weight, bias, targets, lse, predicted = ctx.saved_tensors
    grads, ctx.grads = ctx.grads, None  # handed over (autograd takes them without a copy)
    if grads is None:  # a second backward through a retained graph: everything through the recompute path
        g_h, g_w, g_b = _recomputed_grads(hidden, weight, bias, targets, lse, g_lp, ctx)
    else:
        g_h, g_w, g_b = grads
        diff = g_lp.to(lse.dtype) - predicted
        off = diff.nonzero().squeeze(1)
        if off.numel():
            c_h, c_w, c_b = _recomputed_grads(hidden[off], weight, bias, targets[off], lse[off], diff[off], ctx)
            if g_h is not None:
                g_h.index_add_(0, off, c_h)
            if g_w is not None:
                g_w += c_w
            if g_b is not None:
                g_b += c_b
    return (g_h.to(hidden.dtype) if g_h is not None else None, g_w.to(weight.dtype) if g_w is not None else None,
            g_b.to(bias.dtype) if g_b is not None else None, None, None, None, None, None)  # fmt: skip


def loss_probe(loss_fn, shape: tuple[int, int], mask: torch.Tensor):
    """``values [M] -> ∂loss/∂values``, the loss taken as ``loss_fn(values.view(shape) * mask)``: exactly
    the ops the caller's backward will run, so where the loss is a sum of per-token terms each token's
    entry equals the gradient LinearLogProbs' backward will be handed, bit for bit (tokens not yet
    computed hold placeholders, which per-token terms never mix in)."""

    def probe(values: torch.Tensor) -> torch.Tensor:
        leaf = values.detach().clone().requires_grad_()
        return torch.autograd.grad(loss_fn(leaf.view(shape) * mask), leaf)[0]

    return probe


def fusable_head(head) -> bool:
    """A plain ``nn.Linear`` whose weight is all here (not a ZeRO-3 partition, which only the module's own
    hooks gather): :class:`LinearLogProbs` can read its weight directly."""
    return isinstance(head, torch.nn.Linear) and not hasattr(head.weight, "ds_id")


def share_prefix_on(setting: bool | str, cuda: bool) -> bool:
    """``actor.share_prefix``: ``auto`` shares prompts on CPU and runs full rows on a GPU, the faster
    path on each as measured (docs/benchmarks.md)."""
    return (not cuda) if setting == "auto" else bool(setting)


def response_log_probs(
    model,
    batch: PolicyBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prefix: bool = False,
    fused_head: bool = True,
    loss_fn=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, L]`` log-probs of the response tokens, left-aligned (row i: its ``response_len[i]`` tokens,
    then zeros), the layout the controller's advantages use; plus the per-token entropy if asked.

    ``share_prefix``: each distinct prompt (image included) runs once and its KV cache serves all the rows
    that continue it (GRPO's n samples), instead of n full rows; same numbers to float rounding, gradients
    included (tests/train/test_shared_prefix.py). ``fused_head``: the vocabulary projection through
    :class:`LinearLogProbs` (no ``[tokens, V]`` logits kept for the backward); false: row chunks whose
    logits autograd keeps (the "before" of issue 23's benchmark). ``loss_fn``: the loss the caller will
    compute from the returned log-probs, when it is a sum of per-token terms; the fused head then
    computes its gradients in the forward pass (:class:`LinearLogProbs`, one matmul fewer)."""
    if share_prefix and batch.prefix is not None and hasattr(model, "lm_head") and hasattr(model, "model"):
        return _shared_prefix_log_probs(model, batch, temperature, with_entropy, fused_head, loss_fn)
    width = int(batch.response_len.max())
    pos = batch.prompt_len[:, None] - 1 + torch.arange(width, device=batch.input_ids.device)[None]  # [N, L]
    mask = torch.arange(width, device=pos.device)[None] < batch.response_len[:, None]
    pos = torch.where(mask, pos, batch.prompt_len[:, None] - 1)
    vision = {k: v for k, v in batch.vision.items() if k in ("pixel_values", "image_grid_thw")}
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  mm_token_type_ids=batch.mm_token_type_ids, **vision)  # fmt: skip
    head = getattr(model, "lm_head", None)
    with _shared_images(model, batch.vision):
        if head is not None and hasattr(model, "model"):  # the vocabulary projection on response positions only
            hidden = model.model(**inputs).last_hidden_state
            selected = hidden.gather(1, pos[:, :, None].expand(-1, -1, hidden.shape[-1]))
        else:
            full = model(**inputs).logits  # already projected: the chunks only normalise
            head, selected = torch.nn.Identity(), full.gather(1, pos[:, :, None].expand(-1, -1, full.shape[-1]))
    targets = batch.input_ids.gather(1, (pos + 1).clamp(max=batch.input_ids.shape[1] - 1))
    return _finish(head, selected, targets, mask, temperature, with_entropy, fused_head, loss_fn)


def _finish(head, selected, targets, mask, temperature: float, with_entropy: bool, fused: bool = True,
            loss_fn=None):  # fmt: skip
    """The vocabulary projection and log-softmax, a bounded chunk of logits at a time; zeros outside each
    row's response. A plain linear head goes through :class:`LinearLogProbs` (no logits kept for the
    backward); anything else (a ZeRO-3 partitioned head, pre-projected logits) through row chunks."""
    n, width = selected.shape[:2]
    if fused and fusable_head(head):
        flat = selected.reshape(n * width, -1)
        probe = loss_probe(loss_fn, (n, width), mask) if loss_fn is not None and torch.is_grad_enabled() else None
        lp, ent = LinearLogProbs.apply(flat, head.weight, head.bias, targets.reshape(-1), temperature,
                                       _CHUNK_ELEMENTS, with_entropy, probe)  # fmt: skip
        lp = lp.view(n, width) * mask
        return lp, ent.view(n, width) * mask if with_entropy else None
    vocab = getattr(head, "out_features", None) or selected.shape[-1]
    rows = max(1, _CHUNK_ELEMENTS // max(1, width * vocab))  # rows per chunk: bounded [rows, L, V] temporaries
    lps, ents = [], []
    for s in range(0, n, rows):
        lp, ent = _chunk_log_probs(head, selected[s : s + rows], targets[s : s + rows], temperature, with_entropy)
        lps.append(lp)
        ents.append(ent)
    lp = torch.cat(lps) * mask
    ent = torch.cat(ents) * mask if with_entropy else None
    return lp, ent


def _shared_prefix_log_probs(model, batch: PolicyBatch, temperature: float, with_entropy: bool, fused: bool,
                             loss_fn=None):  # fmt: skip
    """Prompt once per distinct prompt, then all responses against its repeated KV cache.

    The prompts are left-padded, so every row's last prompt token sits at the end of the cache; response
    token k takes position (prompt tokens + k + the prompt's multimodal RoPE offset, ``rope_deltas``), as in
    generation. The last prompt position predicts response token 0; response position k predicts k+1."""
    pre = batch.prefix
    base = model.model
    rows, resp = pre["rows"], pre["responses"]
    width = int(batch.response_len.max())
    vision = {k: v for k, v in batch.vision.items() if k in ("pixel_values",)}
    if "unique_grid_thw" in batch.vision:
        vision["image_grid_thw"] = batch.vision["unique_grid_thw"]
    prompt_inputs = {k: pre[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in pre}
    base.rope_deltas = None  # recomputed from these prompts' image grids
    out = base(**prompt_inputs, **vision, use_cache=True)
    cache, last = out.past_key_values, out.last_hidden_state[:, -1]  # [U, H]
    deltas = base.rope_deltas
    base.rope_deltas = None  # nothing stale for the next plain forward
    cache.batch_select_indices(rows)  # each row's copy of its prompt's keys and values (differentiable)
    n = resp.shape[0]
    steps = torch.arange(width - 1, device=resp.device)
    hidden = last[rows][:, None]
    if width > 1:
        delta = deltas[rows].reshape(n, 1) if deltas is not None else torch.zeros(n, 1, dtype=torch.long)
        filled = pre["attention_mask"].sum(1)[rows].reshape(n, 1)  # the prompt's tokens without its padding
        pos = filled + steps[None] + delta.to(resp.device)  # [N, L-1]: text positions after the prompt
        ones = torch.ones(n, width - 1, dtype=torch.long, device=resp.device)
        att = torch.cat([pre["attention_mask"][rows], ones], dim=1)
        follow = base(input_ids=resp[:, : width - 1], attention_mask=att, position_ids=pos[None].expand(3, -1, -1),
                      past_key_values=cache, use_cache=True)  # fmt: skip
        hidden = torch.cat([hidden, follow.last_hidden_state], dim=1)  # [N, L, H]
    mask = torch.arange(width, device=resp.device)[None] < batch.response_len[:, None]
    return _finish(model.lm_head, hidden, resp[:, :width], mask, temperature, with_entropy, fused, loss_fn)
