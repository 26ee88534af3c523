"""``m3ad-rl data …``: synthesize, import, split, build FT sets, inspect."""

from __future__ import annotations

import argparse
import sys

from m3ad_rl.cli.common import EXIT_DATA, EXIT_SKIPPED, POSITIVE, config_args, finish_write, overwrite_arg


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="datasets: synthesize, import, split, build FT sets, inspect")
    ds = data.add_subparsers(dest="cmd", required=True)
    p = ds.add_parser("synth", help="synthetic industrial scenes with labelled defects")
    p.add_argument("--out", required=True, help="dataset URL (folder, memory://, s3://...)")
    p.add_argument("--n", type=POSITIVE, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=POSITIVE, default=1, help="processes (the output is the same for any number)")
    overwrite_arg(p, "dataset")
    config_args(p)
    p.set_defaults(func=cmd_data_synth)

    p = ds.add_parser("import", help="import a public dataset's on-disk layout")
    p.add_argument("--dataset", required=True, choices=["mvtec-ad", "mvtec-loco", "visa", "real-iad", "folder"])
    p.add_argument("--root", required=True, help="the dataset's root folder")
    p.add_argument("--out", required=True, help="dataset URL")
    p.add_argument("--scene", help="scene of a 'folder' dataset (texture, workpiece, electronic, logical)")
    p.add_argument("--category", help="category of a 'folder' dataset")
    p.add_argument("--source", default="custom", help="source name of a 'folder' dataset")
    p.add_argument("--defect-type", help="type of a 'folder' dataset's anomalous images that labels.csv does not "
                   "name (free text for the taxonomy, e.g. dent)")  # fmt: skip
    p.add_argument("--category-scene", type=category_scene, nargs="+", default=[], metavar="CATEGORY=SCENE",
                   help="scene of a public dataset's category that its table lacks, or another scene than the "
                   "table's, e.g. mystery=texture")  # fmt: skip
    p.add_argument("--embed-images", action="store_true", help="store image bytes instead of their paths")
    overwrite_arg(p, "dataset")
    p.set_defaults(func=cmd_data_import)

    p = ds.add_parser("split", help="cross-category FT / benchmark split")
    p.add_argument("--input", required=True, nargs="+", help="dataset URL(s) to pool")
    p.add_argument("--out", required=True, help="writes OUT/ft and OUT/bench")
    overwrite_arg(p, "split")
    config_args(p)
    p.set_defaults(func=cmd_data_split)

    p = ds.add_parser("build-ft", help="difficulty, Thinking/Reflective trajectories, SFT and RL sets")
    p.add_argument("--input", required=True, help="the FT dataset URL")
    p.add_argument("--predictions", required=True, help="base model JSONL: {id, answer} or {id, response}")
    p.add_argument("--out", required=True, help="writes OUT/samples, OUT/sft.parquet, OUT/rl.parquet")
    p.add_argument("--captioner", choices=["template", "openai"], default="template")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (captioner openai)")
    p.add_argument("--model", help="model name at that endpoint")
    p.add_argument("--cache-dir", default=".cache/captions", help="caption cache (captioner openai)")
    p.add_argument("--tokenizer", help="the model to be trained (folder or URL): its tokenizer measures the targets "
                   "into OUT/lengths.json, which SFT, RCRL and eval check their token limits against")  # fmt: skip
    p.add_argument("--rl-input", help="draw the RL prompts from this dataset (images SFT never sees); "
                   "default: the FT samples")  # fmt: skip
    overwrite_arg(p, "FT output")
    config_args(p)
    p.set_defaults(func=cmd_data_build_ft)

    p = ds.add_parser("stats", help="counts per scene / category / type / split, and a plot")
    p.add_argument("--input", required=True)
    p.add_argument("--plot", help="write the counts as a PNG")
    p.add_argument("--check-images", action="store_true", help="also decode every image; exit 5 if one does not")
    overwrite_arg(p, "plot file")
    p.set_defaults(func=cmd_data_stats)

    p = ds.add_parser("gallery", help="contact sheet of samples with their boxes drawn")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="image file (.png or .jpg)")
    p.add_argument("--n", type=POSITIVE, default=36, help="number of samples")
    p.add_argument("--cols", type=POSITIVE, default=6)
    p.add_argument("--anomalous-only", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="which samples to show")
    overwrite_arg(p, "image file")
    p.set_defaults(func=cmd_data_gallery)


def category_scene(text: str) -> tuple[str, str]:
    """An argparse type: ``CATEGORY=SCENE`` with one of the four scenes, so a typo is a usage error."""
    from m3ad_rl.data.schema import SCENES

    category, _, scene = text.partition("=")
    if not (category and scene):
        raise argparse.ArgumentTypeError(f"{text!r} is not CATEGORY=SCENE")
    if scene not in SCENES:
        raise argparse.ArgumentTypeError(f"scene {scene!r} is not one of {', '.join(SCENES)}")
    return category, scene


def cmd_data_synth(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    refuse_overwrite([args.config], [args.out])
    cfg = load_config(SynthConfig, args.config, [*args.overrides, f"n={args.n}", f"seed={args.seed}"])
    return finish_write(synthesize(cfg, args.out, args.workers, overwrite=args.overwrite), args.out)


def cmd_data_import(args: argparse.Namespace) -> int:
    from m3ad_rl.data.importers import import_dataset

    r = import_dataset(args.dataset, args.root, args.out, source=args.source, scene=args.scene,
                       category=args.category, defect_type=args.defect_type,
                       category_scene=dict(args.category_scene), embed_images=args.embed_images,
                       overwrite=args.overwrite)  # fmt: skip
    rc = finish_write(r.written, args.out)
    print(f"the importer skipped {len(r.skipped)} image(s)", file=sys.stderr)
    return EXIT_SKIPPED if r.skipped else rc


def cmd_data_split(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.data.splits import SplitConfig, split_datasets

    cfg = load_config(SplitConfig, args.config, args.overrides)
    r = split_datasets(args.input, args.out, cfg, config_file=args.config, overwrite=args.overwrite)
    for name in ("ft", "bench"):
        print(f"{name}: {', '.join(r.categories(name))}")
    rejected = len(r.ft.rejected) + len(r.bench.rejected)
    print(f"wrote {r.ft.rows} FT and {r.bench.rows} benchmark samples under {args.out.rstrip('/')}; "
          f"rejected {rejected}", file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if rejected else 0


def cmd_data_build_ft(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner

    refuse_overwrite([args.config], [args.out])
    cfg = load_config(FTConfig, args.config, args.overrides)
    captioner = make_captioner(args.captioner, seed=cfg.seed, base_url=args.base_url, model=args.model,
                               cache_dir=args.cache_dir)  # fmt: skip
    report = build_ft(args.input, args.predictions, args.out, cfg, captioner, tokenizer=args.tokenizer,
                      rl_input=args.rl_input, overwrite=args.overwrite)  # fmt: skip
    for sid, why in report.skipped:
        print(f"skipped {sid}: {why}", file=sys.stderr)
    if report.rl_overlap:
        print(f"warning: {report.rl_overlap} RL prompts are images of the SFT set", file=sys.stderr)
    if report.lengths:
        n = report.lengths
        print(f"target tokens: p50 {n['p50']}, p99 {n['p99']}, max {n['max']} (lengths.json)", file=sys.stderr)
    print(f"easy {report.easy}, hard {report.hard}; thinking {report.thinking}, reflective {report.reflective}; "
          f"wrote {report.sft_rows} SFT rows and {report.rl_rows} RL rows under {args.out.rstrip('/')}",
          file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if report.skipped else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from m3ad_rl.data.stats import check_dataset_stats

    def bad(sid: str, why: str) -> None:
        print(f"sample {sid!r}: {why}", file=sys.stderr)

    stats, n_bad = check_dataset_stats(args.input, args.plot, args.check_images, on_bad=bad, overwrite=args.overwrite)
    if args.check_images:
        print(f"images checked: {stats['n'] - n_bad} decode, {n_bad} do not", file=sys.stderr)
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_DATA if n_bad else 0


def cmd_data_gallery(args: argparse.Namespace) -> int:
    from m3ad_rl.data.gallery import write_gallery

    shown, broken = write_gallery(args.input, args.out, args.n, args.cols, args.seed, args.anomalous_only,
                                  on_error=lambda _, e: print(f"left out: {e.what}", file=sys.stderr),
                                  overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {args.out} ({shown} samples)", file=sys.stderr)
    return EXIT_SKIPPED if broken else 0
