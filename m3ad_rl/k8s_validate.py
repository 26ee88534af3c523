"""``python -m m3ad_rl.k8s_validate [PATH...]``: the manifest validator under its old name.

The checks live in ``m3ad_rl.k8s.validate``; ``m3ad-rl k8s validate`` is the same command.
"""

from __future__ import annotations

import sys

from m3ad_rl.k8s.validate import *  # noqa: F403
from m3ad_rl.k8s.validate import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
