"""Parquet shards on any fsspec URL, with a manifest, a validating writer and a checking reader.

Layout of a dataset at URL (a local folder, ``memory://name``, ``s3://bucket/prefix``…)::

    URL/manifest.json          {"schema_version", "shards": [{"path", "rows"}], "rows", "rejected": [...]}
    URL/part-00000.parquet     row groups of ``row_group_size`` rows, so readers can stream

Writes follow the output contract (``m3ad_rl.core.outputs``): a new dataset is created; an existing
one is replaced only with ``overwrite``, and a folder holding anything else (a user's files, another
kind of output) is refused. The writer puts its shards in a staging folder beside URL, so a dataset
already at URL stays whole and readable while it works; an error or Ctrl-C leaves it untouched. Only
when every row is written does it publish: the old manifest out first, the old shards out, the
staged shards in, the manifest last. A dataset without a manifest is an unfinished write and is not
read.

Readers check the manifest against storage before the first row: every listed shard is there
with the row count the manifest says, no other shard is, and the counts add up. A damaged
manifest or Parquet file, or any disagreement, is a ``DataError`` naming the dataset.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.core.outputs import move_path as move_file  # noqa: F401 (one place moves and removes: core/outputs)
from m3ad_rl.core.outputs import remove_path as remove_file  # noqa: F401
from m3ad_rl.core.outputs import remove_path as remove_tree  # noqa: F401
from m3ad_rl.core.taxonomy import Taxonomy, default_taxonomy
from m3ad_rl.data.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, Sample, validate

MANIFEST = "manifest.json"
STAGING = ".staging-"
SHARD = re.compile(r"part-\d{5}\.parquet")
REWRITE = "write the dataset again with the command that made it"


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


def _names(fs, path: str) -> list[str]:
    """Base names directly under ``path``, as storage has them now (not a cached listing)."""
    fs.invalidate_cache(path)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


class DatasetWriter:
    """Validate and write samples into staged Parquet shards; ``close()`` publishes them under ``url``.

    A sample that fails validation (undecodable image, box outside the image, unknown type, …) is
    reported on stderr with its id, listed in the manifest's ``rejected``, and not written. Images
    are decoded on every write unless ``check_images`` is False (for tests and benchmarks only).
    """

    def __init__(
        self,
        url: str,
        shard_rows: int = 4096,
        row_group_size: int = 256,
        check_images: bool = True,
        taxonomy: Taxonomy | None = None,
        quiet: bool = False,
        overwrite: bool = False,
        inputs: Iterable[str | None] = (),
    ):
        from m3ad_rl.core.outputs import DATASET, publish_dir

        self.url = url.rstrip("/")
        self._publish = publish_dir(self.url, DATASET, inputs=inputs, overwrite=overwrite)  # checks: refuses now
        self.fs, self.staging = self._publish.__enter__()
        self.shard_rows, self.row_group_size = shard_rows, row_group_size
        self.check_images, self.quiet = check_images, quiet
        self.taxonomy = taxonomy or default_taxonomy()
        self.report = WriteReport()
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._fh = None
        self._shard_rows = 0
        self.closed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.abort()

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
                self._fh = self.fs.open(_join(self.staging, name), "wb")
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

    def abort(self) -> None:
        """Drop what was staged; the dataset already at ``url`` (if any) stays as it was."""
        if self.closed:
            return
        try:
            self._close_shard()
        finally:
            self._writer = self._fh = None
            self.closed = True
            with contextlib.suppress(_Abort):
                self._publish.__exit__(_Abort, _Abort(), None)

    def close(self) -> WriteReport:
        """Publish (``m3ad_rl.core.outputs.publish_dir``): the old dataset's manifest and shards out, the
        staged shards in, the new manifest last."""
        if self.closed:
            return self.report
        self._flush()
        self._close_shard()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "rows": self.report.rows,
            "shards": self.report.shards,
            "rejected": [{"id": r.id, "reasons": r.reasons} for r in self.report.rejected],
        }
        with self.fs.open(_join(self.staging, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1)
        self.closed = True
        self._publish.__exit__(None, None, None)
        return self.report


class _Abort(Exception):
    """Thrown into the publishing context to drop the staged write."""


def write_dataset(url: str, samples: Iterable[Sample], **kwargs) -> WriteReport:
    """Write ``samples`` to ``url`` (see ``DatasetWriter``)."""
    with DatasetWriter(url, **kwargs) as w:
        w.write_all(samples)
    return w.report


def read_manifest(url: str) -> dict:
    """The manifest of the dataset at ``url``; a UsageError if there is no dataset, a DataError if
    it is unfinished or the manifest is damaged."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    fs.invalidate_cache(root)  # another process may have written it since this one listed it
    path = _join(root, MANIFEST)
    if not fs.exists(path):
        if not fs.exists(root):
            raise UsageError(f"no dataset at {url}: the path does not exist", "check the path")
        if fs.isfile(root):
            raise UsageError(f"{url} is a file, a dataset folder was expected", "give the dataset's folder")
        inside = [n for n in _names(fs, root) if fs.exists(_join(_join(root, n), MANIFEST))]
        if inside:  # a folder of datasets (split's ft/ and bench/, build-ft's samples/): name them
            found = ", ".join(_join(url.rstrip("/"), n) for n in inside)
            raise UsageError(f"{url} is not a dataset but holds the dataset(s) {found}", "give one of those")
        raise DataError(f"dataset {url} has no {MANIFEST}: not a dataset, or its writer did not finish", REWRITE)
    try:
        with fs.open(path, "r") as fh:
            manifest = json.load(fh)
        shards = manifest["shards"]
        listed = [(str(s["path"]), int(s["rows"])) for s in shards]
        rows = int(manifest["rows"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"dataset {url}: {MANIFEST} is damaged ({type(e).__name__}: {e})", REWRITE) from None
    if any(not SHARD.fullmatch(p) for p, _ in listed):
        raise DataError(f"dataset {url}: {MANIFEST} lists shards that are not part-NNNNN.parquet files", REWRITE)
    if sum(n for _, n in listed) != rows:
        raise DataError(
            f"dataset {url}: {MANIFEST} says {rows} rows but its shards add up to a different count", REWRITE
        )
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise DataError(
            f"dataset {url} has schema version {manifest['schema_version']}, this m3ad-rl reads {SCHEMA_VERSION}",
            "upgrade m3ad-rl",
        )
    return manifest


def check_dataset(url: str) -> dict:
    """The manifest, after checking it against storage: the listed shards and no others, each a
    readable Parquet file with the row count the manifest says. A DataError names what disagrees."""
    manifest = read_manifest(url)
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    listed = {s["path"]: int(s["rows"]) for s in manifest["shards"]}
    present = {n for n in _names(fs, root) if SHARD.fullmatch(n)}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"not in the manifest {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise DataError(f"dataset {url}: its shards disagree with {MANIFEST} ({what})", REWRITE)
    for name, rows in listed.items():
        try:
            with fs.open(_join(root, name), "rb") as fh:
                pf = pq.ParquetFile(fh)
                found, columns = pf.metadata.num_rows, set(pf.schema_arrow.names)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"dataset {url}: shard {name} is not a readable Parquet file ({e})", REWRITE) from None
        missing_columns = [c for c in SAMPLE_SCHEMA.names if c not in columns]
        if missing_columns:
            raise DataError(f"dataset {url}: shard {name} lacks the column(s) {', '.join(missing_columns)} of the "
                            f"sample schema (it has {', '.join(sorted(columns)) or 'none'})", REWRITE)  # fmt: skip
        if found != rows:
            raise DataError(f"dataset {url}: shard {name} holds {found} rows, {MANIFEST} says {rows}", REWRITE)
    return manifest


def iter_batches(url: str, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[pa.RecordBatch]:
    """Stream record batches shard by shard, row group by row group; memory stays one batch.

    The dataset is checked against its manifest first (``check_dataset``)."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    manifest = check_dataset(url)
    for shard in manifest["shards"]:
        try:
            with fs.open(_join(root, shard["path"]), "rb") as fh:
                yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"dataset {url}: shard {shard['path']} is damaged ({e})", REWRITE) from None


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
