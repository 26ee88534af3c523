"""Storage URLs: folder copies without nesting, model references (storage URLs, hub repo + subfolder,
offline), checkpoints that list their files and skip damaged ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from m3ad_rl.core import storage
from m3ad_rl.train import checkpoint as ck


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "sub" / "a.bin").write_text("weights")
    return root


def test_upload_then_download_keeps_the_layout_on_a_remote_filesystem(tmp_path):
    """fs.get(recursive=True) into an existing folder nested the files one level down."""
    src = _make(tmp_path / "src")
    url = "memory://bucket/ckpt/step_000001"
    assert storage.upload_dir(src, url) == ["config.json", "sub/a.bin"]
    dst = tmp_path / "dst"
    dst.mkdir()  # already exists, as a rank's temp folder does
    storage.download_dir(url, dst)
    assert _tree(dst) == _tree(src)
    only = tmp_path / "only"
    storage.download_dir(url, only, include=lambda n: n.startswith("sub/"))
    assert list(_tree(only)) == ["sub/a.bin"]


def test_staged_dir_publishes_only_on_success(tmp_path):
    url = "memory://bucket/staged/model"
    with pytest.raises(RuntimeError), storage.staged_dir(url) as d:
        (d / "half.bin").write_text("x")
        raise RuntimeError("killed while writing")
    assert not storage.exists(url)
    with storage.staged_dir(url) as d:
        (d / "config.json").write_text("{}")
    assert list(storage.list_files(url)) == ["config.json"]


def test_model_from_a_storage_url_is_cached_per_node_and_refreshed(tmp_path, monkeypatch):
    monkeypatch.setenv("M3AD_CACHE", str(tmp_path / "cache"))
    url = "memory://bucket/runs/sft/model"
    storage.upload_dir(_make(tmp_path / "m"), url)
    first = storage.local_model(url)
    assert Path(first, "sub/a.bin").read_text() == "weights"
    assert storage.local_model(url) == first  # cached
    with fsspec.open(f"{url}/sub/a.bin", "w") as fh:  # a rerun rewrote the model at the same URL
        fh.write("new weights!")
    assert Path(storage.local_model(url), "sub/a.bin").read_text() == "new weights!"
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        storage.local_model("memory://bucket/runs/nothing")


def test_model_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make(tmp_path / "models" / "tiny")
    assert storage.local_model("models/tiny") == str(tmp_path / "models" / "tiny")
    assert storage.local_model("Qwen/Qwen3-VL-4B-Instruct") == "Qwen/Qwen3-VL-4B-Instruct"  # a hub id
    assert storage.split_hf("hf://yanhui01/RA-Monitor/RA-Monitor(Qwen3-VL-4B)") == (
        "yanhui01/RA-Monitor", "RA-Monitor(Qwen3-VL-4B)")  # fmt: skip
    with pytest.raises(ValueError, match="hf://ORG/REPO"):
        storage.split_hf("hf://just-a-name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model"):
        storage.local_model("empty")


def _hub_cache(home: Path, repo: str, sub: str, model: Path) -> Path:
    """An HF hub cache laid out on disk as `snapshot_download` leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(model, base / "snapshots" / commit / sub)
    return base / "snapshots" / commit / sub


def test_hub_repository_and_subfolder_offline(tiny_model, tmp_path):
    """hf://yanhui01/RA-Monitor/RA-Monitor(Qwen3-VL-4B): the authors' layout, loaded by the HF engine
    and the actor's loader from the hub cache with HF_HUB_OFFLINE=1."""
    home = tmp_path / "hf"
    want = _hub_cache(home, "yanhui01/RA-Monitor", "RA-Monitor(Qwen3-VL-4B)", Path(tiny_model))
    code = (
        "from m3ad_rl.core.storage import local_model\n"
        "from m3ad_rl.engines.hf import HFEngine\n"
        "from m3ad_rl.train.workers import load_policy\n"
        "ref = 'hf://yanhui01/RA-Monitor/RA-Monitor(Qwen3-VL-4B)'\n"
        "print(local_model(ref))\n"
        "HFEngine(ref); load_policy(ref)\n"
        "try:\n    local_model('hf://yanhui01/RA-Monitor/no-such-folder')\n"
        "except FileNotFoundError as e:\n    print('missing:', e)\n"
    )
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert Path(lines[0]).resolve() == want.resolve()
    assert any(line.startswith("missing:") and "no-such-folder" in line for line in lines)


def _checkpoint(root: str, step: int) -> str:
    url = ck.step_dir(root, step)
    files = {}
    for name, text in {"actor/actor/mp_rank_00_model_states.pt": "w" * 100, "trainer_state.json": "{}"}.items():
        with fsspec.open(f"{url}/{name}", "w") as fh:
            fh.write(text)
        files[name] = len(text)
    ck.mark_complete(url, {"step": step}, files)
    return url


def test_damaged_checkpoints_fall_back_to_the_newest_intact_one(capsys):
    root = "memory://bucket/run/checkpoints"
    for s in (2, 4, 6):
        _checkpoint(root, s)
    assert ck.latest_complete(root) == (6, ck.step_dir(root, 6))
    with fsspec.open(f"{ck.step_dir(root, 6)}/actor/actor/mp_rank_00_model_states.pt", "w") as fh:
        fh.write("w" * 10)  # truncated
    with fsspec.open(f"{ck.step_dir(root, 4)}/trainer_state.json", "w") as fh:
        fh.write("")  # emptied
    assert ck.latest_complete(root) == (2, ck.step_dir(root, 2))
    err = capsys.readouterr().err
    assert "step_000006 is damaged (actor/actor/mp_rank_00_model_states.pt has 10 bytes, 100 when saved)" in err
    assert "step_000004 is damaged (trainer_state.json" in err
    marker = json.loads(fsspec.open(f"{ck.step_dir(root, 2)}/COMPLETE").open().read())
    assert set(marker["files"]) == {"actor/actor/mp_rank_00_model_states.pt", "trainer_state.json"}
