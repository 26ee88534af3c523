"""Dataset importers on small fixture trees: ids, labels, scenes, mapped types, exact boxes, skips."""

import csv
import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from m3ad_rl.core.errors import UsageError
from m3ad_rl.core.taxonomy import default_taxonomy, normalize
from m3ad_rl.data.importers import (
    ImportReport,
    dataset_labels,
    import_mask_folder,
    import_mvtec_ad,
    import_mvtec_loco,
    import_real_iad,
    import_visa,
    masks_to_boxes,
)
from m3ad_rl.data.schema import SCENES
from m3ad_rl.data.store import iter_samples, write_dataset

W, H = 64, 48
# Rectangles (x0, y0, x1, y1), exclusive ends, chosen so the normalised boxes are exact binary fractions.
A, BOX_A = (8, 12, 16, 24), [0.125, 0.25, 0.25, 0.5]
B, BOX_B = (40, 24, 56, 36), [0.625, 0.5, 0.875, 0.75]
SPECK = (60, 2, 61, 3)  # one pixel: below min_pixels


def _image(path, fmt=None, size=(W, H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path, fmt)


def _mask(path, rects=(), value=255, values=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((H, W), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        arr[y0:y1, x0:x1] = values[i] if values else value
    Image.fromarray(arr, "L").save(path)


def _by_id(samples):
    return {s.id: s for s in samples}


def _boxes(sample):
    return [(d.type, d.box) for d in sample.defects]


# -- masks_to_boxes ---------------------------------------------------------------------------


def test_box_edges_are_exclusive_pixel_edges():
    mask = np.zeros((50, 100), np.uint8)
    mask[5:15, 10:20] = 1  # columns 10..19, rows 5..14
    assert masks_to_boxes(mask) == [[0.10, 0.10, 0.20, 0.30]]


def test_two_regions_give_two_boxes_and_specks_are_dropped():
    mask = np.zeros((H, W), np.uint8)
    for x0, y0, x1, y1 in (A, B, SPECK):
        mask[y0:y1, x0:x1] = 255
    assert masks_to_boxes(mask) == [BOX_A, BOX_B]
    assert masks_to_boxes(mask, min_pixels=1, min_area_frac=0) == [
        [60 / W, 2 / H, 61 / W, 3 / H],
        BOX_A,
        BOX_B,
    ]  # raster order
    assert masks_to_boxes(mask, min_area_frac=0.05) == [BOX_B]  # 96 px < 5% of 3072 <= 192 px
    assert masks_to_boxes(np.zeros((H, W))) == []


def test_diagonal_pixels_are_one_region():
    mask = np.eye(6, dtype=np.uint8)
    assert masks_to_boxes(mask, min_pixels=1, min_area_frac=0) == [[0.0, 0.0, 1.0, 1.0]]


# -- MVTec AD ---------------------------------------------------------------------------------


@pytest.fixture
def mvtec(tmp_path):
    root = tmp_path / "mvtec"
    _image(root / "bottle/train/good/000.png")
    _image(root / "bottle/test/good/000.png")
    _image(root / "bottle/test/broken_large/000.png")
    _mask(root / "bottle/ground_truth/broken_large/000_mask.png", [A, B, SPECK])
    _image(root / "bottle/test/contamination/000.png")
    _mask(root / "bottle/ground_truth/contamination/000_mask.png", [SPECK])  # nothing above threshold
    _image(root / "bottle/test/contamination/001.png")
    _mask(root / "bottle/ground_truth/contamination/001_mask.png")  # all zero
    (root / "bottle/test/contamination/002.png").write_bytes(b"not an image at all")
    _mask(root / "bottle/ground_truth/contamination/002_mask.png", [A])
    _image(root / "bottle/test/wobble/000.png")
    _mask(root / "bottle/ground_truth/wobble/000_mask.png", [A])
    _image(root / "bottle/test/contamination/003.png")  # no mask file
    _image(root / "transistor/test/misplaced/000.png")
    _mask(root / "transistor/ground_truth/misplaced/000_mask.png", [B])
    _image(root / "mystery/test/good/000.png")
    (root / "license.txt").write_text("not a category")
    return root


def test_mvtec_ad(mvtec):
    report = ImportReport(quiet=True)
    got = _by_id(import_mvtec_ad(mvtec, report=report))
    assert sorted(got) == [
        "mvtec-ad/bottle/test/broken_large/000",
        "mvtec-ad/bottle/test/good/000",
        "mvtec-ad/bottle/train/good/000",
        "mvtec-ad/transistor/test/misplaced/000",
    ]
    broken = got["mvtec-ad/bottle/test/broken_large/000"]
    assert (broken.label, broken.scene, broken.source, broken.category) == (
        "anomalous",
        "workpiece",
        "mvtec-ad",
        "bottle",
    )
    assert _boxes(broken) == [("broken", BOX_A), ("broken", BOX_B)]
    assert broken.defects[0].level2 == "damage" and broken.defects[0].level1 == "structural anomaly"
    assert (broken.width, broken.height, broken.image) == (W, H, None)
    assert broken.image_uri == str(mvtec / "bottle/test/broken_large/000.png")
    good = got["mvtec-ad/bottle/train/good/000"]
    assert (good.label, good.defects) == ("normal", [])
    transistor = got["mvtec-ad/transistor/test/misplaced/000"]
    assert transistor.scene == "electronic" and _boxes(transistor) == [("displacement", BOX_B)]

    skipped = dict(report.skipped)
    root = str(mvtec)
    assert "no region above" in skipped[f"{root}/bottle/test/contamination/000.png"]
    assert "no region above" in skipped[f"{root}/bottle/test/contamination/001.png"]
    assert "not a decodable image" in skipped[f"{root}/bottle/test/contamination/002.png"]
    assert "mask not found" in skipped[f"{root}/bottle/test/contamination/003.png"]
    assert "unknown defect 'wobble'" in skipped[f"{root}/bottle/test/wobble/000.png"]
    assert "no scene for category 'mystery'" in skipped[f"{root}/mystery"]
    assert len(report.skipped) == 6 and report.imported == 4


def test_overrides_and_stderr_report(mvtec, capsys):
    got = _by_id(
        import_mvtec_ad(
            mvtec, {"mystery": "texture"}, defect_types={"bottle": {"wobble": "warping"}}, min_pixels=1, min_area_frac=0
        )
    )
    assert _boxes(got["mvtec-ad/bottle/test/wobble/000"]) == [("warping", BOX_A)]
    assert got["mvtec-ad/mystery/test/good/000"].scene == "texture"
    assert len(got["mvtec-ad/bottle/test/contamination/000"].defects) == 1  # the speck counts now
    assert "skipped" in capsys.readouterr().err  # no report given: skips go to stderr
    with pytest.raises(TypeError, match="defect_type"):  # a misspelt option is an error
        list(import_mvtec_ad(mvtec, defect_type="dent"))


def test_imported_samples_round_trip_through_the_store(mvtec):
    samples = list(import_mvtec_ad(mvtec, report=ImportReport(quiet=True)))
    rep = write_dataset("memory://importers-roundtrip", samples, quiet=True)
    assert rep.rows == len(samples) == 4 and not rep.rejected
    back = list(iter_samples("memory://importers-roundtrip"))
    assert [b.to_row() for b in back] == [s.to_row() for s in samples]
    assert back[0].load_image().size == (W, H)


def test_import_from_an_fsspec_url(tmp_path):
    fs = fsspec.filesystem("memory")
    local = tmp_path / "x.png"
    _image(local)
    fs.pipe("/mvtec-mem/bottle/test/good/000.png", local.read_bytes())
    (s,) = import_mvtec_ad("memory://mvtec-mem")
    assert s.id == "mvtec-ad/bottle/test/good/000" and s.image_uri.startswith("memory://")
    assert s.load_image().size == (W, H)


# -- MVTec LOCO -------------------------------------------------------------------------------


def test_mvtec_loco(tmp_path):
    root = tmp_path / "loco"
    for split in ("train", "validation", "test"):
        _image(root / f"breakfast_box/{split}/good/000.png")
    _image(root / "breakfast_box/test/logical_anomalies/000.png")
    _mask(root / "breakfast_box/ground_truth/logical_anomalies/000/000.png", [A])
    _mask(root / "breakfast_box/ground_truth/logical_anomalies/000/001.png", [B])
    _image(root / "breakfast_box/test/structural_anomalies/000.png")
    _mask(root / "breakfast_box/ground_truth/structural_anomalies/000/000.png", [(8, 12, 12, 24)])
    _mask(root / "breakfast_box/ground_truth/structural_anomalies/000/001.png", [(12, 12, 16, 24)], value=1)
    _image(root / "breakfast_box/test/logical_anomalies/001.png")  # no ground-truth folder
    report = ImportReport(quiet=True)
    got = _by_id(import_mvtec_loco(root, report=report))
    assert sorted(got) == [
        "mvtec-loco/breakfast_box/test/good/000",
        "mvtec-loco/breakfast_box/test/logical_anomalies/000",
        "mvtec-loco/breakfast_box/test/structural_anomalies/000",
        "mvtec-loco/breakfast_box/train/good/000",
        "mvtec-loco/breakfast_box/validation/good/000",
    ]
    assert {s.scene for s in got.values()} == {"logical"}
    logical = got["mvtec-loco/breakfast_box/test/logical_anomalies/000"]
    assert _boxes(logical) == [("component missing", BOX_A), ("component missing", BOX_B)]
    structural = got["mvtec-loco/breakfast_box/test/structural_anomalies/000"]
    assert _boxes(structural) == [("breakage", BOX_A)]  # two touching masks unioned: one region
    assert report.skipped == [(str(root / "breakfast_box/test/logical_anomalies/001.png"), "no ground-truth mask")]


# -- VisA -------------------------------------------------------------------------------------


def test_visa(tmp_path):
    root = tmp_path / "visa"
    cat = root / "pcb1"
    rows = [("Normal/0000", "normal", None, None)]
    rows += [("Anomaly/000", "bent", [A], [1])]  # id 1 = Bent
    rows += [("Anomaly/001", "scratch,missing", [A, B], [3, 4])]  # ids name each region's type
    rows += [("Anomaly/002", "different colour spot", [B], [255])]  # binarised mask: the label's type
    rows += [("Anomaly/003", "corroded", [A], [255])]  # not in the table: free-text lookup
    rows += [("Anomaly/004", "strange wobble", [A], [255])]  # maps to nothing
    rows += [("Anomaly/005", "bent, scratch", [A, B], [255, 255])]  # which region is which?
    rows += [("Anomaly/006", "other", [A], [255])]  # deliberately unmapped
    rows += [("Anomaly/007", "bent", None, None)]  # anomalous without a mask
    cat.mkdir(parents=True)
    with open(cat / "image_anno.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "label", "mask"])
        for stem, label, rects, values in rows:
            _image(cat / f"Data/Images/{stem}.JPG", "JPEG")
            mask = ""
            if rects:
                mask = f"pcb1/Data/Masks/{stem}.png"
                _mask(root / mask, rects, values=values)
            out.writerow([f"pcb1/Data/Images/{stem}.JPG", label, mask])
    report = ImportReport(quiet=True)
    got = _by_id(import_visa(root, report=report))
    assert sorted(got) == [
        f"visa/pcb1/Data/Images/{s}"
        for s in ("Anomaly/000", "Anomaly/001", "Anomaly/002", "Anomaly/003", "Normal/0000")
    ]
    assert {s.scene for s in got.values()} == {"electronic"}
    assert got["visa/pcb1/Data/Images/Normal/0000"].label == "normal"
    assert _boxes(got["visa/pcb1/Data/Images/Anomaly/000"]) == [("bent", BOX_A)]
    assert _boxes(got["visa/pcb1/Data/Images/Anomaly/001"]) == [("scratch", BOX_A), ("component missing", BOX_B)]
    assert _boxes(got["visa/pcb1/Data/Images/Anomaly/002"]) == [("contamination", BOX_B)]
    assert _boxes(got["visa/pcb1/Data/Images/Anomaly/003"]) == [("corrosion", BOX_A)]
    reasons = {p.rsplit("/", 1)[1]: r for p, r in report.skipped}
    assert "maps to no fine type" in reasons["004.JPG"]
    assert "several types" in reasons["005.JPG"]
    assert "deliberately unmapped" in reasons["006.JPG"]
    assert "no mask" in reasons["007.JPG"] and len(reasons) == 4


# -- Real-IAD ---------------------------------------------------------------------------------


def test_real_iad(tmp_path):
    root = tmp_path / "Real-IAD"
    base = root / "realiad_1024/audiojack"
    entries = {
        "train": [("OK/S0001/audiojack_0001_OK_C1_1.jpg", "OK", None, None)],
        "test": [
            ("OK/S0002/audiojack_0002_OK_C1_1.jpg", "OK", None, None),
            ("NG/HS/S0003/audiojack_0003_NG_C1_1.jpg", "HS", "NG/HS/S0003/audiojack_0003_NG_C1_1.png", [A, B]),
            ("NG/AK/S0004/audiojack_0004_NG_C2_1.jpg", "AK", None, None),  # defect not visible in this view
            ("NG/XX/S0005/audiojack_0005_NG_C1_1.jpg", "XX", "NG/XX/S0005/audiojack_0005_NG_C1_1.png", [A]),
        ],
    }
    doc = {"meta": {"prefix": "audiojack", "normal_class": "OK"}}
    for split, items in entries.items():
        doc[split] = []
        for image, cls, mask, rects in items:
            _image(base / image, "JPEG")
            if mask:
                _mask(base / mask, rects)
            doc[split].append({"category": "audiojack", "anomaly_class": cls, "image_path": image, "mask_path": mask})
    (root / "realiad_jsons/realiad_jsons").mkdir(parents=True)
    (root / "realiad_jsons/realiad_jsons/audiojack.json").write_text(json.dumps(doc))
    report = ImportReport(quiet=True)
    got = _by_id(import_real_iad(root, report=report))
    assert len(got) == 4 and {s.scene for s in got.values()} == {"electronic"}
    ng = got["real-iad/audiojack/NG/HS/S0003/audiojack_0003_NG_C1_1"]
    assert _boxes(ng) == [("scratch", BOX_A), ("scratch", BOX_B)]
    assert got["real-iad/audiojack/NG/AK/S0004/audiojack_0004_NG_C2_1"].label == "normal"
    assert len(report.skipped) == 1 and "unknown defect 'XX'" in report.skipped[0][1]


# -- generic mask folder ----------------------------------------------------------------------


def test_mask_folder(tmp_path):
    root = tmp_path / "line3"
    for name in ("a.png", "b.png", "c.jpg", "d.png", "e.png"):
        _image(root / "images" / name)
    _mask(root / "masks/b.png")  # all zero: normal
    _mask(root / "masks/c.png", [A, B])
    _mask(root / "masks/d.png", [B])
    _mask(root / "masks/e.png", [A])
    (root / "labels.csv").write_text("image,type\nc.jpg,Scratches\ne,banana\n")
    report = ImportReport(quiet=True)
    got = _by_id(import_mask_folder(root, "line-3", scene="workpiece", defect_type="dent", report=report))
    assert sorted(got) == [f"line-3/line3/images/{s}" for s in "abcd"]
    assert got["line-3/line3/images/a"].label == got["line-3/line3/images/b"].label == "normal"
    assert _boxes(got["line-3/line3/images/c"]) == [("scratch", BOX_A), ("scratch", BOX_B)]
    assert _boxes(got["line-3/line3/images/d"]) == [("dent", BOX_B)]
    assert got["line-3/line3/images/d"].source == "line-3" and got["line-3/line3/images/d"].scene == "workpiece"
    assert len(report.skipped) == 1 and "banana" in report.skipped[0][1]
    with pytest.raises(UsageError, match="scene 'kitchen' is not one of texture"):
        import_mask_folder(root, scene="kitchen")


# -- the mapping tables -----------------------------------------------------------------------

MVTEC_DEFECTS = {
    "bottle": "broken_large broken_small contamination",
    "cable": "bent_wire cable_swap combined cut_inner_insulation cut_outer_insulation missing_cable missing_wire "
    "poke_insulation",
    "capsule": "crack faulty_imprint poke scratch squeeze",
    "carpet": "color cut hole metal_contamination thread",
    "grid": "bent broken glue metal_contamination thread",
    "hazelnut": "crack cut hole print",
    "leather": "color cut fold glue poke",
    "metal_nut": "bent color flip scratch",
    "pill": "color combined contamination crack faulty_imprint pill_type scratch",
    "screw": "manipulated_front scratch_head scratch_neck thread_side thread_top",
    "tile": "crack glue_strip gray_stroke oil rough",
    "toothbrush": "defective",
    "transistor": "bent_lead cut_lead damaged_case misplaced",
    "wood": "color combined hole liquid scratch",
    "zipper": "broken_teeth combined fabric_border fabric_interior rough split_teeth squeezed_teeth",
}


def test_every_target_is_a_fine_type_and_every_scene_valid():
    tax = default_taxonomy()
    labels = dataset_labels()
    for dataset in ("mvtec-ad", "mvtec-loco", "visa", "real-iad"):
        spec = labels[dataset]
        assert set(spec["scenes"].values()) <= set(SCENES), dataset
        for category, names in spec["defects"].items():
            assert category == "*" or category in spec["scenes"], (dataset, category)
            for name, target in names.items():
                if target is not None:
                    node = tax.lookup(target)
                    assert node is not None and node.is_fine and node.name == target, (dataset, name, target)


def test_tables_cover_mvtec_and_visa_vocabularies():
    labels = dataset_labels()
    for category, names in MVTEC_DEFECTS.items():
        assert set(names.split()) == set(labels["mvtec-ad"]["defects"][category]), category
    visa = {normalize(k) for k in labels["visa"]["defects"]["*"]}
    for category, ids in labels["visa"]["mask_ids"].items():
        assert category in labels["visa"]["scenes"]
        assert {normalize(v) for v in ids.values()} <= visa, category


def test_cli_import_writes_a_dataset_and_reports_skips(mvtec, tmp_path, capsys):
    from m3ad_rl.cli import EXIT_SKIPPED, main
    from m3ad_rl.data.store import read_manifest

    out = str(tmp_path / "imported")
    rc = main(["data", "import", "--dataset", "mvtec-ad", "--root", str(mvtec), "--out", out, "--embed-images"])
    imported = list(iter_samples(out))
    assert imported and all(s.image is not None and s.image_uri is None for s in imported)
    assert read_manifest(out)["rows"] == len(imported)
    assert rc == EXIT_SKIPPED
    err = capsys.readouterr().err
    assert "skipped" in err and "002.png" in err  # the file that is not an image
    assert "no scene for category 'mystery'; give it one with --category-scene mystery=<scene>" in err


def test_cli_import_options_reach_the_importers(mvtec, tmp_path, capsys):
    """``--category-scene`` (public datasets) and ``--defect-type`` (folder) are the library's options."""
    from m3ad_rl.cli import EXIT_DATA, main

    out = str(tmp_path / "scened")
    main(["data", "import", "--dataset", "mvtec-ad", "--root", str(mvtec), "--out", out,
          "--category-scene", "mystery=texture", "transistor=workpiece"])  # fmt: skip
    got = _by_id(iter_samples(out, with_images=False))
    assert got["mvtec-ad/mystery/test/good/000"].scene == "texture"
    assert got["mvtec-ad/transistor/test/misplaced/000"].scene == "workpiece"  # the table said electronic

    root = tmp_path / "line3"
    _image(root / "images/a.png")
    _mask(root / "masks/a.png", [A])  # anomalous, and no labels.csv
    args = ["data", "import", "--dataset", "folder", "--root", str(root), "--scene", "workpiece", "--category", "plate"]
    assert main([*args, "--out", str(tmp_path / "typed"), "--defect-type", "dent"]) == 0
    assert [_boxes(s) for s in iter_samples(str(tmp_path / "typed"), with_images=False)] == [[("dent", BOX_A)]]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "untyped")]) == EXIT_DATA  # without it the one image has no type
    assert "no defect type (labels.csv, or --defect-type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--category-scene", "plate=kitchen"])
    assert "scene 'kitchen' is not one of texture" in capsys.readouterr().err


# -- import_dataset: the library call behind `data import` ------------------------------------


def test_import_dataset_writes_and_reports(mvtec, tmp_path, capsys):
    from m3ad_rl.data.importers import import_dataset

    out = str(tmp_path / "imported")
    res = import_dataset("mvtec-ad", str(mvtec), out, embed_images=True, progress=False)
    back = list(iter_samples(out))
    assert res.written.rows == len(back) == res.imported == 4 and res.written.rejected == []
    assert len(res.skipped) == 6 and any("002.png" in path for path, _ in res.skipped)
    assert all(s.image is not None and s.image_uri is None and s.source == "mvtec-ad" for s in back)
    assert "skipped" in capsys.readouterr().err  # skips are echoed as they happen; the summary is the caller's

    linked = str(tmp_path / "linked")  # the CLI passes its --source default ("custom"): a folder's option only
    import_dataset("mvtec-ad", str(mvtec), linked, source="custom", scene="texture", category="x", progress=False)
    linked_back = list(iter_samples(linked, with_images=False))
    assert {s.source for s in linked_back} == {"mvtec-ad"} and all(s.image_uri for s in linked_back)


def test_import_dataset_folder_and_refusals(tmp_path):
    from m3ad_rl.core.registry import UnknownName
    from m3ad_rl.data.importers import import_dataset

    root = tmp_path / "line3"
    _image(root / "images/a.png")
    _image(root / "images/b.png")
    _mask(root / "masks/b.png", [A])
    (root / "labels.csv").write_text("image,type\nb.png,dent\n")
    out = str(tmp_path / "out")
    res = import_dataset("folder", str(root), out, scene="workpiece", category="plate", progress=False)
    got = _by_id(iter_samples(out, with_images=False))
    assert res.written.rows == 2 and res.skipped == []
    assert sorted(got) == ["custom/plate/images/a", "custom/plate/images/b"]
    b = got["custom/plate/images/b"]
    assert _boxes(b) == [("dent", BOX_A)] and b.scene == "workpiece"

    with pytest.raises(UnknownName, match=r"unknown dataset 'kolektor'; choose one of: .*mvtec-ad"):
        import_dataset("kolektor", str(root), str(tmp_path / "k"))
    with pytest.raises(UsageError, match="needs --scene and --category"):
        import_dataset("folder", str(root), str(tmp_path / "f"), scene="workpiece")
    with pytest.raises(UsageError, match="would write over what it reads"):
        import_dataset("folder", str(root), str(root / "out"), scene="workpiece", category="plate")
    assert not (tmp_path / "f").exists() and not (root / "out").exists()  # refused before anything was written
