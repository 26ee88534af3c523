"""The synthetic scene generator: determinism, coverage, and boxes that hold what was painted."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from m3ad_rl.core.taxonomy import default_taxonomy
from m3ad_rl.data import synth_surface as sf
from m3ad_rl.data.schema import validate
from m3ad_rl.data.synth_backgrounds import wood
from m3ad_rl.data.synth_objects import Item, cut, draw_item
from m3ad_rl.data.synthetic import CATEGORIES, SynthConfig, defect_types, generate, generate_parallel


def test_scenes_categories_and_types_cover_the_spec():
    per_scene = defaultdict(set)
    for c in CATEGORIES.values():
        per_scene[c.scene].add(c.name)
    assert set(per_scene) == {"texture", "workpiece", "electronic", "logical"}
    assert all(len(v) >= 3 for v in per_scene.values())
    tax = default_taxonomy()
    types = defect_types()
    assert len(types) >= 24
    assert all(tax.lookup(t) is not None and tax.lookup(t).name == t for t in types)


def test_same_seed_same_images_and_any_slice_alone():
    cfg = SynthConfig(n=12, seed=3, size=128)
    a, b = list(generate(cfg)), list(generate(cfg))
    assert [s.to_row() for s in a] == [s.to_row() for s in b]
    assert [s.to_row() for s in generate(cfg, 5, 9)] == [s.to_row() for s in a[5:9]]
    assert [s.to_row() for s in generate_parallel(cfg, workers=2, chunk=5)] == [s.to_row() for s in a]
    other = list(generate(SynthConfig(n=12, seed=4, size=128)))
    assert [s.image for s in other] != [s.image for s in a]


def test_samples_are_valid_balanced_and_varied():
    samples = list(generate(SynthConfig(n=300, seed=0, size=128, anomaly_ratio=0.4)))
    assert all(validate(s) == [] for s in samples)
    labels = Counter(s.label for s in samples)
    assert 0.3 < labels["anomalous"] / 300 < 0.5
    assert len({d.type for s in samples for d in s.defects}) >= 24
    assert len({s.category for s in samples}) == len(CATEGORIES)
    areas = [(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]) for s in samples for d in s.defects]
    assert min(areas) < 0.005 and max(areas) > 0.05  # small and large defects


def test_normal_and_anomalous_are_not_separable_by_brightness():
    samples = list(generate(SynthConfig(n=200, seed=1, size=128, categories=("wood",))))
    mean = {
        k: [float(np.asarray(s.load_image()).mean()) for s in samples if s.label == k] for k in ("normal", "anomalous")
    }
    assert abs(np.mean(mean["normal"]) - np.mean(mean["anomalous"])) < np.std(mean["normal"])


@pytest.mark.parametrize("name", sorted(sf.SURFACE_PAINTERS))
def test_each_painter_changes_pixels_only_inside_its_box(name):
    rng = np.random.default_rng(0)
    for trial in range(3):
        bg = wood(rng, 160)
        img = bg.copy()
        x1, y1, x2, y2 = sf.SURFACE_PAINTERS[name](img, rng, (80, 80), 12 + 8 * trial)
        changed = np.abs(img - bg).max(axis=2) > 1e-4
        assert changed.any(), f"{name} painted nothing"
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x1 - 1 and xs.max() < x2 + 1 and ys.min() >= y1 - 1 and ys.max() < y2 + 1, name


@pytest.mark.parametrize("kind", ["broken", "breakage", "gap", "fragmentation"])
def test_cuts_remove_material_inside_the_box(kind):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    bg = np.full((200, 200, 3), 0.2, np.float32)
    canvas = Image.fromarray((bg * 255).astype(np.uint8))
    item = Item("plate", 100, 100, 120, 60, 15, (200, 200, 210))
    draw_item(ImageDraw.Draw(canvas), item)
    img = np.asarray(canvas).astype(np.float32) / 255
    before = img.copy()
    x1, y1, x2, y2 = cut(img, item, rng, kind, bg)
    changed = np.abs(img - before).max(axis=2) > 1e-4
    assert changed.sum() > 20
    ys, xs = np.nonzero(changed)
    assert xs.min() >= x1 - 2 and xs.max() < x2 + 2 and ys.min() >= y1 - 2 and ys.max() < y2 + 2


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown categories"):
        list(generate(SynthConfig(n=1, categories=("unicorn",))))


def test_split_modules_keep_the_public_names_of_synthetic():
    """Callers import the catalogue and render names from ``synthetic``, as before the split."""
    from m3ad_rl.data import synthetic

    before_split = "CATEGORIES CUTS ITEM_EDITS KIT_COLORS SURFACE_ON_PARTS TEXTURE_DEFECTS Category PixBox Rng"
    before_split += " SynthConfig categories_for defect_types generate generate_parallel make_sample"
    assert [n for n in before_split.split() if not hasattr(synthetic, n)] == []
    assert synthetic.CATEGORIES["pcb"].scene == "electronic" and "gap" in synthetic.CUTS
