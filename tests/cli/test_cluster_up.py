"""`m3ad-rl cluster up` says in one line what its nodes cannot have, before it starts anything."""

from __future__ import annotations

import importlib.util

from m3ad_rl.cli import main


def test_a_config_dir_that_is_not_a_folder(tmp_path, capsys):
    assert main(["cluster", "up", "--dir", str(tmp_path / "c"), "--config-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m3ad-rl cluster up: --config-dir") and "not a folder" in err and "\n" not in err
    assert not (tmp_path / "c").exists()  # nothing started, nothing written


def test_a_python_without_ray(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(["cluster", "up", "--dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ray is not installed for" in err and "Traceback" not in err and "\n" not in err
