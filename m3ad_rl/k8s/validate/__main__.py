"""``python -m m3ad_rl.k8s.validate PATH...``: the same command as ``m3ad-rl k8s validate``."""

import sys

from m3ad_rl.k8s.validate.main import main

sys.exit(main())
