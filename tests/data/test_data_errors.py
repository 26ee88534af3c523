"""The data plane refuses to be silently wrong: atomic dataset writes, readers that check the
manifest, images validated on every write, importers that name the layout they expected, splits
and FT construction that refuse misspelt or conflicting input."""

import io
import json
import re
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from m3ad_rl.cli import main
from m3ad_rl.core import outputs
from m3ad_rl.core.errors import EXIT_DATA, EXIT_SKIPPED, EXIT_USAGE, DataError, UsageError
from m3ad_rl.data import ft, schema, store
from m3ad_rl.data.importers import import_mask_folder, import_mvtec_ad, import_mvtec_loco, import_real_iad, import_visa
from m3ad_rl.data.schema import DefectRecord, Sample
from m3ad_rl.data.store import iter_samples, read_manifest, write_dataset
from m3ad_rl.data.synthetic import SynthConfig, generate


def _png(w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 30)).save(buf, "PNG")
    return buf.getvalue()


def _sample(i: int) -> Sample:
    return Sample(f"s{i}", 40, 30, "test", "wood", "texture", "anomalous",
                  [DefectRecord("scratch", [0.1, 0.2, 0.5, 0.6])], image=_png())  # fmt: skip


def _ids(url: str) -> list[str]:
    return [s.id for s in iter_samples(url, with_images=False)]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("m3ad-rl:")][-1]


@pytest.fixture(params=["memory", "local", "s3"])
def url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "ds[1]")
        return
    if request.param == "s3":
        yield f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex}/ds"
        return
    name = f"memory://data-errors/{uuid.uuid4().hex}/ds[1]"  # brackets: paths are never glob patterns
    yield name
    store.remove_tree(*fsspec.core.url_to_fs(name))


# -- atomic writes ----------------------------------------------------------------------------


def test_an_interrupted_rewrite_leaves_the_old_dataset_whole(url):
    write_dataset(url, [_sample(i) for i in range(6)], shard_rows=2, row_group_size=2)

    def new_rows():
        yield from (_sample(100 + i) for i in range(9))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(url, new_rows(), shard_rows=2, row_group_size=2, overwrite=True)
    assert _ids(url) == [f"s{i}" for i in range(6)]  # not the new rows under the old manifest
    fs, root = fsspec.core.url_to_fs(url)
    parts = [f"part-0000{i}.parquet" for i in range(3)]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == [".m3ad-output.json", "manifest.json",
                                                                                *parts]  # fmt: skip
    parent = root.rstrip("/").rsplit("/", 1)[0]
    assert not [p for p in fs.ls(parent, detail=False) if ".partial-" in p]  # the staged write is gone


def test_a_crash_while_publishing_is_never_read_as_finished(url, monkeypatch):
    write_dataset(url, [_sample(i) for i in range(4)], shard_rows=2)
    fs, _ = fsspec.core.url_to_fs(url)

    def crash(*args, **kwargs):
        raise OSError("storage went away")

    monkeypatch.setattr(outputs, "move_path", crash)  # the first staged shard never arrives
    with pytest.raises(OSError, match="went away"):
        write_dataset(url, [_sample(10 + i) for i in range(4)], shard_rows=2, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"has no manifest\.json: not a dataset, or its writer did not finish"):
        _ids(url)
    write_dataset(url, [_sample(20)], overwrite=True)  # the next write replaces what the crashed one left
    assert _ids(url) == ["s20"]
    assert not [p for p in fs.ls(fsspec.core.url_to_fs(url)[1], detail=False) if ".partial-" in p]


# -- readers check the manifest against storage -------------------------------------------------


def _damage(url: str, how: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    if how == "missing shard":
        fs.rm_file(f"{root}/part-00001.parquet")
    elif how == "extra shard":
        fs.pipe(f"{root}/part-00007.parquet", fs.cat_file(f"{root}/part-00000.parquet"))
    elif how == "row count":
        m = json.loads(fs.cat_file(f"{root}/manifest.json"))
        m["shards"][0]["rows"], m["rows"] = 3, m["rows"] + 1
        fs.pipe(f"{root}/manifest.json", json.dumps(m).encode())
    elif how == "damaged shard":
        data = bytearray(fs.cat_file(f"{root}/part-00001.parquet"))
        data[-40:] = b"\0" * 40  # the footer
        fs.pipe(f"{root}/part-00001.parquet", bytes(data))
    elif how == "damaged manifest":
        fs.pipe(f"{root}/manifest.json", b'{"rows": 4, "shards": [')


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing shard", "disagree with manifest.json (missing part-00001.parquet)"),
        ("extra shard", "disagree with manifest.json (not in the manifest part-00007.parquet)"),
        ("row count", "shard part-00000.parquet holds 2 rows, manifest.json says 3"),
        ("damaged shard", "shard part-00001.parquet is not a readable Parquet file"),
        ("damaged manifest", "manifest.json is damaged"),
    ],
)
def test_readers_refuse_a_dataset_that_disagrees_with_its_manifest(how, message, url, capsys):
    write_dataset(url, [_sample(i) for i in range(4)], shard_rows=2)
    _damage(url, how)
    with pytest.raises(DataError, match=f"dataset {re.escape(url)}: ") as e:
        _ids(url)
    assert message in str(e.value)
    assert main(["data", "stats", "--input", url]) == EXIT_DATA
    assert message in _error_line(capsys)


# -- images are validated on every write; decode errors name the sample --------------------------


def test_decode_image_names_the_sample():
    assert schema.decode_image("a", _png()).mode == "RGB"
    for data in (b"not an image", _png()[:60]):
        with pytest.raises(DataError, match="sample 'x/7': image does not decode"):
            schema.decode_image("x/7", data)
    s = Sample("u1", 40, 30, "test", "wood", "texture", "normal", image_uri="/nonexistent/img.png")
    with pytest.raises(DataError, match=r"sample 'u1': image /nonexistent/img\.png cannot be read"):
        s.load_image()


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    """A dataset written elsewhere (no image check) with one undecodable image; its id."""
    url = str(tmp_path_factory.mktemp("corrupt") / "ds")
    samples = list(generate(SynthConfig(n=16, seed=0, size=64)))
    samples[3].image = samples[3].image[:200]  # truncated
    write_dataset(url, samples, check_images=False)
    return url, samples[3].id


def test_split_rejects_a_corrupt_image_by_id(corrupt, tmp_path, capsys):
    url, bad = corrupt
    assert main(["data", "split", "--input", url, "--out", str(tmp_path / "split")]) == EXIT_SKIPPED
    assert f"rejected sample {bad!r}: image does not decode" in capsys.readouterr().err
    written = _ids(str(tmp_path / "split/ft")) + _ids(str(tmp_path / "split/bench"))
    assert bad not in written and len(written) == 15


def test_build_ft_leaves_a_corrupt_image_out_of_every_set(corrupt, tmp_path, capsys):
    url, bad = corrupt
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "answer": "yes"}) + "\n" for i in _ids(url)))
    out = tmp_path / "ft"
    assert main(["data", "build-ft", "--input", url, "--predictions", str(preds), "--out", str(out)]) == EXIT_SKIPPED
    assert f"skipped {bad}: image does not decode" in capsys.readouterr().err
    assert bad not in _ids(str(out / "samples"))
    assert bad not in pq.read_table(out / "sft.parquet", columns=["id"]).column("id").to_pylist()
    assert pq.read_metadata(out / "rl.parquet").num_rows == 15


def test_stats_check_images_and_gallery_name_the_corrupt_sample(corrupt, tmp_path, capsys):
    url, bad = corrupt
    assert main(["data", "stats", "--input", url, "--check-images"]) == EXIT_DATA
    assert f"sample {bad!r}: image does not decode" in capsys.readouterr().err
    rc = main(["data", "gallery", "--input", url, "--out", str(tmp_path / "g.png"), "--n", "16"])
    assert rc == EXIT_SKIPPED and f"left out: sample {bad!r}: image does not decode" in capsys.readouterr().err
    assert Image.open(tmp_path / "g.png").size[0] > 0


# -- importers ----------------------------------------------------------------------------------

IMPORTERS = {
    "mvtec-ad": import_mvtec_ad,
    "mvtec-loco": import_mvtec_loco,
    "visa": import_visa,
    "real-iad": import_real_iad,
    "folder": lambda root, **kw: import_mask_folder(root, scene="workpiece", **kw),
}


def _image(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)


def _mask(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[size[1] // 4 : size[1] // 2, size[0] // 8 : size[0] // 4] = 255
    Image.fromarray(arr, "L").save(path)


@pytest.mark.parametrize("kind", IMPORTERS)
def test_an_empty_or_wrongly_laid_out_root_names_the_expected_layout(kind, tmp_path):
    (tmp_path / "empty").mkdir()
    _image(tmp_path / "flat/000.png")  # a folder of images, in no dataset's layout
    (tmp_path / "flat/notes").mkdir()
    for root in ("empty", "flat"):
        with pytest.raises(DataError, match=f"is not laid out as {kind} .*; expected <root>/"):
            list(IMPORTERS[kind](tmp_path / root))
    with pytest.raises(UsageError, match="does not exist"):
        IMPORTERS[kind](tmp_path / "missing")


def test_a_layout_with_nothing_importable_is_an_error(tmp_path):
    (tmp_path / "mvtec/bottle/test/good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        list(import_mvtec_ad(tmp_path / "mvtec"))
    _image(tmp_path / "mvtec/bottle/test/crack/000.png")  # no mask: skipped
    with pytest.raises(DataError, match="no image could be imported, 1 skipped"):
        list(import_mvtec_ad(tmp_path / "mvtec"))


def test_cli_import_of_an_empty_root_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    write_dataset(str(out), [_sample(0)])
    rc = main(["data", "import", "--dataset", "visa", "--root", str(tmp_path / "empty"), "--out", str(out)])
    assert rc == EXIT_DATA and "expected <root>/<category>/image_anno.csv" in _error_line(capsys)
    assert _ids(str(out)) == ["s0"]  # the dataset already there is untouched


def test_a_mask_of_another_size_is_an_error_naming_the_image(tmp_path):
    root = tmp_path / "mvtec"
    _image(root / "bottle/test/broken_large/000.png")
    _mask(root / "bottle/ground_truth/broken_large/000_mask.png", size=(32, 24))
    _image(root / "bottle/test/broken_large/001.png")
    _mask(root / "bottle/ground_truth/broken_large/001_mask.png")
    from m3ad_rl.data.importers import ImportReport

    report = ImportReport(quiet=True)
    got = [s.id for s in import_mvtec_ad(root, report=report)]
    assert got == ["mvtec-ad/bottle/test/broken_large/001"]
    (path, why), = report.skipped  # fmt: skip
    assert path.endswith("broken_large/000.png") and "is 32x24 pixels, the image 64x48" in why
    folder = tmp_path / "line"
    _image(folder / "images/a.png")
    _mask(folder / "masks/a.png", size=(64, 64))
    report = ImportReport(quiet=True)
    with pytest.raises(DataError, match="1 skipped"):
        list(import_mask_folder(folder, scene="workpiece", defect_type="dent", report=report))
    assert "is 64x64 pixels, the image 64x48" in report.skipped[0][1]


# -- data split ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("split") / "synth")
    write_dataset(url, generate(SynthConfig(n=24, seed=0, size=64)))
    return url


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["bench.texure=[wood]"], "unknown scene(s) ['texure']; the scenes are texture, workpiece"),
        (["ft.texture=[woood]"], "unknown categories ['woood'] in ft"),
        (["bench.texture=[wood, woood]"], "unknown categories ['woood'] in bench"),
    ],
)
def test_split_refuses_unknown_scenes_and_categories(settings, message, synth, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["data", "split", "--input", synth, "--out", str(out), "--set", *settings]) == EXIT_USAGE
    assert message in _error_line(capsys)
    assert not out.exists()


def test_split_refuses_a_scene_the_input_does_not_have(tmp_path, capsys):
    url = str(tmp_path / "tex")
    write_dataset(url, generate(SynthConfig(n=8, seed=0, size=64, scenes=("texture",))))
    assert main(["data", "split", "--input", url, "--out", str(tmp_path / "s"), "--set", "bench.logical=[kit]"]) == 2
    assert "bench names scene(s) ['logical'] that the input does not have; its scenes: texture" in _error_line(capsys)


def test_split_refuses_an_input_twice_and_ids_twice(synth, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["data", "split", "--input", synth, f"{synth}/", "--out", str(out)]) == EXIT_USAGE
    assert "is given twice" in _error_line(capsys)
    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    assert main(["data", "split", "--input", synth, str(copy), "--out", str(out)]) == EXIT_DATA
    line = _error_line(capsys)
    assert "ids found more than once in the inputs: 'synthetic/0/0000000'" in line and "and 19 more" in line
    assert not out.exists()


# -- data build-ft predictions --------------------------------------------------------------------


def _predictions(tmp_path, lines) -> str:
    path = tmp_path / "preds.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


def test_predictions_are_read_strictly(tmp_path):
    path = _predictions(tmp_path, [{"id": "a", "answer": " Yes "}, {"id": "b", "response": "garbled"},
                                   {"id": "a", "answer": "yes"}])  # fmt: skip
    assert ft.read_predictions(path) == {"a": "yes", "b": None}  # an identical repeat is harmless
    cases = [
        ([{"id": "a", "answer": "yes"}, {"id": "b", "answer": "no"}, {"id": "a", "answer": "no"}],
         r"conflicting predictions: 'a' \(lines 1: yes, 3: no\)"),
        ([{"id": "a", "answer": "yes"}, {"id": "b", "answer": 1}], r"preds.jsonl:2: answer 1 is not \"yes\" or \"no\""),
        ([{"id": "a", "answer": "maybe"}], r"preds.jsonl:1: answer 'maybe' is not"),
        ([{"id": "a"}], r"preds.jsonl:1: expected an answer \(yes/no\) or a response"),
        (['{"id": "a", "answer": "yes"', {"id": "b", "answer": "no"}], r"preds.jsonl:1: not valid JSON"),
        ([{"id": 3, "answer": "no"}], r"preds.jsonl:1: expected a JSON object with a string id"),
    ]  # fmt: skip
    for lines, message in cases:
        with pytest.raises(DataError, match=message):
            ft.read_predictions(_predictions(tmp_path, lines))


def test_build_ft_with_conflicting_predictions_writes_nothing(synth, tmp_path, capsys):
    ids = _ids(synth)
    preds = _predictions(tmp_path, [{"id": i, "answer": "yes"} for i in ids] + [{"id": ids[0], "answer": "no"}])
    out = tmp_path / "ft"
    assert main(["data", "build-ft", "--input", synth, "--predictions", preds, "--out", str(out)]) == EXIT_DATA
    assert f"'{ids[0]}' (lines 1: yes, {len(ids) + 1}: no)" in _error_line(capsys)
    assert not out.exists()


def test_an_interrupted_build_ft_leaves_no_stale_sets(synth, tmp_path, monkeypatch, capsys):
    preds = _predictions(tmp_path, [{"id": i, "answer": "no"} for i in _ids(synth)])
    argv = ["data", "build-ft", "--input", synth, "--predictions", preds, "--out", str(tmp_path / "ft")]
    assert main(argv) == 0
    real = ft.write_parquet

    def interrupted(url, rows, schema, **kw):
        if url.endswith("rl.parquet"):
            raise KeyboardInterrupt
        return real(url, rows, schema, **kw)

    before = {p.name: p.read_bytes() for p in (tmp_path / "ft").iterdir() if p.is_file()}
    monkeypatch.setattr(ft, "write_parquet", interrupted)
    assert main([*argv, "--overwrite"]) == 130
    # the earlier output stays whole and consistent (its samples beside its own sets), nothing half-written
    assert {p.name: p.read_bytes() for p in (tmp_path / "ft").iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    capsys.readouterr()
    assert read_manifest(str(tmp_path / "ft/samples"))["rows"] == 24
