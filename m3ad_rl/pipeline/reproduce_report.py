"""The report of ``m3ad-rl reproduce``: ``{out}/report/results.md`` with its plots.

Tables in the paper's Table-1 layout (Acc / Bal per scene and their average, Type F1, Loc F1), each
cell the mean ± std over seeds, for the unseen benchmark categories and for held-out images of the FT
categories; the targets of the reproduction, met or missed by how much; curves per seed; and the
reflection report of the paper's Figure 5.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from m3ad_rl.core import storage
from m3ad_rl.core.provenance import commit, machine

SETS = {"bench": "unseen categories (M3-AD-Bench side)", "ft-heldout": "seen categories, held-out images"}
STAGE_NAMES = {"base": "Base (stage 0)", "raws": "RAWS (SFT)", "rcrl": "RCRL (GRPO, preset d)"}


def _read_json(url: str) -> dict:
    return json.loads(storage.read_text(url))


def _read_jsonl(url: str) -> list[dict]:
    if not storage.exists(url):
        return []
    return [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]


def collect(out: str, seeds: list[int]) -> dict[str, dict[str, list[dict]]]:
    """{model: {set: [report per seed]}}; the base is one model, so it has one report per set."""
    reports: dict[str, dict[str, list[dict]]] = {m: {s: [] for s in SETS} for m in STAGE_NAMES}
    for ds in SETS:
        reports["base"][ds].append(_read_json(f"{out}/eval/base/{ds}/report.json"))
        for seed in seeds:
            for m in ("raws", "rcrl"):
                reports[m][ds].append(_read_json(f"{out}/seed-{seed}/eval/{m}/{ds}/report.json"))
    return reports


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [scale * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def table(reports: dict[str, dict[str, list[dict]]], ds: str) -> str:
    from m3ad_rl.eval.report import markdown_table

    scenes = sorted({s for m in reports.values() for r in m[ds] for s in r["scenes"]})
    header = ["Model", *[f"{s.capitalize()} Acc / Bal" for s in scenes], "Avg Acc", "Avg Bal", "Type F1", "Loc F1"]
    rows = []
    for m, name in STAGE_NAMES.items():
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
        rows.append(
            [
                name,
                *cells,
                _ms([a["accuracy"] for a in avg]),
                _ms([a["balanced_accuracy"] for a in avg]),
                _ms([a["type_f1"] for a in avg], 1, 3),
                _ms([a["loc_f1"] for a in avg], 1, 3),
            ]
        )
    n = sum(reports["base"][ds][0]["scenes"][s]["n"] for s in reports["base"][ds][0]["scenes"])
    return markdown_table(header, rows) + f"\n\n{n} images; accuracy and balanced accuracy in %, F1 in [0, 1].\n"


def targets(reports: dict, histories: dict[int, dict[str, list[dict]]]) -> list[list[str]]:
    """The issue's targets, each with the measured value and met / missed."""

    def bal(m: str, ds: str) -> list[float]:
        return [r["average"]["balanced_accuracy"] for r in reports[m][ds]]

    def spread(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    rows = []
    raws_seen = statistics.mean(bal("raws", "ft-heldout"))
    rows.append(
        [
            "RAWS Bal, held-out images of FT categories ≥ 75 %",
            f"{100 * raws_seen:.1f} %",
            _verdict(raws_seen >= 0.75, raws_seen - 0.75),
        ]
    )
    n_bench = reports["raws"]["bench"][0]["run"]["n"]
    margin = 2 * 0.5 / n_bench**0.5
    raws_unseen = statistics.mean(bal("raws", "bench"))
    rows.append(
        [
            f"RAWS Bal, unseen categories clearly above chance (> 50 + {100 * margin:.1f} %)",
            f"{100 * raws_unseen:.1f} %",
            _verdict(raws_unseen > 0.5 + margin, raws_unseen - 0.5 - margin),
        ]
    )
    first, last = [], []
    for h in histories.values():
        r = [x["reward/score"] for x in h["rcrl"]]
        w = max(1, min(5, len(r) // 4))
        first.append(sum(r[:w]) / w)
        last.append(sum(r[-w:]) / w)
    if first:
        climb = statistics.mean(last) - statistics.mean(first)
        rows.append(
            [
                "RCRL mean reward above its RAWS start (last vs first steps)",
                f"{statistics.mean(first):+.3f} → {statistics.mean(last):+.3f}",
                _verdict(climb > 0, climb),
            ]
        )
    for ds in SETS:
        for key, label in (("balanced_accuracy", "Bal"), ("loc_f1", "Loc F1")):
            a = [r["average"][key] for r in reports["raws"][ds]]
            b = [r["average"][key] for r in reports["rcrl"][ds]]
            gain = statistics.mean(b) - statistics.mean(a)
            noise = max(spread(a), spread(b))
            rows.append(
                [
                    f"RCRL − RAWS {label}, {ds}, above the seed spread ({noise:.3f})",
                    f"{gain:+.3f}",
                    _verdict(gain > noise, gain - noise),
                ]
            )
    correct = sum(r["reflection"]["counts"]["correct"] for ds in SETS for r in reports["rcrl"][ds])
    wrong = sum(r["reflection"]["counts"]["erroneous"] for ds in SETS for r in reports["rcrl"][ds])
    rows.append(
        [
            "After RCRL, more correct than erroneous reflections (all seeds, both sets)",
            f"{correct} correct, {wrong} erroneous",
            _verdict(correct > wrong, correct - wrong),
        ]
    )
    return rows


def _verdict(ok: bool, by: float) -> str:
    return "met" if ok else f"missed by {abs(by):.3g}"


def histories(out: str, seeds: list[int]) -> dict[int, dict[str, list[dict]]]:
    return {
        s: {
            "sft": _read_jsonl(f"{out}/seed-{s}/sft/metrics.jsonl"),
            "rcrl": _read_jsonl(f"{out}/seed-{s}/rcrl/metrics.jsonl"),
        }
        for s in seeds
    }


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
        ax[1, 1].plot(st, [x.get("actor/kl_loss", float("nan")) for x in r], color=c, label=f"seed {seed}")
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
    for ax, ds in zip(axes, SETS, strict=True):
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


def reflection_table(reports: dict) -> str:
    from m3ad_rl.eval.report import markdown_table

    rows = []
    for m in ("raws", "rcrl"):
        for ds in SETS:
            rs = [r["reflection"] for r in reports[m][ds]]
            c = {k: sum(r["counts"][k] for r in rs) for k in ("reflected", "correct", "ineffective", "erroneous")}
            rows.append(
                [
                    STAGE_NAMES[m],
                    ds,
                    _ms([r["rate"] for r in rs]),
                    _ms([r["accuracy_before"] for r in rs]),
                    _ms([r["accuracy_after"] for r in rs]),
                    *[str(c[k]) for k in c],
                ]
            )
    return markdown_table(
        [
            "Model",
            "Set",
            "Reflects %",
            "Acc before %",
            "Acc after %",
            "Reflected",
            "Correct",
            "Ineffective",
            "Erroneous",
        ],
        rows,
    )


def write_report(cfg: Any, seconds: dict[str, float]) -> dict:
    """Write ``{out}/report/results.md``, ``curves.png``, ``reflection.png`` and ``summary.json``."""
    from m3ad_rl.eval.report import markdown_table

    out, seeds = cfg.out, list(cfg.seeds)
    reports = collect(out, seeds)
    hist = histories(out, seeds)
    perception = _read_jsonl(f"{out}/perception/metrics.jsonl")
    init = _read_json(f"{out}/stages/init.json")["result"]
    target_rows = targets(reports, hist)
    with storage.staged_dir(f"{out}/report") as d:
        plot_curves(perception, hist, str(d / "curves.png"))
        plot_reflection(reports, str(d / "reflection.png"))
        wall = markdown_table(
            ["Stage", "Wall time"],
            [[k, f"{v / 60:.1f} min"] for k, v in seconds.items()]
            + [["total", f"{sum(seconds.values()) / 60:.1f} min"]],
        )
        text = "\n".join(
            [
                "# m3ad-rl reproduce: base → RAWS → RCRL on a small Qwen3-VL trained from scratch\n",
                f"Command: `m3ad-rl reproduce --config <config> --seeds {' '.join(map(str, seeds))}` · "
                f"commit `{commit()}` · {machine()} · model {init['parameters'] / 1e6:.1f} M parameters.\n",
                "Each cell is the mean ± std over the seeds; the base model is one model (stage 0, shared by all "
                "seeds, as the paper's pretrained base), so its cells have no spread.\n",
                f"## Unseen categories ({', '.join(cfg.data.bench_categories)})\n",
                table(reports, "bench"),
                f"## Seen categories, held-out images ({', '.join(cfg.data.ft_categories)})\n",
                table(reports, "ft-heldout"),
                "## Targets\n",
                markdown_table(["Target", "Measured", "Verdict"], target_rows),
                "",
                "## Reflection (Figure 5)\n",
                reflection_table(reports),
                "",
                "![reflection](reflection.png)\n",
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
            "average": {m: {ds: [r["average"] for r in reports[m][ds]] for ds in SETS} for m in reports},
        }
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return summary
