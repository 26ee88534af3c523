"""Parquet shards on any fsspec URL, with a manifest, a validating writer and a streaming reader.

Layout of a dataset at URL (a local folder, ``memory://name``, ``s3://bucket/prefix``…)::

    URL/manifest.json          {"schema_version", "shards": [{"path", "rows"}], "rows", "rejected": [...]}
    URL/part-00000.parquet     row groups of ``row_group_size`` rows, so readers can stream

The manifest is written last: a dataset without one is incomplete and is not read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from m3ad_rl.data.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, Sample, validate
from m3ad_rl.taxonomy import Taxonomy, default_taxonomy

MANIFEST = "manifest.json"


@dataclass
class Rejected:
    """A sample that was not written, and why."""

    id: str
    reasons: list[str]


@dataclass
class WriteReport:
    rows: int = 0
    shards: list[dict] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


class DatasetWriter:
    """Validate and write samples into Parquet shards under ``url``; ``close()`` writes the manifest.

    A sample that fails validation (undecodable image, box outside the image, unknown type, …) is
    reported on stderr with its id, listed in the manifest's ``rejected``, and not written.
    """

    def __init__(
        self,
        url: str,
        shard_rows: int = 4096,
        row_group_size: int = 256,
        check_images: bool = True,
        taxonomy: Taxonomy | None = None,
        quiet: bool = False,
    ):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.fs.makedirs(self.root, exist_ok=True)
        self.shard_rows, self.row_group_size = shard_rows, row_group_size
        self.check_images, self.quiet = check_images, quiet
        self.taxonomy = taxonomy or default_taxonomy()
        self.report = WriteReport()
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._fh = None
        self._shard_rows = 0

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._close_shard()

    def write(self, sample: Sample) -> bool:
        """Write one sample; False when it was rejected."""
        errors = validate(sample, self.taxonomy, self.check_images)
        if errors:
            self.report.rejected.append(Rejected(sample.id, errors))
            if not self.quiet:
                print(f"rejected sample {sample.id!r}: {'; '.join(errors)}", file=sys.stderr)
            return False
        self._buffer.append(sample.to_row())
        if len(self._buffer) >= self.row_group_size:
            self._flush()
        return True

    def write_all(self, samples: Iterable[Sample]) -> WriteReport:
        for s in samples:
            self.write(s)
        return self.report

    def _flush(self) -> None:
        while self._buffer:
            if self._writer is None:
                name = f"part-{len(self.report.shards):05d}.parquet"
                self._fh = self.fs.open(_join(self.root, name), "wb")
                self._writer = pq.ParquetWriter(self._fh, SAMPLE_SCHEMA, compression="zstd")
                self.report.shards.append({"path": name, "rows": 0})
                self._shard_rows = 0
            take = min(len(self._buffer), self.shard_rows - self._shard_rows)
            rows, self._buffer = self._buffer[:take], self._buffer[take:]
            self._writer.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), self.row_group_size)
            self._shard_rows += take
            self.report.shards[-1]["rows"] = self._shard_rows
            self.report.rows += take
            if self._shard_rows >= self.shard_rows:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._fh.close()
            self._writer = self._fh = None

    def close(self) -> WriteReport:
        self._flush()
        self._close_shard()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "rows": self.report.rows,
            "shards": self.report.shards,
            "rejected": [{"id": r.id, "reasons": r.reasons} for r in self.report.rejected],
        }
        with self.fs.open(_join(self.root, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1)
        return self.report


def write_dataset(url: str, samples: Iterable[Sample], **kwargs) -> WriteReport:
    """Write ``samples`` to ``url`` (see ``DatasetWriter``)."""
    with DatasetWriter(url, **kwargs) as w:
        w.write_all(samples)
    return w.report


def read_manifest(url: str) -> dict:
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    path = _join(root, MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(f"no {MANIFEST} under {url}: not a dataset, or its writer did not finish")
    with fs.open(path, "r") as fh:
        return json.load(fh)


def iter_batches(url: str, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[pa.RecordBatch]:
    """Stream record batches shard by shard, row group by row group; memory stays one batch."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    for shard in read_manifest(url)["shards"]:
        with fs.open(_join(root, shard["path"]), "rb") as fh:
            yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)


def iter_samples(url: str, batch_size: int = 256, with_images: bool = True) -> Iterator[Sample]:
    """Stream ``Sample`` objects (without image bytes when ``with_images`` is False)."""
    columns = None if with_images else [f for f in SAMPLE_SCHEMA.names if f != "image"]
    for batch in iter_batches(url, columns, batch_size):
        for row in batch.to_pylist():
            yield Sample.from_row(row)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    """The whole dataset as one table (for small sets and statistics)."""
    batches = list(iter_batches(url, columns))
    if not batches:
        schema = SAMPLE_SCHEMA if columns is None else pa.schema([SAMPLE_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.Table.from_batches(batches)
