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

from fastapi import FastAPI, HTTPException
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


def score_items(fn: RewardFunction, items: list[dict]) -> list[dict]:
    """Score wire-form items; ValueError names the first bad item (nothing is scored then)."""
    gts = []
    for i, item in enumerate(items):
        try:
            gts.append(GroundTruth.from_obj(item["ground_truth"], fn.taxonomy))
        except (KeyError, TypeError) as e:
            raise ValueError(f"items[{i}]: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"items[{i}].{e}") from None
    out = []
    for item, gt in zip(items, gts, strict=True):
        size = item.get("image_size")
        r = fn(item["response"], gt, tuple(size) if size else None)
        out.append({"id": item.get("id"), **r.to_dict()})
    return out


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress(app)
class RewardService:
    """One replica: a RewardFunction built from the run's reward config."""

    def __init__(self, config: dict | None = None):
        self.config = RewardConfig.model_validate(config or {})
        self.fn = RewardFunction(self.config)

    @app.post("/score")
    def score(self, request: ScoreRequest) -> dict:  # (no __future__ annotations here: FastAPI needs the class)
        try:
            results = score_items(self.fn, [i.model_dump() for i in request.items])
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        return {"results": results}

    @app.get("/config")
    def get_config(self) -> dict:
        return self.config.model_dump(mode="json")

    @app.get("/healthz")
    def healthz(self) -> str:
        return "ok"

    def score_items(self, items: list[dict]) -> list[dict]:
        """Deployment-handle entry point (no HTTP): the same scoring, ValueError on bad items."""
        return score_items(self.fn, items)


def build_app(config: RewardConfig | None = None, replicas: int = 1):
    """The bound application, ready for ``serve.run``."""
    return RewardService.options(num_replicas=replicas).bind((config or RewardConfig()).model_dump(mode="json"))


def start(
    config: RewardConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    name: str = "rewards",
    blocking: bool = False,
):
    """Start Serve's HTTP proxy on host:port and deploy the service under ``/rewards``; returns the
    deployment handle."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(config, replicas), name=name, route_prefix="/rewards", blocking=blocking)


def app_builder(args: dict):
    """Ray Serve application builder for ``serveConfigV2`` / ``serve run`` (``import_path:
    rewards.service:app_builder``); ``args``: ``{"config": {...RewardConfig...}, "replicas": N}``."""
    return build_app(RewardConfig.model_validate(args.get("config") or {}), int(args.get("replicas", 1)))
