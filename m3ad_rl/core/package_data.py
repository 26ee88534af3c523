"""Files shipped inside the package: the example configs (``configs/``, linked into ``m3ad_rl/configs``
so a wheel carries them) and the resources (taxonomy, KubeRay CRDs). Nothing walks up from ``__file__``
to a checkout: a non-editable install finds the same files, and ``$M3AD_CONFIGS`` points at your own."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from m3ad_rl.core.errors import UsageError

CONFIGS_ENV = "M3AD_CONFIGS"


def package_path(relative: str) -> Path:
    """``m3ad_rl/<relative>`` inside the installed package."""
    return Path(str(resources.files("m3ad_rl").joinpath(relative)))


def config_dir() -> Path:
    """The configs folder: ``$M3AD_CONFIGS`` if set, else the one shipped in the package."""
    return Path(os.environ[CONFIGS_ENV]) if os.environ.get(CONFIGS_ENV) else package_path("configs")


def config_file(relative: str) -> Path:
    """A shipped config such as ``train/sft-cpu.yaml``; a clear error names where it was looked for."""
    path = config_dir() / relative
    if not path.is_file():
        raise UsageError(f"config {relative} not found in {path.parent}",
                         f"set {CONFIGS_ENV} to a folder holding {relative}, or reinstall m3ad-rl")  # fmt: skip
    return path
