"""The reward service as RCRL's controller sees it: a Ray Serve deployment this run starts (one application
and route per run, so a sweep's runs share the cluster's Serve), or an already running service by URL
(e.g. the RayService). Either way ``score(items)`` returns one dict of parts per item."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rewards.config import RewardConfig

BATCH = 4096  # items per HTTP request to a running service


def app_name(out: str) -> str:
    """The Serve application (and route) of the run writing to ``out``."""
    return f"rewards-{Path(out).name}-{hashlib.sha1(out.encode()).hexdigest()[:6]}"


class RewardClient:
    """Deploy-or-connect, score, close."""

    def __init__(self, reward: RewardConfig, out: str, url: str | None = None, replicas: int = 1,
                 http_port: int | None = None):  # fmt: skip
        self.url, self.app, self.handle = url, app_name(out), None
        if url:
            return
        from ray import serve

        from rewards.service import build_app

        serve.start(http_options={"host": "127.0.0.1", "port": http_port} if http_port else {"location": "NoServer"})
        self.handle = serve.run(build_app(reward, replicas), name=self.app, route_prefix=f"/{self.app}")

    def score(self, items: list[dict]) -> list[dict]:
        """``items``: ``{id, response, ground_truth, image_size}``; returns the reward service's results."""
        if self.handle is not None:
            return self.handle.score_items.remote(items).result()
        import httpx

        out = []
        with httpx.Client(timeout=120) as client:
            for s in range(0, len(items), BATCH):
                resp = client.post(f"{self.url.rstrip('/')}/score", json={"items": items[s : s + BATCH]})
                resp.raise_for_status()
                out.extend(resp.json()["results"])
        return out

    def close(self) -> None:
        """Remove the deployment this run started (a service given by URL is left alone)."""
        if self.handle is not None:
            from ray import serve

            serve.delete(self.app)
            self.handle = None
