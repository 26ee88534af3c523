"""m3ad-rl: reflection-aware RL for industrial anomaly detection with vision-language models.

Import-light on purpose: the core (taxonomy, output format, metrics) needs no torch or Ray.
"""

__version__ = "0.1.0"
