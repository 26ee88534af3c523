"""Choosing RCRL's settings on the validation split, never on the held-out or benchmark images.

Starts from a ``m3ad-rl reproduce`` folder whose seeds' SFT (RAWS) stages are done. Each variant is a
list of ``rcrl.*`` overrides over the reproduce config's RCRL section; for each seed it trains RCRL from
that seed's RAWS model in a fresh process and evaluates it greedily on ``data/val``; RAWS is evaluated
on ``data/val`` once per seed. It prints, per variant, the paired Δ balanced accuracy against RAWS with a
95 % bootstrap interval over the validation images and the seeds, the reflection outcomes, the RL
truncation and the KL, and appends them to ``{out}/select/results.jsonl``.

    python bench/select_rcrl.py --out runs/reproduce --config configs/reproduce/cpu-small.yaml \\
        --seeds 0 1 --variant lr3e-5 actor.optim.lr=3e-5 --variant frozen actor.freeze=[model.visual.*]

A variant named ``sft-*`` changes RAWS instead (``sft.*`` keys) and is compared with the seed's RAWS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _cfg(config: str, out: str):
    from pathlib import Path

    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.package_data import config_file
    from m3ad_rl.pipeline.reproduce import ReproduceConfig

    path = config if Path(config).exists() else str(config_file(config))
    return load_config(ReproduceConfig, path, [f"out={out}"])


def train_and_eval(config: str, out: str, name: str, seed: int, overrides: list[str]) -> dict:
    """One variant, one seed: RCRL from the seed's RAWS model, then greedy on the validation set."""
    from omegaconf import OmegaConf

    from m3ad_rl.core import storage
    from m3ad_rl.pipeline import reproduce as rp
    from m3ad_rl.train.rcrl import run as run_rcrl

    cfg = _cfg(config, out)
    section = OmegaConf.to_container(OmegaConf.merge(cfg.rcrl, OmegaConf.from_dotlist(overrides)))
    cfg = cfg.model_copy(update={"rcrl": section, "out": storage.absolute(out)})
    longest = json.loads(storage.read_text(f"{cfg.out}/seed-{seed}/ft/lengths.json"))["max"]
    rc = rp._rcrl_config(cfg, seed, f"{cfg.out}/seed-{seed}/sft/model", cfg.reward_config, longest)
    where = f"{cfg.out}/select/{name}/seed-{seed}"
    run_dir = f"{where}/rcrl"
    if not overrides and storage.exists(f"{cfg.out}/seed-{seed}/rcrl/model"):  # the config's own: reproduce ran it
        run_dir = f"{cfg.out}/seed-{seed}/rcrl"
    t0 = time.perf_counter()
    if not storage.exists(f"{run_dir}/model"):
        run_rcrl(rc.model_copy(update={"out": run_dir}), resume=True, progress=False)
    minutes = (time.perf_counter() - t0) / 60
    hist = [json.loads(x) for x in storage.read_text(f"{run_dir}/metrics.jsonl").splitlines() if x.strip()]
    report = rp._eval(f"{run_dir}/model", f"{cfg.out}/data/val", f"{where}/val", cfg, rp.auto_limit(cfg, longest))
    tail = hist[-5:]
    return {"minutes": minutes, "val_bal": report["average"]["balanced_accuracy"],
            "truncated_rl": max((h.get("response/truncated_frac", 0) for h in hist), default=0.0),
            "kl_last": tail[-1]["actor/kl_loss"] if tail else None,
            "reward_last5": sum(h["reward/score"] for h in tail) / len(tail) if tail else None,
            "reflect_rate_last5": sum(h.get("reflection/rate", 0) for h in tail) / len(tail) if tail else None,
            }  # fmt: skip


def sft_and_eval(config: str, out: str, name: str, seed: int, overrides: list[str]) -> dict:
    """An SFT variant (``sft.*`` overrides) from the seed's FT set, greedy on the validation set."""
    from omegaconf import OmegaConf

    from m3ad_rl.core import storage
    from m3ad_rl.pipeline import reproduce as rp
    from m3ad_rl.train.sft import run as run_sft

    cfg = _cfg(config, out)
    section = OmegaConf.to_container(OmegaConf.merge(cfg.sft, OmegaConf.from_dotlist(overrides)))
    cfg = cfg.model_copy(update={"sft": section, "out": storage.absolute(out)})
    longest = json.loads(storage.read_text(f"{cfg.out}/seed-{seed}/ft/lengths.json"))["max"]
    base = f"{cfg.out}/perception/model"
    sc = rp._sft_config(cfg, seed, base, longest)
    where = f"{cfg.out}/select/{name}/seed-{seed}"
    t0 = time.perf_counter()
    if not storage.exists(f"{where}/sft/model"):
        run_sft(sc.model_copy(update={"out": f"{where}/sft"}), resume=True)
    minutes = (time.perf_counter() - t0) / 60
    report = rp._eval(f"{where}/sft/model", f"{cfg.out}/data/val", f"{where}/val", cfg, rp.auto_limit(cfg, longest))
    return {"minutes": minutes, "val_bal": report["average"]["balanced_accuracy"], "truncated_rl": 0.0,
            "kl_last": None, "reward_last5": None, "reflect_rate_last5": report["reflection"]["rate"]}  # fmt: skip


def raws_eval(config: str, out: str, seed: int) -> None:
    from m3ad_rl.core import storage
    from m3ad_rl.pipeline import reproduce as rp

    cfg = _cfg(config, out)
    cfg = cfg.model_copy(update={"out": storage.absolute(out)})
    where = f"{cfg.out}/select/raws/seed-{seed}/val"
    if not storage.exists(f"{where}/report.json"):
        longest = json.loads(storage.read_text(f"{cfg.out}/seed-{seed}/ft/lengths.json"))["max"]
        rp._eval(f"{cfg.out}/seed-{seed}/sft/model", f"{cfg.out}/data/val", where, cfg, rp.auto_limit(cfg, longest))


def summarize(out: str, name: str, seeds: list[int], runs: list[dict], overrides: list[str]) -> dict:
    from m3ad_rl.eval.stats import load_outcomes, paired_difference, reflection_totals

    base = [load_outcomes(f"{out}/select/raws/seed-{s}/val/predictions.jsonl") for s in seeds]
    new = [load_outcomes(f"{out}/select/{name}/seed-{s}/val/predictions.jsonl") for s in seeds]
    d = paired_difference(base, new)
    return {"variant": name, "overrides": overrides, "seeds": seeds, "delta_bal": d,
            "reflection": reflection_totals(new), "raws_reflection": reflection_totals(base), "runs": runs}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="the reproduce folder (its seeds' SFT done)")
    ap.add_argument("--config", default="configs/reproduce/cpu-small.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--raws", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.raws is not None:
        raws_eval(a.config, a.out, a.raws)
        return
    if a.one:
        v = next(v for v in a.variant if v[0] == a.one[0])
        fn = sft_and_eval if v[0].startswith("sft-") else train_and_eval  # sft-*: an SFT variant (sft.* keys)
        print("RESULT " + json.dumps(fn(a.config, a.out, v[0], int(a.one[1]), v[1:])), flush=True)
        return
    me = [sys.executable, __file__, "--out", a.out, "--config", a.config]
    for s in a.seeds:
        subprocess.run([*me, "--raws", str(s)], check=True, capture_output=True)
    for v in a.variant:
        runs = []
        for s in a.seeds:  # each run in its own fresh process
            r = subprocess.run([*me, "--variant", *v, "--one", v[0], str(s)], capture_output=True, text=True)
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{v[0]} seed {s}: failed\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}", flush=True)
                break
            runs.append(json.loads(line[7:]))
        else:
            res = summarize(a.out, v[0], a.seeds, runs, v[1:])
            d, t = res["delta_bal"], res["reflection"]
            print(f"{v[0]:24s} Δ val Bal {100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] "
                  f"per seed {[round(100 * x, 1) for x in d['per_seed']]}; reflections {t['correct']}/"
                  f"{t['ineffective']}/{t['erroneous']} of {t['reflected']}; "
                  + "; ".join(f"s{s}: val {100 * r['val_bal']:.1f} kl {r['kl_last']} rl-cut {r['truncated_rl']:.3f} "
                              f"R {r['reward_last5']} refl {r['reflect_rate_last5']} ({r['minutes']:.1f} min)"
                              for s, r in zip(a.seeds, runs, strict=True)), flush=True)  # fmt: skip
            with open(f"{a.out}/select/results.jsonl", "a") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
