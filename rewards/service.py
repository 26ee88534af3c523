"""The reward service: ``RewardFunction`` as a Ray Serve deployment, over HTTP and deployment handles.

    m3ad-rl serve rewards --config configs/rewards/preset_d.yaml --port 8000 --replicas 2
    curl -s localhost:8000/rewards/score -d '{"items": [{"id": "a", "response": "...",
         "ground_truth": {"label": "normal", "defects": []}}]}'

``POST /rewards/score`` takes a batch of items and returns one result per item (the same fields as
``m3ad-rl reward score``); ``GET /rewards/config`` returns the reward config in force; ``GET
/rewards/healthz`` answers ``ok``. A malformed request gets a 4xx with a message that names the
item and the field; the replica keeps serving. From Python (the RCRL controller), call the
deployment handle: ``handle.score_items.remote(items)``.
"""

from typing import Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from m3ad_rl.core.ground_truth import GroundTruth
from rewards.config import RewardConfig
from rewards.scorer import RewardFunction

MAX_ITEMS = 4096

app = FastAPI(title="m3ad-rl rewards")


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    response: str
    ground_truth: dict[str, Any]
    image_size: tuple[int, int] | None = Field(None, description="(width, height), for box_scale=pixels.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem] = Field(..., max_length=MAX_ITEMS)


def parse_items(fn: RewardFunction, items: list[dict]) -> list[tuple[dict, GroundTruth]]:
    """Check wire-form items; ValueError names the first bad item (nothing is scored then)."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append((item, GroundTruth.from_obj(item["ground_truth"], fn.taxonomy)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"items[{i}]: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"items[{i}].{e}") from None
    return out


def score_parsed(fn: RewardFunction, parsed: list[tuple[dict, GroundTruth]]) -> list[dict]:
    out = []
    for item, gt in parsed:
        size = item.get("image_size")
        r = fn(item["response"], gt, tuple(size) if size else None)
        out.append({"id": item.get("id"), **r.to_dict()})
    return out


def score_items(fn: RewardFunction, items: list[dict]) -> list[dict]:
    """Score wire-form items; ValueError names the first bad item (nothing is scored then)."""
    return score_parsed(fn, parse_items(fn, items))


BATCH_MAX_REQUESTS = 64  # small requests a replica gathers into one scoring call, when batching is on
BATCH_WAIT_S = 0.002
DIRECT_ITEMS = 64  # a request this large is a batch already and is scored at once


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128)
@serve.ingress(app)
class RewardService:
    """One replica: a RewardFunction built from the run's reward config.

    Handlers are ``async`` and small requests (fewer than ``DIRECT_ITEMS`` items) are gathered with
    ``@serve.batch`` into one scoring call per ``BATCH_WAIT_S``: many one-response clients then cost
    one event-loop turn per batch instead of one per request. Each request is checked before it joins
    a batch, so a bad request gets its 4xx alone and never fails its batch-mates.
    ``batch_max_requests <= 1`` (the default) turns batching off: every request is scored as it comes.
    Off is the default because it measured no gain for this rule-based reward (~20 µs a response
    against Serve's ~4 ms proxy hop a request, docs/benchmarks.md); it is for costlier rewards.
    """

    def __init__(self, config: dict | None = None, batch_max_requests: int = 1):
        self.config = RewardConfig.model_validate(config or {})
        self.fn = RewardFunction(self.config)
        self.batching = batch_max_requests > 1
        if self.batching:
            self._score_small.set_max_batch_size(batch_max_requests)

    @app.post("/score")
    async def score(self, request: ScoreRequest, response: Response) -> dict:  # (no __future__ annotations: FastAPI)
        """The header ``x-batch-requests`` says how many requests were scored in the same call."""
        try:
            parsed = parse_items(self.fn, [i.model_dump() for i in request.items])
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        results, together = await self._score(parsed)
        response.headers["x-batch-requests"] = str(together)
        return {"results": results}

    @app.get("/config")
    def get_config(self) -> dict:
        return self.config.model_dump(mode="json")

    @app.get("/healthz")
    def healthz(self) -> str:
        return "ok"

    async def score_items(self, items: list[dict]) -> list[dict]:
        """Deployment-handle entry point (no HTTP): the same scoring, ValueError on bad items."""
        return (await self._score(parse_items(self.fn, items)))[0]

    async def _score(self, parsed: list[tuple[dict, GroundTruth]]) -> tuple[list[dict], int]:
        """The results, and how many requests shared the scoring call."""
        if not self.batching or len(parsed) >= DIRECT_ITEMS:
            return score_parsed(self.fn, parsed), 1
        return await self._score_small(parsed)

    @serve.batch(max_batch_size=BATCH_MAX_REQUESTS, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _score_small(self, requests: list[list[tuple[dict, GroundTruth]]]) -> list[tuple[list[dict], int]]:
        return [(score_parsed(self.fn, r), len(requests)) for r in requests]


def build_app(config: RewardConfig | None = None, replicas: int = 1, batch_max_requests: int = 1):
    """The bound application, ready for ``serve.run``."""
    return RewardService.options(num_replicas=replicas).bind(
        (config or RewardConfig()).model_dump(mode="json"), batch_max_requests
    )


def start(
    config: RewardConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    name: str = "rewards",
    blocking: bool = False,
    batch_max_requests: int = 1,
):
    """Start Serve's HTTP proxy on host:port and deploy the service under ``/rewards``; returns the
    deployment handle."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(
        build_app(config, replicas, batch_max_requests), name=name, route_prefix="/rewards", blocking=blocking
    )


def app_builder(args: dict):
    """Ray Serve application builder for ``serveConfigV2`` / ``serve run`` (``import_path:
    rewards.service:app_builder``); ``args``: ``{"config": {...RewardConfig...}, "replicas": N,
    "batch_max_requests": M}``."""
    return build_app(
        RewardConfig.model_validate(args.get("config") or {}),
        int(args.get("replicas", 1)),
        int(args.get("batch_max_requests", 1)),
    )
