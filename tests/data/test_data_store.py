"""Schema, validation and Parquet storage on fsspec URLs: round trips, rejections, streaming."""

import io
import json

import fsspec
import pytest
from PIL import Image

from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.data.schema import DefectRecord, Sample, validate
from m3ad_rl.data.store import DatasetWriter, iter_batches, iter_samples, read_manifest, write_dataset
from m3ad_rl.data.synthetic import SynthConfig, generate


def _png(w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 30)).save(buf, "PNG")
    return buf.getvalue()


def _sample(i: int, **kw) -> Sample:
    base = dict(
        id=f"s{i}",
        width=40,
        height=30,
        source="test",
        category="wood",
        scene="texture",
        label="anomalous",
        defects=[DefectRecord("scratches", [0.1, 0.2, 0.5, 0.6])],
        image=_png(),
    )
    base.update(kw)
    return Sample(**base)


@pytest.mark.parametrize("url", ["memory://roundtrip", "DISK"])
def test_synthetic_round_trip_is_identical(url, tmp_path):
    url = str(tmp_path / "ds") if url == "DISK" else url
    samples = list(generate(SynthConfig(n=24, seed=7, size=96)))
    rep = write_dataset(url, samples, shard_rows=10, row_group_size=4)
    assert rep.rows == 24 and [s["rows"] for s in rep.shards] == [10, 10, 4] and not rep.rejected
    back = list(iter_samples(url, batch_size=5))
    assert [b.to_row() for b in back] == [s.to_row() for s in samples]
    assert read_manifest(url)["rows"] == 24


def test_reader_streams_row_groups_without_loading_everything():
    write_dataset("memory://stream", [_sample(i) for i in range(20)], row_group_size=4)
    sizes = [b.num_rows for b in iter_batches("memory://stream", columns=["id"], batch_size=3)]
    assert sum(sizes) == 20 and max(sizes) <= 3


def test_bad_rows_are_reported_with_their_id_and_left_out(capsys):
    good = _sample(0)
    truncated = _sample(1, image=_png()[:60])
    not_image = _sample(2, image=b"definitely not a png")
    outside = _sample(3, defects=[DefectRecord("dent", [0.5, 0.5, 1.2, 0.9])])
    unknown = _sample(4, defects=[DefectRecord("banana", [0.1, 0.1, 0.2, 0.2])])
    wrong_size = _sample(5, width=41)
    normal_with_defect = _sample(6, label="normal")
    rep = write_dataset("memory://bad", [good, truncated, not_image, outside, unknown, wrong_size, normal_with_defect])
    err = capsys.readouterr().err
    assert rep.rows == 1
    reasons = {r.id: " ".join(r.reasons) for r in rep.rejected}
    assert set(reasons) == {"s1", "s2", "s3", "s4", "s5", "s6"}
    assert "does not decode" in reasons["s1"] and "does not decode" in reasons["s2"]
    assert "outside the image" in reasons["s3"] and "unknown anomaly type 'banana'" in reasons["s4"]
    assert "41" in reasons["s5"] and "normal image has defects" in reasons["s6"]
    assert "rejected sample 's3'" in err
    manifest = read_manifest("memory://bad")
    assert {r["id"] for r in manifest["rejected"]} == set(reasons)
    assert [s.id for s in iter_samples("memory://bad")] == ["s0"]


def test_types_are_canonicalised_with_their_groups():
    s = _sample(0, defects=[DefectRecord("Rust", [0.1, 0.1, 0.3, 0.3])])
    assert validate(s) == []
    assert (s.defects[0].type, s.defects[0].level2, s.defects[0].level1) == (
        "rusty",
        "material anomaly",
        "surface anomaly",
    )


def test_image_by_url(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(_png())
    with fsspec.open("memory://imgs/a.png", "wb") as fh:
        fh.write(_png())
    samples = [
        _sample(0, image=None, image_uri=str(path)),
        _sample(1, image=None, image_uri="memory://imgs/a.png"),
        _sample(2, image=None, image_uri=str(tmp_path / "missing.png")),
    ]
    rep = write_dataset("memory://byurl", samples, quiet=True)
    assert rep.rows == 2 and rep.rejected[0].id == "s2"
    back = list(iter_samples("memory://byurl"))
    assert back[1].load_image().size == (40, 30)


def test_a_dataset_without_manifest_is_not_read():
    w = DatasetWriter("memory://unfinished")
    w.write(_sample(0))
    w._flush()  # shards exist, staged beside the output, but close() never published them
    with pytest.raises(UsageError, match=r"no dataset at memory://unfinished"):
        list(iter_samples("memory://unfinished"))
    w.abort()
    write_dataset("memory://lost-manifest", [_sample(0)])
    fsspec.filesystem("memory").rm("/lost-manifest/manifest.json")  # shards without a manifest
    with pytest.raises(DataError, match=r"memory://lost-manifest has no manifest\.json.*did not finish"):
        list(iter_samples("memory://lost-manifest"))


def test_manifest_is_json_listing_shards(tmp_path):
    write_dataset(str(tmp_path), [_sample(i) for i in range(3)])
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["shards"] == [{"path": "part-00000.parquet", "rows": 3}]
