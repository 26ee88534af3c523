"""The Quickstart's main job: the whole M3-AD pipeline on local Ray, CPU only, in minutes.

    m3ad-rl demo [--out runs/demo] [--quick]

1. synthesize industrial scenes with labelled defects; split categories into FT and benchmark;
2. build the tiny offline Qwen3-VL (random weights, real architecture);
3. run it over the FT set (easy/hard) and build the Thinking/Reflective SFT and RL sets;
4. RAWS SFT (Ray Train + DeepSpeed);  5. RCRL (GRPO: rollout workers, reward service, DeepSpeed actor);
6. evaluate base, SFT and RCRL models on the benchmark; 7. tables and training curves.

The tiny model is random, so the scores say that the machinery works, not that the model is good.
Configs: ``configs/train/sft-cpu.yaml`` and ``rcrl-cpu.yaml`` (the demo only sets paths and sizes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown


def _step(console: Console, n: int, title: str) -> float:
    console.rule(f"[bold]{n}/7 {title}")
    return time.perf_counter()


def _eval(model: str, dataset: str, out: Path, limit: int | None, max_new_tokens: int = 192) -> dict:
    from m3ad_rl.engines.base import SamplingParams
    from m3ad_rl.eval.run import EvalRunConfig, run

    cfg = EvalRunConfig(
        model=model, dataset=dataset, out=str(out), workers=1, batch_size=8, limit=limit,
        sampling=SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, logprobs=False),
    )  # fmt: skip
    return run(cfg)


def run_demo(out: Path, quick: bool = False) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.package_data import config_file
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner
    from m3ad_rl.data.lengths import suggested_limit
    from m3ad_rl.data.splits import split_datasets
    from m3ad_rl.data.synthetic import SynthConfig, synthesize
    from m3ad_rl.models.tiny import write_tiny
    from m3ad_rl.train.ray_setup import init_ray
    from m3ad_rl.train.rcrl import RCRLConfig
    from m3ad_rl.train.rcrl import run as run_rcrl
    from m3ad_rl.train.sft import SFTConfig
    from m3ad_rl.train.sft import run as run_sft

    console = Console()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    n_images, sft_steps, rcrl_steps = (32, 64, 4) if quick else (64, 200, 8)
    init_ray(None, 8)

    t = _step(console, 1, f"synthesize {n_images} images; split categories into FT and benchmark")
    synthesize(SynthConfig(n=n_images), str(out / "data/synth"), workers=2, overwrite=True)  # the demo owns out
    split_datasets([str(out / "data/synth")], str(out / "data/split"), overwrite=True)
    times["data"] = time.perf_counter() - t

    t = _step(console, 2, "build the tiny Qwen3-VL (random weights, offline)")
    write_tiny(str(out / "models/tiny"), overwrite=True)
    times["model"] = time.perf_counter() - t

    t = _step(console, 3, "base model over the FT set (easy/hard); Thinking/Reflective trajectories")
    _eval(str(out / "models/tiny"), str(out / "data/split/ft"), out / "base-on-ft", None)
    ft_cfg = FTConfig()
    ft = build_ft(str(out / "data/split/ft"), str(out / "base-on-ft/predictions.jsonl"), str(out / "ft"), ft_cfg,
                  make_captioner("template", seed=ft_cfg.seed), tokenizer=str(out / "models/tiny"),
                  overwrite=True)  # fmt: skip
    limit_tokens = suggested_limit(ft.lengths)  # above every SFT target: nothing in the trained format is cut
    console.print(f"SFT targets: up to {ft.lengths['max']} tokens; RL and evaluation stop at {limit_tokens}")
    times["ft"] = time.perf_counter() - t

    t = _step(console, 4, f"RAWS SFT: {sft_steps} steps, Ray Train + DeepSpeed ZeRO-2 on CPU")
    sft_cfg = load_config(SFTConfig, str(config_file("train/sft-cpu.yaml")), [
        f"model={out / 'models/tiny'}", f"data={out / 'ft/sft.parquet'}", f"out={out / 'sft'}",
        f"max_steps={sft_steps}", "optim.lr=3e-3", "optim.warmup_steps=5"])  # fmt: skip
    sft = run_sft(sft_cfg, overwrite=True)
    times["sft"] = time.perf_counter() - t
    console.print(f"SFT: loss {sft['history'][0]['sft/loss']:.3f} → {sft['loss']:.3f}")

    t = _step(console, 5, f"RCRL: {rcrl_steps} GRPO steps (rollout → reward service → actor/ref → update)")
    rcrl_cfg = load_config(RCRLConfig, str(config_file("train/rcrl-cpu.yaml")), [
        f"model={out / 'sft/model'}", f"data={out / 'ft/rl.parquet'}", f"out={out / 'rcrl'}",
        f"steps={rcrl_steps}", f"checkpoint.every={max(rcrl_steps // 2, 1)}",
        f"rollout.sampling.max_new_tokens={limit_tokens}"])  # fmt: skip
    rcrl = run_rcrl(rcrl_cfg, overwrite=True)  # the demo owns its folder: a rerun starts over
    times["rcrl"] = time.perf_counter() - t

    t = _step(console, 6, "evaluate base, SFT and RCRL models on the benchmark categories")
    limit = 16 if quick else None
    reports = {  # the random base has no trained format: its limit is the shorter default
        name: _eval(model, str(out / "data/split/bench"), out / f"eval/{name}", limit, tokens)
        for name, model, tokens in (("base", str(out / "models/tiny"), 192),
                                    ("raws-sft", str(out / "sft/model"), limit_tokens),
                                    ("rcrl", rcrl["model"], limit_tokens))
    }  # fmt: skip
    times["eval"] = time.perf_counter() - t

    _step(console, 7, "report")
    _report(out, reports, sft["history"], rcrl["history"], times, console)
    return 0


def _report(out: Path, reports: dict, sft_hist: list, rcrl_hist: list, times: dict, console: Console) -> None:
    from m3ad_rl.eval.compare import comparison_table
    from m3ad_rl.eval.report import markdown_table

    table = comparison_table(reports)
    refl = markdown_table(
        ["Model", "Reflection rate", "Acc before", "Acc after", "Correct", "Ineffective", "Erroneous"],
        [[name, *_reflection_cells(r)] for name, r in reports.items()],
    )
    last = rcrl_hist[-1] if rcrl_hist else {}
    phases = [k for k in last if k.startswith("timing/") and k != "timing/step_s"]
    timing = markdown_table(["RCRL phase (last step)", "seconds"], [[k[7:-2], f"{last[k]:.2f}"] for k in phases])
    wall = markdown_table(["Stage", "seconds"], [[k, f"{v:.0f}"] for k, v in times.items()])
    rl_cut = [h.get("response/truncated_frac", 0.0) for h in rcrl_hist]
    cut = markdown_table(
        ["What", "cut at the token limit"],
        [["RCRL rollouts (mean over steps)", f"{100 * sum(rl_cut) / max(1, len(rl_cut)):.1f} %"]]
        + [[f"eval: {name}", f"{r['run'].get('truncated', 0)} of {r['run']['n']} (limit "
            f"{r['run'].get('max_new_tokens')})"] for name, r in reports.items()],
    )  # fmt: skip
    _plot_curves(sft_hist, rcrl_hist, str(out / "training_curves.png"))
    gallery = _gallery(out, list(reports), console)
    text = (
        "# m3ad-rl demo report\n\nRandom tiny model: the numbers show the pipeline runs end to end, "
        "not a useful detector.\n\n## M3-AD-Bench (benchmark categories, unseen in training)\n\n"
        f"{table}\n\n## Reflection\n\n{refl}\n\n## Token limits\n\n{cut}\n\n"
        f"## Where the time went\n\n{wall}\n\n{timing}\n\n"
        "![training curves](training_curves.png)\n"
        f"{gallery}"
    )
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"eval": reports, "times": times, "rcrl": rcrl_hist}, indent=1))
    console.print(Markdown(text.split("![")[0]))
    console.print(f"wrote {out}/report.md, report.json, training_curves.png, gallery.html; runs under {out}")


def _gallery(out: Path, names: list[str], console: Console) -> str:
    """The three models side by side on the same benchmark images (gallery.html, gallery.png), and the
    report's section about them; a gallery that fails is a warning, the report stands."""
    from m3ad_rl.eval.gallery import write_gallery

    try:
        g = write_gallery([str(out / f"eval/{n}") for n in names], str(out / "gallery.html"), names=names,
                          title="m3ad-rl demo: base, RAWS SFT and RCRL side by side", overwrite=True)  # fmt: skip
    except Exception as e:  # the report stands without it
        console.print(f"[yellow]warning: no gallery: {type(e).__name__}: {e}")
        return ""
    return (f"\n## The cases\n\n[gallery.html](gallery.html) shows {g.shown} of the {g.total} benchmark images with "
            "every model's answer, boxes and reasoning (open it in a browser; filters by scene, category, outcome "
            "and model). The most telling ones:\n\n![cases](gallery.png)\n")  # fmt: skip


def _reflection_cells(report: dict) -> list[str]:
    r = report.get("reflection") or {}
    counts = r.get("counts", {})

    def pct(x):
        return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "-"

    return [pct(r.get("rate")), pct(r.get("accuracy_before")), pct(r.get("accuracy_after")),
            *[str(counts.get(k, 0)) for k in ("correct", "ineffective", "erroneous")]]  # fmt: skip


def _plot_curves(sft_hist: list[dict], rcrl_hist: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot([h["step"] for h in sft_hist], [h["sft/loss"] for h in sft_hist], marker=".")
    ax[0].set(title="RAWS SFT: response-token loss", xlabel="step", ylabel="NLL")
    steps = [h["step"] for h in rcrl_hist]
    ax[1].plot(steps, [h["reward/score"] for h in rcrl_hist], marker="o", label="reward")
    for k in ("answer", "reflection"):
        ax[1].plot(steps, [h[f"reward/{k}"] for h in rcrl_hist], ls="--", label=f"R_{k[:3]}")
    ax[1].set(title="RCRL: mean reward", xlabel="step")
    ax[1].legend(fontsize=8)
    ax[2].plot(steps, [h["actor/kl_loss"] for h in rcrl_hist], marker="o", color="C3")
    ax[2].set(title="RCRL: KL(π‖π_ref) (k3)", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
