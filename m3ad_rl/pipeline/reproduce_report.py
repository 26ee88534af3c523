"""The report of ``m3ad-rl reproduce``: ``{out}/report/results.md`` with its plots.

Tables in the paper's Table-1 layout (Acc / Bal per scene and their average, Type F1, Loc F1), each
cell the mean ± std over seeds, for the unseen benchmark categories and for held-out images of the FT
categories; RCRL − RAWS as a paired difference per seed with a 95 % bootstrap interval over images and
seeds (``m3ad_rl.eval.stats``); the reward variants against RAWS the same way (the paper's Table 3); the
targets of the reproduction, met or missed by how much; what was cut at a token limit; curves per seed;
and the reflection report of the paper's Figure 5 with its totals.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

from m3ad_rl.core import storage
from m3ad_rl.core.provenance import commit, machine

SETS = {"bench": "unseen categories (M3-AD-Bench side)", "ft-heldout": "seen categories, held-out images",
        "val": "seen categories, validation images"}  # fmt: skip
STAGE_NAMES = {"base": "Base (stage 0)", "raws": "RAWS (SFT)", "rcrl": "RCRL (GRPO)"}
MAIN_SETS = ("bench", "ft-heldout")


def variant_name(ref: str) -> str:
    """A reward config's stage name: ``rewards/preset_a.yaml`` → ``preset_a``."""
    from pathlib import PurePosixPath

    return PurePosixPath(ref).stem


def _read_json(url: str) -> dict:
    return json.loads(storage.read_text(url))


def _read_jsonl(url: str) -> list[dict]:
    if not storage.exists(url):
        return []
    return [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]


def _sets(cfg: Any) -> list[str]:
    return [*MAIN_SETS, *(["val"] if cfg.eval_validation else [])]


def _variants(cfg: Any) -> dict[str, str]:
    """{model key: reward config}: ``rcrl`` (the main reward) and ``rcrl-<variant>`` for each variant."""
    return {"rcrl": cfg.reward_config, **{f"rcrl-{variant_name(v)}": v for v in cfg.variants}}


def collect(out: str, seeds: list[int], sets: list[str], models: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{model: {set: [report per seed]}}; the base is one model, so it has one report per set (none on val)."""
    reports: dict[str, dict[str, list[dict]]] = {m: {s: [] for s in sets} for m in ["base", "raws", *models]}
    for ds in sets:
        if storage.exists(f"{out}/eval/base/{ds}/report.json"):
            reports["base"][ds].append(_read_json(f"{out}/eval/base/{ds}/report.json"))
        for seed in seeds:
            for m in ("raws", *models):
                reports[m][ds].append(_read_json(f"{out}/seed-{seed}/eval/{m}/{ds}/report.json"))
    return reports


def outcomes(out: str, seeds: list[int], model: str, ds: str) -> list:
    from m3ad_rl.eval.stats import load_outcomes

    return [load_outcomes(f"{out}/seed-{s}/eval/{model}/{ds}/predictions.jsonl") for s in seeds]


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [scale * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _ci(d: dict) -> str:
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def table(reports: dict[str, dict[str, list[dict]]], ds: str, names: dict[str, str]) -> str:
    from m3ad_rl.eval.report import markdown_table

    present = {m: name for m, name in names.items() if reports[m][ds]}
    scenes = sorted({s for m in present for r in reports[m][ds] for s in r["scenes"]})
    header = ["Model", *[f"{s.capitalize()} Acc / Bal" for s in scenes], "Avg Acc", "Avg Bal", "Type F1", "Loc F1"]
    rows = []
    for m, name in present.items():
        rs = reports[m][ds]
        cells = [
            _ms([r["scenes"][s]["accuracy"] for r in rs])
            + " / "
            + _ms([r["scenes"][s]["balanced_accuracy"] for r in rs])
            if all(s in r["scenes"] for r in rs)
            else "-"
            for s in scenes
        ]
        avg = [r["average"] for r in rs]
        rows.append([name, *cells, _ms([a["accuracy"] for a in avg]), _ms([a["balanced_accuracy"] for a in avg]),
                     _ms([a["type_f1"] for a in avg], 1, 3), _ms([a["loc_f1"] for a in avg], 1, 3)])  # fmt: skip
    first = next(iter(present))
    n = sum(reports[first][ds][0]["scenes"][s]["n"] for s in reports[first][ds][0]["scenes"])
    return markdown_table(header, rows) + f"\n\n{n} images; accuracy and balanced accuracy in %, F1 in [0, 1].\n"


def differences(out: str, seeds: list[int], sets: list[str], models: list[str], n_boot: int) -> dict:
    """{model: {set: paired Δ Bal vs RAWS with its interval}} (m3ad_rl.eval.stats.paired_difference)."""
    from m3ad_rl.eval.stats import paired_difference

    raws = {ds: outcomes(out, seeds, "raws", ds) for ds in sets}
    return {m: {ds: paired_difference(raws[ds], outcomes(out, seeds, m, ds), n_boot=n_boot) for ds in sets}
            for m in models}  # fmt: skip


def reflection_totals(out: str, seeds: list[int], sets: list[str], models: list[str]) -> dict:
    """{model: {set: totals over seeds}} of the reflection outcomes, with the response and reflection counts."""
    from m3ad_rl.eval.stats import reflection_totals as totals

    return {m: {ds: totals(outcomes(out, seeds, m, ds)) for ds in sets} for m in ["raws", *models]}


def truncation(reports: dict, hist: dict[int, dict[str, list[dict]]], models: list[str]) -> dict:
    """What a token limit cut: RL rollouts (mean and max over steps of response/truncated_frac, per run),
    SFT targets (sft/truncated_rows) and evaluation responses (per model and set)."""
    rl = {m: [x.get("response/truncated_frac", 0.0) for h in hist.values() for x in h.get(m, [])] for m in models}
    evals = {
        m: {ds: (sum(r["run"].get("truncated", 0) for r in rs), sum(r["run"]["n"] for r in rs))
            for ds, rs in by_set.items() if rs}
        for m, by_set in reports.items()
    }  # fmt: skip
    sft = sum(x.get("sft/truncated_rows", 0.0) for h in hist.values() for x in h.get("sft", []))
    return {"rl": {m: (statistics.mean(v) if v else 0.0, max(v) if v else 0.0) for m, v in rl.items()},
            "eval": evals, "sft_rows": sft}  # fmt: skip


def targets(reports: dict, diffs: dict, refl: dict, trunc: dict, main_minutes: float) -> list[list[str]]:
    """The issue's targets, each with the measured value and met / missed (by how much)."""

    def bal(m: str, ds: str) -> float:
        return statistics.mean(r["average"]["balanced_accuracy"] for r in reports[m][ds])

    rows = []
    d = diffs["rcrl"]["ft-heldout"]
    ok = d["mean"] >= 0.02 and d["lo"] > 0
    rows.append(["RCRL − RAWS Bal, held-out FT-category images ≥ +2.0 points, 95 % interval above 0",
                 f"{_ci(d)} points", _verdict(ok, min(d["mean"] - 0.02, d["lo"]) * 100, " points")])  # fmt: skip
    cells, ok, counted = [], True, 0
    for ds in MAIN_SETS:
        t = refl["rcrl"][ds]
        cells.append(f"{ds}: {t['correct']} correct / {t['erroneous']} erroneous of {t['reflected']}")
        ok &= t["correct"] > t["erroneous"]
        counted += t["reflected"]
    rows.append(["After RCRL, correct > erroneous reflections on both sets, ≥ 100 reflections counted",
                 "; ".join(cells), _verdict(ok and counted >= 100, 0, "")])  # fmt: skip
    for ds, floor, what in (("bench", 0.58, "unseen categories"), ("ft-heldout", 0.75, "held-out FT-category images")):
        v = bal("raws", ds)
        rows.append([f"RAWS Bal, {what} ≥ {100 * floor:.0f} %", f"{100 * v:.1f} %",
                     _verdict(v >= floor, 100 * (v - floor), " points")])  # fmt: skip
    rl_mean, rl_max = trunc["rl"]["rcrl"]
    cut = [(c, n) for m in ("raws", "rcrl") for c, n in trunc["eval"].get(m, {}).values()]
    ev = sum(c for c, _ in cut) / max(1, sum(n for _, n in cut))
    worst = max(rl_mean, ev)
    measured = f"RL {100 * rl_mean:.2f} % (worst step {100 * rl_max:.1f} %), eval {100 * ev:.2f} %"
    rows.append(["Truncated responses < 1 % in RL and eval", measured,
                 _verdict(worst < 0.01, 100 * (worst - 0.01), " points")])  # fmt: skip
    rows.append(["`m3ad-rl reproduce` (the main stages) ≤ 75 min", f"{main_minutes:.1f} min",
                 _verdict(main_minutes <= 75, main_minutes - 75, " min")])  # fmt: skip
    return rows


def _verdict(ok: bool, by: float, unit: str) -> str:
    return "met" if ok else (f"missed by {abs(by):.3g}{unit}" if by else "missed")


def histories(out: str, seeds: list[int], models: list[str]) -> dict[int, dict[str, list[dict]]]:
    return {s: {"sft": _read_jsonl(f"{out}/seed-{s}/sft/metrics.jsonl"),
                **{m: _read_jsonl(f"{out}/seed-{s}/{m}/metrics.jsonl") for m in models}} for s in seeds}  # fmt: skip


def plot_curves(perception: list[dict], hist: dict[int, dict[str, list[dict]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 7.5))
    if perception:
        steps = [h["step"] for h in perception]
        for key, label in (
            ("perception/bal", "held-out Bal"),
            ("perception/image_bce", "phase 1: image BCE"),
            ("perception/nll", "phase 2: answer NLL"),
            ("perception/dense_bce", "defect-map BCE"),
        ):
            ax[0, 0].plot(steps, [h.get(key, float("nan")) for h in perception], marker=".", label=label)
        switch = next((h["step"] for h in perception if "perception/nll" in h), None)
        if switch is not None:
            ax[0, 0].axvline(switch, color="grey", lw=0.8, ls=":")
        ax[0, 0].legend(fontsize=8)
    ax[0, 0].set(title="Stage 0: perception pre-training", xlabel="step")
    for seed, h in hist.items():
        c = f"C{seed % 10}"
        ax[0, 1].plot([x["step"] for x in h["sft"]], [x["sft/loss"] for x in h["sft"]], color=c, label=f"seed {seed}")
        r = h["rcrl"]
        st = [x["step"] for x in r]
        ax[0, 2].plot(st, [x["reward/score"] for x in r], color=c, marker="o", ms=3, label=f"seed {seed}")
        for k, ls in (("answer", "--"), ("consistency", ":"), ("reflection", "-.")):
            key = f"reward/{k}"
            if r and key in r[0]:
                ax[1, 0].plot(st, [x[key] for x in r], color=c, ls=ls, label=f"R_{k[:3]} s{seed}")
        ax[1, 1].plot(st, [x.get("actor/kl_loss", float("nan")) for x in r], color=c, label=f"KL s{seed}")
        ax[1, 2].plot(st, [x.get("reflection/rate", float("nan")) for x in r], color=c, label=f"rate s{seed}")
        ax[1, 2].plot(
            st, [x.get("acc/after_reflection", float("nan")) for x in r], color=c, ls="--", label=f"acc after s{seed}"
        )
    ax[0, 1].set(title="RAWS SFT: response-token loss", xlabel="step")
    ax[0, 2].set(title="RCRL: mean reward", xlabel="step")
    ax[1, 0].set(title="RCRL: reward parts", xlabel="step")
    ax[1, 1].set(title="RCRL: KL(π‖π_ref) (k3)", xlabel="step")
    ax[1, 2].set(title="RCRL: reflection rate, answer accuracy", xlabel="step")
    for a in ax.flat[1:]:
        if a.lines:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reflection(reports: dict, path: str) -> None:
    """Figure 5: accuracy before vs after reflection per scene, RAWS and RCRL (mean over seeds), both sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, ds in zip(axes, MAIN_SETS, strict=True):
        scenes = sorted({s for r in reports["rcrl"][ds] for s in r["reflection"]["scenes"]})
        width = 0.2
        for k, (m, when) in enumerate((("raws", "before"), ("raws", "after"), ("rcrl", "before"), ("rcrl", "after"))):
            vals = [
                statistics.mean(
                    r["reflection"]["scenes"][s][f"accuracy_{when}"]
                    for r in reports[m][ds]
                    if s in r["reflection"]["scenes"]
                )
                for s in scenes
            ]
            ax.bar(
                [i + (k - 1.5) * width for i in range(len(scenes))],
                [100 * v for v in vals],
                width,
                label=f"{m.upper()} {when} reflection",
                color=f"C{k // 2}",
                alpha=0.5 if when == "before" else 1,
            )
        ax.set_xticks(range(len(scenes)), [s.capitalize() for s in scenes])
        ax.set(title=f"Accuracy before vs after reflection: {SETS[ds]}", ylabel="%", ylim=(0, 100))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_variants(diffs: dict, labels: dict[str, str], path: str) -> None:
    """Δ Bal vs RAWS with its 95 % interval, per reward variant and set (the Table-3 comparison)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(diffs)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(models) + 2), 4))
    for k, ds in enumerate(MAIN_SETS):
        xs = [i + (k - 0.5) * 0.35 for i in range(len(models))]
        mean = [100 * diffs[m][ds]["mean"] for m in models]
        err = [[100 * (diffs[m][ds]["mean"] - diffs[m][ds]["lo"]) for m in models],
               [100 * (diffs[m][ds]["hi"] - diffs[m][ds]["mean"]) for m in models]]  # fmt: skip
        ax.bar(xs, mean, 0.35, yerr=err, capsize=3, label=SETS[ds], color=f"C{k}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(models)), [labels[m] for m in models], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="Δ balanced accuracy vs RAWS (points)", title="Reward variants: RCRL − RAWS, 95 % bootstrap interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reflection_table(refl: dict, reports: dict, names: dict[str, str], sets: list[str]) -> str:
    from m3ad_rl.eval.report import markdown_table

    rows = []
    for m, name in names.items():
        for ds in sets:
            t = refl[m][ds]
            rs = [r["reflection"] for r in reports[m][ds]]
            rows.append([name, ds, f"{t['reflected']} of {t['responses']}", _ms([r["accuracy_before"] for r in rs]),
                         _ms([r["accuracy_after"] for r in rs]), str(t["correct"]), str(t["ineffective"]),
                         str(t["erroneous"])])  # fmt: skip
    header = ["Model", "Set", "Reflected (all seeds)", "Acc before %", "Acc after %", "Correct", "Ineffective",
              "Erroneous"]  # fmt: skip
    return markdown_table(header, rows)


def variants_table(diffs: dict, refl: dict, hist: dict, labels: dict[str, str]) -> str:
    from m3ad_rl.eval.report import markdown_table

    rows = []
    for m, label in labels.items():
        rewards = [x["reward/score"] for h in hist.values() for x in h.get(m, [])[-5:]]
        t = refl[m]
        rows.append([label, *[_ci(diffs[m][ds]) for ds in ("ft-heldout", "bench")],
                     *[f"{t[ds]['correct']} / {t[ds]['ineffective']} / {t[ds]['erroneous']} of {t[ds]['reflected']}"
                       for ds in ("ft-heldout", "bench")],
                     f"{statistics.mean(rewards):+.2f}" if rewards else "-"])  # fmt: skip
    header = ["Reward", "Δ Bal held-out FT (points, 95 % CI)", "Δ Bal unseen (points, 95 % CI)",
              "Reflections held-out: correct / ineffective / erroneous", "Reflections unseen",
              "Reward, last 5 steps"]  # fmt: skip
    return markdown_table(header, rows)


def _label(ref: str) -> str:
    return variant_name(ref)


def _gallery(out: str, seed: int, folder: Any) -> list[str]:
    """Base, RAWS and RCRL of one seed side by side on the unseen categories (gallery.html, gallery.png) and
    the report's lines about them; a gallery that fails is a warning, the report stands."""
    from m3ad_rl.eval.gallery import write_beside

    evals = {"base": f"{out}/eval/base/bench", "RAWS": f"{out}/seed-{seed}/eval/raws/bench",
             "RCRL": f"{out}/seed-{seed}/eval/rcrl/bench"}  # fmt: skip
    evals = {k: v for k, v in evals.items() if storage.exists(f"{v}/predictions.jsonl")}
    try:
        g = write_beside(list(evals.values()), list(evals), folder, title=f"reproduce: seed {seed}, unseen categories")
    except Exception as e:  # the report stands without it
        print(f"warning: no gallery: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    if g is None:
        return []
    return ["## The cases\n",
            f"[gallery.html](gallery.html): {g.shown} of the {g.total} unseen-category images, seed {seed}'s base, "
            "RAWS and RCRL side by side, with boxes and reasoning (filters by scene, category, outcome, model). "
            "The most telling ones:\n", "![cases](gallery.png)\n"]  # fmt: skip


def write_report(cfg: Any, seconds: dict[str, float]) -> dict:
    """Write ``{out}/report/results.md``, ``curves.png``, ``reflection.png``, ``variants.png`` and ``summary.json``."""
    from m3ad_rl.eval.report import markdown_table

    out, seeds, sets = cfg.out, list(cfg.seeds), _sets(cfg)
    variants = _variants(cfg)
    models = list(variants)
    reports = collect(out, seeds, sets, models)
    hist = histories(out, seeds, models)
    perception = _read_jsonl(f"{out}/perception/metrics.jsonl")
    init = _read_json(f"{out}/stages/init.json")["result"]
    diffs = differences(out, seeds, sets, models, cfg.bootstrap)
    refl = reflection_totals(out, seeds, sets, models)
    trunc = truncation(reports, hist, models)
    main = {k: v for k, v in seconds.items() if not any(k.endswith(f"-{m[5:]}") for m in models if m != "rcrl")}
    target_rows = targets(reports, diffs, refl, trunc, sum(main.values()) / 60)
    names = {**STAGE_NAMES, "rcrl": f"RCRL (GRPO, {_label(cfg.reward_config)})"}
    labels = {m: _label(ref) + (" (main)" if m == "rcrl" else "") for m, ref in variants.items()}
    diff_rows = [[SETS[ds], *[f"{100 * x:+.1f}" for x in diffs["rcrl"][ds]["per_seed"]], _ci(diffs["rcrl"][ds])]
                 for ds in sets]  # fmt: skip
    with storage.staged_dir(f"{out}/report") as d:
        plot_curves(perception, hist, str(d / "curves.png"))
        plot_reflection(reports, str(d / "reflection.png"))
        if len(models) > 1:
            plot_variants(diffs, labels, str(d / "variants.png"))
        gallery = _gallery(out, seeds[0], d)
        wall = markdown_table(["Stage", "Wall time"], [[k, f"{v / 60:.1f} min"] for k, v in seconds.items()]
                              + [["main stages", f"{sum(main.values()) / 60:.1f} min"],
                                 ["total", f"{sum(seconds.values()) / 60:.1f} min"]])  # fmt: skip
        cut_rows = [[m, f"{100 * a:.2f} %", f"{100 * b:.1f} %"] for m, (a, b) in trunc["rl"].items()]
        eval_cut = [
            [names.get(m, m), ds, f"{c} of {n}"] for m, by in trunc["eval"].items() for ds, (c, n) in by.items()
        ]
        text = "\n".join(
            [
                "# m3ad-rl reproduce: base → RAWS → RCRL on a small Qwen3-VL trained from scratch\n",
                f"Command: `m3ad-rl reproduce --config <config> --seeds {' '.join(map(str, seeds))}` · "
                f"commit `{commit()}` · {machine()} · model {init['parameters'] / 1e6:.1f} M parameters.\n",
                "Each cell is the mean ± std over the seeds; the base model is one model (stage 0, shared by all "
                "seeds, as the paper's pretrained base), so its cells have no spread.\n",
                f"## Unseen categories ({', '.join(cfg.data.bench_categories)})\n",
                table(reports, "bench", names),
                f"## Seen categories, held-out images ({', '.join(cfg.data.ft_categories)})\n",
                table(reports, "ft-heldout", names),
                *(
                    ["## Seen categories, validation images (for choosing settings)\n", table(reports, "val", names)]
                    if "val" in sets
                    else []
                ),
                "## RCRL − RAWS, paired by seed\n",
                "Balanced accuracy, points; each seed's RCRL against its own RAWS on the same images; the interval "
                f"is a 95 % bootstrap over images (within scenes) and seeds ({cfg.bootstrap} replicates).\n",
                markdown_table(["Set", *[f"seed {s}" for s in seeds], "mean [95 % CI]"], diff_rows),
                "",
                "## Targets\n",
                markdown_table(["Target", "Measured", "Verdict"], target_rows),
                "",
                *(
                    [
                        "## Reward variants (Table 3): RCRL − RAWS from the same RAWS models\n",
                        variants_table(diffs, refl, hist, labels),
                        "",
                        "![variants](variants.png)\n",
                    ]
                    if len(models) > 1
                    else []
                ),
                "## Reflection (Figure 5), totals over seeds\n",
                reflection_table(refl, reports, {"raws": names["raws"], **{m: labels[m] for m in models}}, sets),
                "",
                "![reflection](reflection.png)\n",
                "## Token limits: what was cut\n",
                f"SFT targets cut: {trunc['sft_rows']:.0f} rows. RL rollouts cut at max_new_tokens (response/"
                "truncated_frac over all steps and seeds):\n",
                markdown_table(["Run", "Mean", "Worst step"], cut_rows),
                "",
                markdown_table(["Model", "Set", "Eval responses cut"], eval_cut),
                "",
                *gallery,
                "## Curves\n",
                "![curves](curves.png)\n",
                "## Wall time per stage\n",
                wall,
                "",
            ]
        )
        (d / "results.md").write_text(text)
        summary = {
            "targets": target_rows,
            "seconds": seconds,
            "differences": diffs,
            "reflection": refl,
            "truncation": trunc,
            "average": {m: {ds: [r["average"] for r in reports[m][ds]] for ds in sets} for m in reports},
        }
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return summary
