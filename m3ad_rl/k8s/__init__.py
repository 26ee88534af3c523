"""Kubernetes tooling: offline manifest validation (``validate``) and the RayJob stage runner
(``pipeline``) that talks to the API server over plain REST (``api``)."""
