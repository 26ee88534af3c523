"""Evaluation: M3-AD-Bench runs over any engine, metrics, reports, model comparisons."""
