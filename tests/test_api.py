"""The public API: every name resolves, and importing the package pulls in no training framework."""

from __future__ import annotations

import subprocess
import sys

import m3ad_rl


def test_every_public_name_resolves():
    assert set(m3ad_rl.__all__) == {"__version__", *m3ad_rl._API}
    for name in m3ad_rl.__all__:
        assert getattr(m3ad_rl, name) is not None, name


def test_import_is_light():
    code = "import sys, m3ad_rl; print(sorted(m for m in ('torch', 'ray', 'deepspeed', 'verl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_unknown_name_is_an_attribute_error():
    try:
        m3ad_rl.train_everything  # noqa: B018
    except AttributeError as e:
        assert "train_everything" in str(e)
    else:
        raise AssertionError("no AttributeError")
