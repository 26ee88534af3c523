"""Look before you read: a self-contained HTML gallery (and a PNG contact sheet) of evaluation cases.

For one or more ``eval run`` outputs on the same images (base, RAWS, RCRL …) the page shows, per model,
sampled cases of each outcome — true/false positives and negatives, and reflections that were correct,
erroneous or ineffective (SPEC §5) — with the true boxes (green) and the predicted ones (red) drawn on
the image, the type names, and the response's thinking and reflection (collapsed until clicked). Each
image is one row with every model side by side; the rows where the models' answers disagree come first.
Filters by scene, category, outcome and model run in the page's own script: no server, no network, no
external request (images are embedded JPEG thumbnails, each once).

Scale: every prediction is scored (the counts of each outcome are shown in full), but only the sampled
cases' images are read and embedded (``per_outcome`` per model and outcome), so a 10,000-image evaluation
makes a page of a few MB in seconds. Bad input — a prediction for an image the dataset does not hold, an
image that does not load, a line that is not JSON — is listed in the page and returned to the caller,
never a crash.

    from m3ad_rl.eval.gallery import write_gallery
    write_gallery(["runs/eval/raws", "runs/eval/rcrl"], "gallery.html", names=["RAWS", "RCRL"])
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
from dataclasses import dataclass, field

from m3ad_rl.core import storage

DETECTION = ("TP", "FP", "TN", "FN")
REFLECTION = ("correct", "erroneous", "ineffective")
LABELS = {
    "TP": "true positive", "FP": "false positive", "TN": "true negative", "FN": "false negative",
    "correct": "reflection: correct", "erroneous": "reflection: erroneous", "ineffective": "reflection: ineffective",
    "disagree": "models disagree",
}  # fmt: skip
TRUE_COLOR, PRED_COLOR = "#19c37d", "#ff3b30"


@dataclass
class Cell:
    """One model's answer on one image, scored."""

    answer: str | None  # yes | no | None (unreadable)
    outcome: str  # TP | FP | TN | FN (an unreadable answer is wrong)
    reflection: str  # none | correct | erroneous | ineffective
    initial: str | None
    types: list[str]
    boxes: list[list[float]]
    think: str
    reflection_text: str
    answer_text: str
    truncated: bool


@dataclass
class Case:
    id: str
    scene: str
    category: str
    anomalous: bool
    true_types: list[str]
    true_boxes: list[list[float]]
    cells: dict[str, Cell] = field(default_factory=dict)
    image: str | None = None  # data: URL of the thumbnail
    image_size: tuple[int, int] = (0, 0)  # the thumbnail's width and height
    image_problem: str | None = None

    def tags(self) -> list[str]:
        out = [f"{m}:{c.outcome}" for m, c in self.cells.items()]
        out += [f"{m}:{c.reflection}" for m, c in self.cells.items() if c.reflection != "none"]
        if self.disagree():
            out.append("disagree")
        return out

    def disagree(self) -> bool:
        return len(self.cells) > 1 and len({c.answer for c in self.cells.values()}) > 1


@dataclass
class Gallery:
    """What was shown and what went wrong: the page's counts, for the command line and tests."""

    models: list[str]
    counts: dict[str, dict[str, int]]  # model -> outcome -> images
    shown: int
    total: int
    problems: list[str]


def _cell(obj: dict, gt) -> Cell:
    from m3ad_rl.core.ground_truth import reflection_outcome
    from m3ad_rl.core.output_format import parse

    text = obj.get("response")
    if text is None and obj.get("answer") in ("yes", "no"):  # a bare {id, answer} record (data build-ft's input)
        text = f"<answer>{obj['answer']}</answer>"
    p = parse(str(text or ""))
    truth = gt.verdict
    right = p.answer == truth  # an unreadable answer is wrong
    outcome = ("TP" if right else "FN") if gt.anomalous else ("TN" if right else "FP")
    return Cell(
        answer=p.answer, outcome=outcome, reflection=reflection_outcome(p, gt), initial=p.initial,
        types=list(p.types), boxes=[b.as_list() for b in p.boxes], think=p.think or "",
        reflection_text=p.reflection or "", answer_text=p.answer_text or "", truncated=bool(obj.get("truncated")),
    )  # fmt: skip


def _read_predictions(url: str, problems: list[str]) -> dict[str, dict]:
    """id -> prediction record (the last of a repeated id); lines that are not records are reported."""
    from m3ad_rl.core.jsonl import LineErrors, read_records, require

    errors = LineErrors(url, quiet=True)
    rows = dict(r for _, r in read_records(url, lambda o: (str(require(o, "id", (str, int))), o), errors))
    problems.extend(f"{url}: line {n}: {why}" for n, why in errors.skipped[:3])
    if len(errors.skipped) > 3:
        problems.append(f"{url}: {len(errors.skipped)} lines in all are not prediction records")
    return rows


def _dataset_of(eval_url: str) -> str | None:
    try:
        return json.loads(storage.read_text(f"{eval_url.rstrip('/')}/run.json")).get("dataset")
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def default_names(evals: list[str]) -> list[str]:
    """Short model names from the evaluation folders: the path parts that differ between them
    (``…/eval/raws/bench`` and ``…/eval/rcrl/bench`` → raws, rcrl), or the last part of a single one."""
    parts = [e.rstrip("/").split("/") for e in evals]
    if len(parts) == 1:
        return [parts[0][-1] or evals[0]]
    width = max(len(p) for p in parts)
    padded = [[""] * (width - len(p)) + p for p in parts]
    differ = [i for i in range(width) if len({p[i] for p in padded}) > 1]
    names = ["/".join(p[i] for i in differ) or p[-1] for p in padded]
    return names if len(set(names)) == len(names) else [e.rstrip("/") for e in evals]


def _thumbnail(data: bytes, size: int) -> tuple[str, tuple[int, int]]:
    """A JPEG data: URL at most ``size`` px on its long side (small images are not enlarged: the page does)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), img.size


def _attach_images(cases: dict[str, Case], datasets: list[str], thumb: int, problems: list[str]) -> None:
    """Thumbnails for the chosen cases only: one pass over the id and image columns of each dataset."""
    from m3ad_rl.data.schema import read_uri
    from m3ad_rl.data.store import iter_batches

    want = set(cases)
    for url in datasets:
        if not want:
            break
        try:
            for batch in iter_batches(url, ["id", "image", "image_uri"]):
                for row in batch.to_pylist():
                    if row["id"] not in want:
                        continue
                    case = cases[row["id"]]
                    try:
                        data = row["image"] if row["image"] is not None else read_uri(row["image_uri"])
                        case.image, case.image_size = _thumbnail(data, thumb)
                        case.image_problem = None
                    except Exception as e:  # any unreadable image is reported, not fatal
                        case.image_problem = f"image of {row['id']} does not load: {type(e).__name__}: {e}"[:300]
                    want.discard(row["id"])
        except Exception as e:  # reported in the page
            problems.append(f"dataset {url}: cannot be read ({type(e).__name__}: {e})"[:400])
    for i in want:
        cases[i].image_problem = cases[i].image_problem or f"image of {i} not found in {', '.join(datasets)}"
    problems.extend(c.image_problem for c in cases.values() if c.image_problem)


def collect(
    evals: list[str],
    names: list[str] | None = None,
    dataset: str | None = None,
    per_outcome: int = 12,
    seed: int = 0,
    thumb: int = 256,
) -> tuple[list[Case], Gallery, list[str]]:
    """Score every prediction of every evaluation, sample the cases to show and load their thumbnails.
    Returns (cases in page order, summary, datasets read)."""
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.core.ground_truth import GroundTruth
    from m3ad_rl.data.store import read_table

    names = list(names) if names else default_names(evals)
    if len(names) != len(evals):
        raise UsageError(f"{len(names)} names for {len(evals)} evaluations", "give one --name per --eval, or none")
    if len(set(names)) != len(names):
        raise UsageError(f"model names repeat: {names}", "give each evaluation its own --name")
    problems: list[str] = []
    preds: dict[str, dict[str, dict]] = {}
    for name, url in zip(names, evals, strict=True):
        path = url if url.endswith(".jsonl") else f"{url.rstrip('/')}/predictions.jsonl"
        if not storage.exists(path):
            raise UsageError(f"{url}: no predictions.jsonl", "point --eval at an `eval run` output folder")
        preds[name] = _read_predictions(path, problems)
    datasets = [dataset] if dataset else []
    if not datasets:
        for url in evals:
            d = _dataset_of(url if not url.endswith(".jsonl") else url.rsplit("/", 1)[0])
            if d and d not in datasets:
                datasets.append(d)
    meta: dict[str, dict] = {}
    for url in datasets:
        cols = ["id", "scene", "category", "label", "defects"]
        try:
            rows = read_table(url, cols).to_pylist()
        except Exception as e:  # the user's --dataset is theirs to fix; a run.json's may have moved: reported
            if dataset:
                raise
            problems.append(f"dataset {url}: cannot be read ({type(e).__name__}: {e})"[:400])
            continue
        for row in rows:
            meta.setdefault(row["id"], row)
    if not datasets:
        problems.append("no dataset known (no run.json and no --dataset): cases are shown without images")
    all_cases: dict[str, Case] = {}
    missing: list[str] = []
    for name in names:
        for i, obj in preds[name].items():
            row = meta.get(i)
            if meta and row is None:
                missing.append(i)
                continue
            truth = obj.get("ground_truth") or (
                {"label": row["label"], "defects": row["defects"]} if row is not None else None
            )  # the dataset's truth where the prediction does not carry it (build-ft's {id, answer} records)
            try:
                gt = GroundTruth.from_obj(truth)
            except Exception:  # a record we cannot score: reported
                problems.append(f"{name}: prediction {i} has no readable ground truth (nor a dataset row)")
                continue
            case = all_cases.get(i)
            if case is None:
                row = row or {}
                case = all_cases[i] = Case(
                    i, str(row.get("scene") or obj.get("scene") or "?"), str(row.get("category") or "?"),
                    gt.anomalous, [t.name for t in gt.types], [b.as_list() for b in gt.boxes],
                )  # fmt: skip
            case.cells[name] = _cell(obj, gt)
    if missing:
        uniq = sorted(set(missing))
        problems.append(f"{len(uniq)} prediction(s) for images not in the dataset, left out: {', '.join(uniq[:5])}"
                        + (" …" if len(uniq) > 5 else ""))  # fmt: skip
    counts = {n: dict.fromkeys((*DETECTION, *REFLECTION), 0) for n in names}
    for case in all_cases.values():
        for n, c in case.cells.items():
            counts[n][c.outcome] += 1
            if c.reflection != "none":
                counts[n][c.reflection] += 1
    rng = random.Random(seed)
    chosen: set[str] = set()
    ids = sorted(all_cases)
    for n in names:
        for o in (*DETECTION, *REFLECTION):
            pool = [i for i in ids if (c := all_cases[i].cells.get(n)) and o in (c.outcome, c.reflection)]
            chosen.update(rng.sample(pool, min(per_outcome, len(pool))))
    pool = [i for i in ids if all_cases[i].disagree()]
    chosen.update(rng.sample(pool, min(per_outcome * max(1, len(names)), len(pool))))
    cases = {i: all_cases[i] for i in sorted(chosen)}
    if datasets:
        _attach_images(cases, datasets, thumb, problems)
    order = sorted(cases.values(), key=lambda c: (not c.disagree(), c.id))
    return order, Gallery(names, counts, len(order), len(all_cases), problems), datasets


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px} table{border-collapse:collapse}
.counts td,.counts th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:2;border-bottom:1px solid #ddd}
.filters label{margin-right:12px}
.case{display:flex;gap:12px;border-bottom:1px solid #ddd;padding:10px 0;align-items:flex-start}
.meta{width:170px;flex:none;font-size:12px;word-break:break-all}
.cell{width:270px;flex:none;font-size:12px}
.pic{position:relative;width:256px;height:256px;background:#eee;display:flex;align-items:center;justify-content:center}
.pic img{display:block}
.frame{position:absolute;inset:0} .frame svg{position:absolute;inset:0;width:100%;height:100%}
.tag{position:absolute;font-size:10px;padding:0 2px;color:#fff;white-space:nowrap}
.badge{display:inline-block;padding:0 5px;border-radius:3px;margin:2px 2px 0 0;color:#fff;font-size:11px}
.TP,.TN,.correct{background:#2a9d5c} .FP,.FN,.erroneous{background:#d63b30} .ineffective{background:#888}
.disagree{background:#7b4fd6}
.problems{background:#fff3cd;border:1px solid #e0c36b;padding:6px 10px;margin:8px 0}
details pre{white-space:pre-wrap;max-height:220px;overflow:auto;background:#f0f0f0;padding:4px;margin:2px 0}
.missing{color:#a00;padding:8px;font-size:12px}
.legend span{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 10px}
"""

_JS = """
const IMAGES = JSON.parse(document.getElementById('images').textContent);
for (const img of document.querySelectorAll('img[data-img]')) img.src = IMAGES[img.dataset.img];
function applyFilters() {
  const v = id => document.getElementById(id).value;
  const model = v('f-model'), outcome = v('f-outcome'), scene = v('f-scene'), cat = v('f-category');
  let shown = 0;
  for (const row of document.querySelectorAll('.case')) {
    const tags = row.dataset.tags.split(' ');
    let ok = (!scene || row.dataset.scene === scene) && (!cat || row.dataset.category === cat);
    if (ok && outcome) {
      if (outcome === 'disagree') ok = tags.includes('disagree');
      else ok = tags.some(t => { const [m, o] = t.split(':'); return o === outcome && (!model || m === model); });
    }
    row.style.display = ok ? '' : 'none';
    if (ok) shown++;
    for (const cell of row.querySelectorAll('.cell'))
      cell.style.display = (!model || cell.dataset.model === model) ? '' : 'none';
  }
  document.getElementById('shown').textContent = shown;
}
for (const s of document.querySelectorAll('.filters select')) s.addEventListener('change', applyFilters);
applyFilters();
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _boxes_svg(true_boxes: list[list[float]], pred: list[list[float]], types: list[str]) -> str:
    def rects(boxes: list[list[float]], color: str, dash: str) -> str:
        return "".join(
            f'<rect x="{100 * x1:.2f}" y="{100 * y1:.2f}" width="{100 * max(0.0, x2 - x1):.2f}" '
            f'height="{100 * max(0.0, y2 - y1):.2f}" fill="none" stroke="{color}" stroke-width="2" '
            f'stroke-dasharray="{dash}" vector-effect="non-scaling-stroke"/>'
            for x1, y1, x2, y2 in boxes
        )

    svg = (f'<svg viewBox="0 0 100 100" preserveAspectRatio="none">{rects(true_boxes, TRUE_COLOR, "4 2")}'
           f"{rects(pred, PRED_COLOR, '')}</svg>")  # fmt: skip
    labels = "".join(
        f'<div class="tag" style="left:{100 * b[0]:.1f}%;top:{100 * b[1]:.1f}%;background:{PRED_COLOR}">'
        f"{_e(types[k] if k < len(types) else (types[0] if types else ''))}</div>"
        for k, b in enumerate(pred)
    )
    return svg + labels


def _picture(case: Case, pred: list[list[float]], types: list[str], key: int | None) -> str:
    if key is None:
        return f'<div class="pic"><div class="missing">{_e(case.image_problem or "no image")}</div></div>'
    # the frame takes the image's shape (fit into 256 px): boxes are fractions of the image, not of the square
    w, h = case.image_size
    scale = 256 / max(w, h, 1)
    return (f'<div class="pic"><div style="position:relative;display:inline-block">'
            f'<img data-img="{key}" alt="{_e(case.id)}" style="width:{w * scale:.0f}px;height:{h * scale:.0f}px">'
            f'<div class="frame">{_boxes_svg(case.true_boxes, pred, types)}</div></div></div>')  # fmt: skip


def _cell_html(name: str, case: Case, key: int | None) -> str:
    c = case.cells.get(name)
    if c is None:
        return (
            f'<div class="cell" data-model="{_e(name)}"><b>{_e(name)}</b><div class="missing">no prediction</div></div>'
        )
    badges = f'<span class="badge {c.outcome}">{c.outcome}</span>'
    if c.reflection != "none":
        badges += f'<span class="badge {c.reflection}">reflection: {c.reflection}</span>'
    if c.truncated:
        badges += '<span class="badge ineffective">cut at max_new_tokens</span>'
    first = f" (first: {c.initial})" if c.reflection != "none" else ""
    parts = [
        f'<div class="cell" data-model="{_e(name)}"><b>{_e(name)}</b><br>{badges}',
        _picture(case, c.boxes, c.types, key),
        f"<div>answer: <b>{_e(c.answer or 'unreadable')}</b>{_e(first)}; types: {_e(', '.join(c.types) or '—')}</div>",
    ]
    if c.think:
        parts.append(f"<details><summary>thinking</summary><pre>{_e(c.think)}</pre></details>")
    if c.reflection_text:
        parts.append(f"<details><summary>reflection</summary><pre>{_e(c.reflection_text)}</pre></details>")
    parts.append("</div>")
    return "".join(parts)


def render_html(cases: list[Case], g: Gallery, datasets: list[str], title: str = "Evaluation gallery") -> str:
    """The page: counts, filters, one row per image with every model side by side."""
    images: list[str] = []
    rows = []
    for case in cases:
        key = None
        if case.image is not None:
            key = len(images)
            images.append(case.image)
        truth = "anomalous" if case.anomalous else "normal"
        meta = (f'<div class="meta"><b>{_e(case.id)}</b><br>{_e(case.scene)} · {_e(case.category)}<br>truth: '
                f"<b>{truth}</b>{_e(': ' + ', '.join(case.true_types)) if case.true_types else ''}"
                + ('<br><span class="badge disagree">models disagree</span>' if case.disagree() else "")
                + "</div>")  # fmt: skip
        cells = "".join(_cell_html(n, case, key) for n in g.models)
        rows.append(f'<div class="case" data-scene="{_e(case.scene)}" data-category="{_e(case.category)}" '
                    f'data-tags="{_e(" ".join(case.tags()))}">{meta}{cells}</div>')  # fmt: skip
    head = "".join(f"<th>{_e(LABELS[o])}</th>" for o in (*DETECTION, *REFLECTION))
    body = "".join(f"<tr><th>{_e(n)}</th>" + "".join(f"<td>{g.counts[n][o]}</td>" for o in (*DETECTION, *REFLECTION))
                   + "</tr>" for n in g.models)  # fmt: skip

    def select(ident: str, label: str, options: list[tuple[str, str]]) -> str:
        opts = '<option value="">all</option>' + "".join(
            f'<option value="{_e(v)}">{_e(t)}</option>' for v, t in options
        )
        return f'<label>{label} <select id="{ident}">{opts}</select></label>'

    outcomes = [(o, LABELS[o]) for o in (*DETECTION, *REFLECTION)] + ([("disagree", LABELS["disagree"])]
                                                                       if len(g.models) > 1 else [])  # fmt: skip
    filters = (select("f-model", "model", [(n, n) for n in g.models]) + select("f-outcome", "outcome", outcomes)
               + select("f-scene", "scene", [(s, s) for s in sorted({c.scene for c in cases})])
               + select("f-category", "category", [(s, s) for s in sorted({c.category for c in cases})])
               + f' showing <b id="shown">{len(cases)}</b> of {len(cases)} sampled images')  # fmt: skip
    problems = ""
    if g.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in g.problems[:50])
        more = f"<li>… and {len(g.problems) - 50} more</li>" if len(g.problems) > 50 else ""
        problems = f'<div class="problems" id="problems"><b>Problems with the input</b><ul>{items}{more}</ul></div>'
    legend = (f'<div class="legend">boxes:<span style="border:2px dashed {TRUE_COLOR}"></span>true'
              f'<span style="background:{PRED_COLOR}"></span>predicted (type named)</div>')  # fmt: skip
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>'
        f"<body><h1>{_e(title)}</h1><div>{g.total} images scored on {_e(', '.join(datasets) or 'an unknown dataset')};"
        f" {g.shown} sampled (up to a fixed number per model and outcome; disagreements first). Counts are over all"
        f' images.</div><table class="counts"><tr><th>model</th>{head}</tr>{body}</table>{legend}{problems}'
        f'<div class="filters">{filters}</div><div id="cases">{"".join(rows)}</div>'
        f'<script type="application/json" id="images">{json.dumps(images)}</script><script>{_JS}</script>'
        "</body></html>"
    )


# ------------------------------------------------------------------------------------- contact sheet


def contact_sheet(cases: list[Case], models: list[str], n: int = 8, thumb: int = 200):
    """A PNG-able PIL image of the most telling cases: disagreements, then reflections that changed the
    answer, then errors; one row per image, one column per model, boxes drawn (true green, predicted red)."""
    from PIL import Image, ImageDraw

    def rank(c: Case) -> tuple:
        changed = any(x.reflection in ("correct", "erroneous") for x in c.cells.values())
        wrong = any(x.outcome in ("FP", "FN") for x in c.cells.values())
        return (not c.disagree(), not changed, not wrong, c.id)

    picked = sorted([c for c in cases if c.image is not None], key=rank)[:n]
    head, cap, pad = 22, 30, 6
    cols = len(models)
    sheet = Image.new("RGB", (pad + cols * (thumb + pad), head + max(1, len(picked)) * (thumb + cap + pad)), "white")
    d = ImageDraw.Draw(sheet)
    for j, m in enumerate(models):
        d.text((pad + j * (thumb + pad), 5), m, fill=(0, 0, 0))
    if not picked:
        d.text((pad, head + 10), "no case with an image to show", fill=(160, 0, 0))
    for i, c in enumerate(picked):
        raw = base64.b64decode(c.image.split(",", 1)[1])
        for j, m in enumerate(models):
            x0, y0 = pad + j * (thumb + pad), head + i * (thumb + cap + pad)
            img = Image.open(io.BytesIO(raw)).convert("RGB")
            scale = thumb / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)))
            w, h = img.size
            tile = ImageDraw.Draw(img)
            cell = c.cells.get(m)
            for box in c.true_boxes:
                tile.rectangle([box[0] * w, box[1] * h, box[2] * w, box[3] * h], outline=(25, 195, 125), width=2)
            for box in cell.boxes if cell else []:
                tile.rectangle([box[0] * w, box[1] * h, box[2] * w, box[3] * h], outline=(255, 59, 48), width=2)
            sheet.paste(img, (x0, y0))
            if cell is None:
                text = "no prediction"
            else:
                text = f"{cell.answer or '?'} ({cell.outcome}"
                text += f", refl. {cell.reflection})" if cell.reflection != "none" else ")"
            d.text((x0, y0 + h + 2), text, fill=(0, 0, 0))
            if j == 0:
                d.text((x0, y0 + h + 14), f"{c.id[-24:]} · truth {'yes' if c.anomalous else 'no'}", fill=(90, 90, 90))
    return sheet


def _write(cases: list[Case], g: Gallery, datasets: list[str], page, png, title: str | None) -> None:
    page.write_text(render_html(cases, g, datasets, title or f"Evaluation gallery: {', '.join(g.models)}"), "utf-8")
    contact_sheet(cases, g.models).save(png, format="PNG")


def write_beside(
    evals: list[str], names: list[str], folder, dataset: str | None = None, title: str | None = None
) -> Gallery | None:
    """``gallery.html`` and ``gallery.png`` into a local ``folder`` that its owner publishes (an ``eval run``'s
    or ``reproduce``'s report, staged); None when there is nothing to show."""
    from pathlib import Path

    cases, g, datasets = collect(evals, names, dataset)
    if g.total == 0:
        return None
    _write(cases, g, datasets, Path(folder) / "gallery.html", Path(folder) / "gallery.png", title)
    return g


def write_gallery(
    evals: list[str],
    out: str,
    names: list[str] | None = None,
    dataset: str | None = None,
    sheet: str | None = None,
    per_outcome: int = 12,
    seed: int = 0,
    title: str | None = None,
    overwrite: bool = False,
) -> Gallery:
    """Write the HTML page to ``out`` and the contact sheet to ``sheet`` (default: ``out`` with .png), any
    storage URL, each published only when complete (the output contract)."""
    from m3ad_rl.core.outputs import check_file, publish_file

    sheet = sheet or (out[: -len(".html")] if out.endswith(".html") else out) + ".png"
    inputs = [*evals, *([dataset] if dataset else [])]
    check_file(out, inputs=inputs, overwrite=overwrite, option="--out")
    check_file(sheet, inputs=inputs, overwrite=overwrite, option="--sheet")
    cases, g, datasets = collect(evals, names, dataset, per_outcome, seed)
    if g.total == 0:
        from m3ad_rl.core.errors import DataError

        raise DataError("no prediction to show: " + ("; ".join(g.problems[:3]) or "the predictions are empty"),
                        "check that --eval points at `eval run` outputs of --dataset's images")  # fmt: skip
    with publish_file(out) as page, publish_file(sheet) as png:
        _write(cases, g, datasets, page, png, title)
    return g
