"""The prediction gallery (issue 24): outcomes counted as SPEC §4/§5 say, disagreements first, bad input
reported rather than fatal, a page that stays small at 10,000 images, and filters that work in a real
headless Chromium (driven over the DevTools protocol) with no external request."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from m3ad_rl.cli import main
from m3ad_rl.core.output_format import render
from m3ad_rl.data.schema import DefectRecord, Sample
from m3ad_rl.data.store import write_dataset

BOX = [0.1, 0.2, 0.5, 0.6]


def _png(seed: int, size: int = 48) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _dataset(url: str, n: int, size: int = 48, broken: tuple[int, ...] = ()) -> None:
    """Even ids anomalous (a scratch), odd ones normal; scenes alternate; ``broken`` ids point at no image."""
    samples = []
    for i in range(n):
        anomalous = i % 2 == 0
        image = None if i in broken else _png(i, size)
        uri = "file:///nonexistent/m3ad-gallery.png" if i in broken else None
        samples.append(Sample(
            f"img{i:05d}", size, size, "test", ["wood", "screw"][i % 4 // 2], ["texture", "workpiece"][i % 4 // 2],
            "anomalous" if anomalous else "normal", [DefectRecord("scratch", BOX)] if anomalous else [],
            image=image, image_uri=uri,
        ))  # fmt: skip
    write_dataset(url, samples, quiet=True)


def _response(answer: str, initial: str | None = None) -> str:
    if answer == "yes":
        return render(think="I see a mark.", answer="yes", types=["scratch"], boxes=[[0.2, 0.2, 0.6, 0.7]],
                      reflection="Looking again." if initial else None, initial=initial)  # fmt: skip
    return render(think="All clean.", answer="no", reflection="Looking again." if initial else None, initial=initial)


def _predictions(folder: Path, dataset: str, answers: dict[str, tuple[str, str | None]], n: int) -> None:
    """An `eval run`-shaped folder: predictions.jsonl + run.json naming the dataset."""
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        sid = f"img{i:05d}"
        answer, initial = answers.get(sid, ("yes" if i % 2 == 0 else "no", None))
        gt = {"label": "anomalous", "defects": [{"type": "scratch", "box": BOX}]} if i % 2 == 0 else {
            "label": "normal", "defects": []}  # fmt: skip
        scene = ["texture", "workpiece"][i % 4 // 2]
        lines.append(json.dumps({"id": sid, "scene": scene, "source": "test", "response": _response(answer, initial),
                                 "ground_truth": gt, "truncated": False}))  # fmt: skip
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "run.json").write_text(json.dumps({"model": str(folder), "dataset": dataset}))


@pytest.fixture
def evals(tmp_path):
    """Two models on 12 images. base: right everywhere except img00000 (FN) and img00001 (FP).
    rcrl: img00000 fixed by a reflection (correct), img00002 broken by one (erroneous), img00004 reflected
    without effect (ineffective), img00001 still FP."""
    data = str(tmp_path / "data")
    _dataset(data, 12)
    _predictions(tmp_path / "base", data, {"img00000": ("no", None), "img00001": ("yes", None)}, 12)
    _predictions(tmp_path / "rcrl", data, {"img00000": ("yes", "no"), "img00001": ("yes", None),
                                           "img00002": ("no", "yes"), "img00004": ("yes", "yes")}, 12)  # fmt: skip
    return tmp_path


def test_counts_outcomes_and_orders_disagreements_first(evals):
    from m3ad_rl.eval.gallery import collect

    cases, g, _ = collect([str(evals / "base"), str(evals / "rcrl")], per_outcome=50)
    assert g.models == ["base", "rcrl"] and g.total == 12 and not g.problems
    assert g.counts["base"] == {"TP": 5, "FP": 1, "TN": 5, "FN": 1, "correct": 0, "erroneous": 0, "ineffective": 0}
    assert g.counts["rcrl"] == {"TP": 5, "FP": 1, "TN": 5, "FN": 1, "correct": 1, "erroneous": 1, "ineffective": 1}
    # base and rcrl answer differently on img00000 and img00002 only: those rows come first
    assert [c.id for c in cases[:2]] == ["img00000", "img00002"] and not cases[2].disagree()
    first = cases[0]
    assert first.cells["rcrl"].reflection == "correct" and first.cells["base"].outcome == "FN"
    assert first.image and first.image.startswith("data:image/jpeg;base64,") and first.true_boxes == [BOX]


def test_cli_writes_page_and_sheet_and_reports_bad_input(tmp_path, capsys):
    data = str(tmp_path / "data")
    _dataset(data, 8, broken=(3,))
    _predictions(tmp_path / "m", data, {}, 8)
    with open(tmp_path / "m" / "predictions.jsonl", "a") as f:  # an image the dataset does not hold, a bad line
        f.write(json.dumps({"id": "ghost", "scene": "texture", "response": "<answer>no</answer>",
                            "ground_truth": {"label": "normal", "defects": []}}) + "\n{not json\n")  # fmt: skip
    out = tmp_path / "site" / "g.html"
    rc = main(["eval", "gallery", "--eval", str(tmp_path / "m"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err  # done, with problems: EXIT_SKIPPED
    assert "ghost" in err and "img00003" in err and "line 10" in err
    page = out.read_text()
    assert 'id="problems"' in page and "ghost" in page and "img00003" in page
    assert (tmp_path / "site" / "g.png").stat().st_size > 2000
    # the same again refuses to replace the page without --overwrite, and says so in one line
    assert main(["eval", "gallery", "--eval", str(tmp_path / "m"), "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    # predictions of another dataset entirely: an error, nothing written
    other = tmp_path / "other"
    _dataset(str(tmp_path / "d2"), 2)
    _predictions(other, str(tmp_path / "d2"), {}, 2)
    (other / "predictions.jsonl").write_text(json.dumps({"id": "x", "scene": "texture", "response": "",
                                                         "ground_truth": {"label": "normal"}}) + "\n")  # fmt: skip
    assert main(["eval", "gallery", "--eval", str(other), "--out", str(tmp_path / "none.html")]) == 5  # data error
    assert "no prediction to show" in capsys.readouterr().err and not (tmp_path / "none.html").exists()


def test_ten_thousand_images_make_a_small_page(tmp_path):
    """Every prediction counted, only the sampled cases embedded (speed: bench/bench_gallery.py)."""
    from m3ad_rl.eval.gallery import write_gallery

    n = 10_000
    data = str(tmp_path / "data")
    _dataset(data, n, size=16)
    wrong = {f"img{i:05d}": ("no", None) for i in range(0, n, 10)}  # every 5th anomalous image missed
    _predictions(tmp_path / "a", data, wrong, n)
    _predictions(tmp_path / "b", data, {}, n)
    g = write_gallery([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "g.html"), per_outcome=12)
    assert g.total == n and g.counts["a"]["FN"] == n // 10 and g.counts["b"]["TP"] == n // 2
    assert g.shown <= 12 * 4 * 2 + 24 and (tmp_path / "g.html").stat().st_size < 2_000_000


# ----------------------------------------------------------------------------- a real browser


def test_filters_work_in_headless_chromium_with_no_external_request(evals, tmp_path):
    from m3ad_rl.eval.gallery import write_gallery

    out = tmp_path / "page" / "gallery.html"
    write_gallery([str(evals / "base"), str(evals / "rcrl")], str(out), per_outcome=50)
    from tests.browser import Page, chromium

    page = Page(chromium(), tmp_path / "profile")
    try:
        page.open(out)
        visible = "[...document.querySelectorAll('.case')].filter(r => r.style.display !== 'none').length"
        assert page.js(visible) == 12
        assert page.js("[...document.images].every(i => i.complete && i.naturalWidth > 0)")  # thumbnails decoded

        def choose(select: str, value: str) -> int:
            page.js(f"(() => {{ const s = document.getElementById('{select}'); s.value = '{value}';"
                    "s.dispatchEvent(new Event('change')) })()")  # fmt: skip
            return page.js(visible)

        assert choose("f-outcome", "disagree") == 2
        assert page.js("document.getElementById('shown').textContent") == "2"
        assert choose("f-outcome", "erroneous") == 1  # rcrl's broken img00002
        assert choose("f-model", "base") == 0  # base never reflects
        assert page.js("[...document.querySelectorAll('.cell')].filter(c => c.style.display !== 'none')"
                       ".every(c => c.dataset.model === 'base')")  # fmt: skip
        choose("f-outcome", "")
        assert choose("f-scene", "workpiece") == 6 and choose("f-category", "wood") == 0
        choose("f-scene", "")
        assert choose("f-category", "wood") == 6
        page.js("['f-model','f-category'].forEach(i => {const s = document.getElementById(i); s.value = '';"
                "s.dispatchEvent(new Event('change'))})")  # fmt: skip
        assert page.js(visible) == 12
        # the reasoning is collapsed until clicked
        assert page.js("document.querySelector('details').open") is False
        page.js("document.querySelector('details summary').click()")
        assert page.js("document.querySelector('details').open") is True
        shot = page.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
        if keep := os.environ.get("M3AD_KEEP_SCREENSHOT"):
            Path(keep).write_bytes(shot)
        urls = [e["params"]["request"]["url"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls  # nothing from the network
    finally:
        page.close()
