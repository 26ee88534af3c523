"""Whole pipelines built from the stages below: the demo."""
