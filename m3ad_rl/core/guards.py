"""Checks every command makes before it reads or writes anything.

- ``refuse_overwrite(inputs, outputs)``: no output may be, contain or lie inside one of the
  command's inputs (or another output), compared as resolved paths or normalised URLs.
- ``require_file`` / ``require_output_file``: a file where a file is expected, not a folder.
- ``check_port_free``: a server's port is free before a model is loaded or Ray is started.
- ``replaced_when_done``: a local output file appears only complete (written aside, then renamed).

Every refusal is a ``UsageError`` (exit 2) naming the paths and what to do instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

from m3ad_rl.core.errors import UsageError

Where = str | os.PathLike | None


def location(url: str | os.PathLike) -> tuple[str, str]:
    """(protocol, absolute normalised path) of a local path or fsspec URL; links are resolved."""
    text = os.fspath(url)
    fs, path = fsspec.core.url_to_fs(text)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return "file", os.path.realpath(path)
    path = posixpath.normpath("/" + path.strip("/"))
    return protocol, path


def _overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """The same place, or one inside the other."""
    if a[0] != b[0]:
        return False
    x, y = a[1].rstrip("/") or "/", b[1].rstrip("/") or "/"
    return x == y or y.startswith(x.rstrip("/") + "/") or x.startswith(y.rstrip("/") + "/")


def refuse_overwrite(inputs: Iterable[Where], outputs: Iterable[Where]) -> None:
    """Refuse an output that is, contains or lies inside an input, or overlaps another output.

    ``None`` entries (options not given) are ignored. An output inside an input folder is refused
    too: a dataset folder holds its own shards only, and a command must not change what it reads.
    """
    ins = [(os.fspath(u), location(u)) for u in inputs if u is not None]
    outs = [(os.fspath(u), location(u)) for u in outputs if u is not None]
    for out, lo in outs:
        for src, li in ins:
            if _overlap(lo, li):
                how = "is" if lo == li else ("contains" if li[1].startswith(lo[1].rstrip("/") + "/") else "is inside")
                raise UsageError(
                    f"the output {out} {how} the input {src}: the command would write over what it reads",
                    "write the output somewhere else",
                )
    for i, (a, la) in enumerate(outs):
        for b, lb in outs[i + 1 :]:
            if _overlap(la, lb):
                raise UsageError(f"the outputs {a} and {b} overlap", "give each output its own path")


def require_file(path: str | os.PathLike, option: str = "--input") -> None:
    """``path`` (a local path or URL) exists and is a file, not a folder."""
    fs, p = fsspec.core.url_to_fs(os.fspath(path))
    if fs.isdir(p):
        raise UsageError(f"{option} {path} is a folder, a file was expected", "give the path of a file")
    if not fs.exists(p):
        raise UsageError(f"{option} {path} does not exist", "check the path")


def require_output_file(path: str | os.PathLike, option: str = "--output") -> None:
    """``path`` can be written as a file: it is not a folder, and no file stands where a folder must be."""
    fs, p = fsspec.core.url_to_fs(os.fspath(path))
    if fs.isdir(p):
        raise UsageError(f"{option} {path} is a folder, a file name was expected", "give a file path inside it")
    parent = posixpath.dirname(p.rstrip("/"))
    while parent and parent not in ("/", "."):
        if fs.isfile(parent):
            raise UsageError(f"{option} {path}: {parent} is a file, not a folder", "choose another path")
        if fs.isdir(parent):
            break
        parent = posixpath.dirname(parent)


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Refuse to start a server whose port is taken (checked by binding it, as the server will)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host} cannot be resolved ({e.strerror})", "give an address or known name") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is not "in use"
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                why = "in use" if e.errno == errno.EADDRINUSE else "not allowed for this user"
                raise UsageError(
                    f"port {port} on {host} is {why}", f"choose another {option} or stop what listens there"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host} is no address of this machine", "give one of its own") from None
            raise


@contextlib.contextmanager
def replaced_when_done(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix); renamed onto ``path`` only if the block ends
    without an error, so an interrupted command leaves the earlier file, never half of a new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
