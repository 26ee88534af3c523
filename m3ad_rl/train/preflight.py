"""Checks a training job makes before it starts Ray and DeepSpeed, so a mistake costs seconds.

- the model reference points at a model (a local folder or storage URL with ``config.json``);
- the data is the right kind of Parquet set (an SFT set given to RCRL, or the reverse, is named);
- the output location is writable, and does not already hold another run (unless asked to
  continue it with ``--resume`` or to replace it with ``--overwrite``);
- a resumed run is the same run: its run-defining settings equal the checkpoint's, and it is not
  already finished.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from m3ad_rl.core import storage
from m3ad_rl.core.errors import DataError, UsageError

RL_COLUMNS = {"prompt", "images", "reward_model", "extra_info"}
SFT_COLUMNS = {"messages", "images"}
KINDS = {
    "rl": (RL_COLUMNS, "an RL set (rl.parquet from `m3ad-rl data build-ft`)"),
    "sft": (SFT_COLUMNS, "an SFT set (sft.parquet from `m3ad-rl data build-ft`)"),
}


def check_model(ref: str, key: str = "model") -> None:
    """The model reference resolves before anything starts: a local folder or storage URL holds
    ``config.json``; a hub id or ``hf://ORG/REPO[/SUB]`` has its ``config.json`` on the hub (one small
    download) or, offline (``HF_HUB_OFFLINE=1``), in the local hub cache."""
    ref = str(ref)
    if storage.is_local(ref) and storage.local_path(ref).is_file():
        raise UsageError(f"{key}={ref} is a file, a model folder was expected", "give the model's folder")
    if ref.startswith(storage.HF_SCHEME):
        try:
            repo, sub = storage.split_hf(ref)
        except ValueError as e:
            raise UsageError(f"{key}={ref}: {e}", "write it as hf://ORG/REPO or hf://ORG/REPO/FOLDER") from None
        _check_hub(repo, sub, ref, key)
        return
    if storage.is_local(ref):
        path = storage.local_path(ref)
        if path.is_dir() and not (path / "config.json").exists():
            raise UsageError(f"{key}={ref} is a folder but not a model (no config.json)",
                             "point it at an HF model folder, e.g. runs/sft/model")  # fmt: skip
        if not path.exists() and (ref.count("/") != 1 or ref.startswith((".", "/", "~"))):
            raise UsageError(f"{key}={ref}: no such model folder", "check the path (or give a hub id ORG/NAME)")
        if not path.exists():
            _check_hub(ref, None, ref, key)
        return
    try:
        files = storage.list_files(ref)
    except OSError as e:
        raise UsageError(f"{key}={ref}: cannot list it ({e})", "check the URL and the storage credentials") from e
    if "config.json" not in files:
        raise UsageError(f"{key}={ref}: no model there (no config.json)", "check the URL")


def _check_hub(repo: str, sub: str | None, ref: str, key: str) -> None:
    """The hub repository (and folder) has a config.json this machine can get now."""
    import os

    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    name = f"{sub}/config.json" if sub else "config.json"
    if offline:
        if not isinstance(try_to_load_from_cache(repo, name), str):
            raise UsageError(
                f"{key}={ref}: HF_HUB_OFFLINE is set and the model is not in the local hub cache",
                "give a local model folder or storage URL, or unset HF_HUB_OFFLINE to download it",
            )
        return
    try:
        hf_hub_download(repo, name, token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:  # the hub client raises many kinds (offline, 401, 404, DNS); the cause is in the line
        raise UsageError(f"{key}={ref}: cannot get its config.json from the hub ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})", "check the name, HF_TOKEN and the network, or give a "
                         "local model folder or storage URL") from None  # fmt: skip


def check_parquet(url: str, kind: str, key: str = "data") -> int:
    """The Parquet file at ``url`` is a set of ``kind`` ("rl" | "sft"); returns its row count."""
    import fsspec
    import pyarrow.parquet as pq

    need, what = KINDS[kind]
    try:
        with fsspec.open(url, "rb") as fh:
            meta = pq.read_metadata(fh)
    except FileNotFoundError:
        raise UsageError(f"{key}={url}: no such file", f"give {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{key}={url} is a folder", f"give {what}, a .parquet file") from None
    except Exception as e:  # pyarrow raises its own error types for a damaged or non-Parquet file
        raise DataError(f"{key}={url} is not a readable Parquet file ({type(e).__name__}: {e})",
                        f"give {what}") from None  # fmt: skip
    cols = set(meta.schema.to_arrow_schema().names)  # top-level columns (the Parquet schema lists leaves)
    if not need <= cols:
        other = next((w for k, (c, w) in KINDS.items() if k != kind and c <= cols), None)
        hint = f"it looks like {other}" if other else f"it lacks the columns {sorted(need - cols)}"
        raise UsageError(f"{key}={url} is not {what}: {hint}", f"give {what}")
    if meta.num_rows == 0:
        raise DataError(f"{key}={url} has no rows", "rebuild it with `m3ad-rl data build-ft`")
    return meta.num_rows


def check_writable(out: str, key: str = "out") -> None:
    """``out`` can be written: locally its nearest existing folder is writable (nothing is created); on
    object storage a small file is written and deleted (credentials, bucket, permissions)."""
    if storage.is_local(out):
        from m3ad_rl.core.outputs import require_writable

        require_writable(out, key)
        return
    probe = storage.join(out, f".m3ad-write-test-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_text(probe, "ok")
        storage.remove(probe)
    except (OSError, PermissionError) as e:
        raise UsageError(f"{key}={out} is not writable ({e})", "choose another output location") from e


def identity(settings: dict) -> str:
    """A short hash of the run-defining settings (stored in every checkpoint)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings dicts."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def existing_run(out: str, markers: tuple[str, ...]) -> list[str]:
    """Which of a run's files (relative to ``out``) already exist there."""
    return [m for m in markers if storage.exists(storage.join(out, m))]


def check_images(rows: list[dict], where: str, sample_id, image_bytes) -> None:
    """Every row's image decodes; the first that does not is named (training would die on it later)."""
    import io

    from PIL import Image

    for row in rows:
        try:
            with Image.open(io.BytesIO(image_bytes(row))) as im:
                im.verify()
        except Exception as e:  # PIL raises several kinds for damaged bytes
            raise DataError(f"{where}: the image of sample {sample_id(row)!r} does not decode ({type(e).__name__})",
                            "rebuild the set from an intact dataset (`m3ad-rl data build-ft`)") from None  # fmt: skip


def check_freeze(model: str, patterns: list[str] | tuple[str, ...], key: str = "freeze") -> int:
    """Every ``freeze`` pattern names some parameter of ``model`` (built on the meta device from its
    config.json: no weights are read); returns how many parameter tensors they freeze."""
    if not patterns:
        return 0
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from m3ad_rl.train.deepspeed_engine import frozen_names

    with torch.device("meta"):
        net = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(storage.local_model(model)))
    names = [n for n, _ in net.named_parameters()]
    unmatched = [p for p in patterns if not frozen_names(names, [p])]
    if unmatched:
        tops = sorted({".".join(n.split(".")[:2]) + ".*" for n in names})
        raise UsageError(f"{key}={list(patterns)}: {unmatched} match no parameter of {model}",
                         f"patterns are fnmatch on parameter names, e.g. {', '.join(tops[:6])}")  # fmt: skip
    return len(frozen_names(names, patterns))
