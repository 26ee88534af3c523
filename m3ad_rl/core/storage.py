"""Storage URLs for everything that crosses nodes: folders up and down, and model references.

On a KubeRay cluster the driver (head pod) and the actors (worker pods) have their own disks, so
a file one of them writes is invisible to the others unless it goes through a storage URL
(``s3://``, ``gs://``, any fsspec URL, or a path on a volume every pod mounts). This module is the
one place that copies between a node's local disk and such a URL:

- ``upload_dir`` / ``download_dir`` copy folders file by file (``fs.get(..., recursive=True)`` into
  an existing folder nests the files one level down on some filesystems);
- ``staged_dir`` gives a writer a local folder and publishes it to the URL on exit;
- ``local_model`` turns a model reference into something ``from_pretrained`` and vLLM can open on
  this node: a local folder, a hub id, ``hf://org/repo[/subfolder]`` (a hub repository and a
  folder in it), or any fsspec URL (downloaded once per node into a cache and refreshed when the
  remote files change).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

HF_SCHEME = "hf://"
_DONE = ".m3ad-download.json"


def is_local(url: str | Path) -> bool:
    """True for a plain path or ``file://`` URL (on this node's disk or a mounted volume)."""
    url = str(url)
    return "://" not in url or url.startswith("file://")


def local_path(url: str | Path) -> Path:
    """The absolute local path of a local URL (relative paths are taken from the current folder)."""
    url = str(url)
    return Path(url.removeprefix("file://")).expanduser().absolute()


def absolute(url: str | Path) -> str:
    """``url`` unchanged if remote, else as an absolute path: workers run in other folders."""
    return str(local_path(url)) if is_local(url) else str(url)


def absolute_model(ref: str | Path) -> str:
    """A model reference made absolute if it is an existing local folder (else unchanged)."""
    return str(local_path(ref)) if is_local(ref) and local_path(ref).exists() else str(ref)


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(url: str) -> bool:
    fs, path = url_to_fs(str(url))
    return fs.exists(path)


def upload_dir(local: str | Path, url: str) -> list[str]:
    """Copy every file under ``local`` to ``url`` (same relative layout); returns the relative names."""
    local = Path(local)
    fs, dest = url_to_fs(str(url))
    names = []
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = f.relative_to(local).as_posix()
        target = f"{dest.rstrip('/')}/{rel}"
        if isinstance(fs, LocalFileSystem):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        else:
            fs.put_file(str(f), target)
        names.append(rel)
    return names


def list_files(url: str) -> dict[str, dict]:
    """{relative name: {"size", "tag"}} of every file under ``url`` (tag: ETag or mtime, if any)."""
    fs, root = url_to_fs(str(url))
    root = root.rstrip("/")
    if not fs.isdir(root):
        return {}
    out = {}
    for name, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = name[len(root) :].lstrip("/")
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        out[rel] = {"size": int(info.get("size") or 0), "tag": str(tag) if tag is not None else None}
    return out


def download_dir(url: str, local: str | Path, include: Callable[[str], bool] | None = None) -> list[str]:
    """Copy the files under ``url`` into the folder ``local`` (created); returns the relative names."""
    fs, root = url_to_fs(str(url))
    root = root.rstrip("/")
    local = Path(local)
    names = []
    for rel in sorted(list_files(url)):
        if include is not None and not include(rel):
            continue
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(target))
        names.append(rel)
    return names


@contextlib.contextmanager
def staged_dir(url: str, clear: bool = False) -> Iterator[Path]:
    """A local folder to write into; its files land at ``url`` only when the block ends without error.

    For a part of a command's own output (a run's ``model/``, a checkpoint): the folder is staged beside
    ``url`` (local) or on this node's disk (remote) and published at the end, so an error or Ctrl-C leaves
    what was at ``url`` before. ``clear``: what was at ``url`` is replaced, not merged into. Whole outputs
    go through ``core.outputs`` (which also decides whether ``url`` may be written at all).
    """
    import uuid

    if is_local(url):
        path = local_path(url)
        stage = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:10]}")
        stage.mkdir(parents=True)
        try:
            yield stage
            if clear and path.exists():
                shutil.rmtree(path)
            if not path.exists():
                stage.rename(path)
            else:
                for f in sorted(p for p in stage.rglob("*") if p.is_file()):
                    target = path / f.relative_to(stage)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="m3ad-stage-") as tmp:
        yield Path(tmp)
        if clear:
            remove(url)
        upload_dir(tmp, url)


def remove(url: str) -> None:
    fs, path = url_to_fs(str(url))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_text(url: str, text: str) -> None:
    """Write a small text file at ``url`` (parents created for local paths)."""
    import fsspec

    if is_local(url):
        local_path(url).parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(str(url), "w") as fh:
        fh.write(text)


def read_text(url: str) -> str:
    import fsspec

    with fsspec.open(str(url), "r") as fh:
        return fh.read()


# ---- model references ----------------------------------------------------------------------------
def cache_root() -> Path:
    """Where remote models are cached on this node: $M3AD_CACHE, else ~/.cache/m3ad."""
    return Path(os.environ.get("M3AD_CACHE") or Path.home() / ".cache" / "m3ad")


def split_hf(ref: str) -> tuple[str, str | None]:
    """``hf://org/repo/sub/folder`` → (``org/repo``, ``sub/folder`` or None)."""
    parts = ref.removeprefix(HF_SCHEME).strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{ref}: a hub reference is hf://ORG/REPO[/SUBFOLDER]")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def _hub_model(ref: str) -> str:
    from huggingface_hub import snapshot_download

    repo, sub = split_hf(ref)
    patterns = [f"{sub}/*"] if sub else None
    try:
        snap = snapshot_download(repo, allow_patterns=patterns, token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:  # the hub client raises many kinds; the user needs the reference and the cause
        raise FileNotFoundError(f"{ref}: cannot get hub repository {repo!r}: {e}") from e
    path = Path(snap) / sub if sub else Path(snap)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{ref}: no config.json in {'folder ' + repr(sub) if sub else 'the repository'}")
    return str(path)


def _remote_model(url: str) -> str:
    """Download the model folder at ``url`` into this node's cache once; refresh if it changed."""
    from filelock import FileLock

    files = list_files(url)
    if "config.json" not in files:
        raise FileNotFoundError(f"{url}: no model there (no config.json)")
    key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    target = cache_root() / "models" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        done = target / _DONE
        if done.exists() and json.loads(done.read_text()) == {"url": url, "files": files}:
            return str(target)
        part = target.with_name(key + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        download_dir(url, part)
        (part / _DONE).write_text(json.dumps({"url": url, "files": files}))
        shutil.rmtree(target, ignore_errors=True)
        part.rename(target)
    return str(target)


def local_model(ref: str | Path) -> str:
    """A model reference as something ``from_pretrained`` / vLLM open on this node.

    - a local folder (or ``file://``): its absolute path;
    - ``hf://ORG/REPO[/SUBFOLDER]``: the hub snapshot's folder (honours ``HF_HUB_OFFLINE``, ``HF_HOME``);
    - any other URL (``s3://``, ``gs://``, ``memory://`` …): a per-node cached copy;
    - anything else (``Qwen/Qwen3-VL-4B-Instruct``): a hub id, returned unchanged.
    """
    ref = str(ref)
    if ref.startswith(HF_SCHEME):
        return _hub_model(ref)
    if not is_local(ref):
        return _remote_model(ref)
    path = local_path(ref)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{ref}: a folder but not a model (no config.json)")
        return str(path)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ref  # a hub id
    raise FileNotFoundError(f"{ref}: no such model folder")
