"""``python -m m3ad_rl.cli …``: the same as ``m3ad-rl …``."""

import sys

from m3ad_rl.cli import main

sys.exit(main())
