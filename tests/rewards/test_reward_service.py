"""The reward service on real Ray Serve: HTTP and handle equal the local function; bad requests get
4xx with a message and the service keeps serving; concurrent clients lose nothing."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from m3ad_rl.data.simulated_responses import make_records  # noqa: E402
from rewards import RewardFunction, load_reward_config  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m 'not slow'` skips it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    from ray import serve

    from rewards.service import start

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    cfg = load_reward_config(overrides=["reflection.preset=b"])
    handle = start(cfg, port=port, replicas=2, batch_max_requests=64)
    yield f"http://127.0.0.1:{port}/rewards", handle, cfg
    serve.shutdown()
    ray.shutdown()


def _items(n, seed=0):
    return [
        {"id": r["id"], "response": r["response"], "ground_truth": r["ground_truth"]}
        for r in make_records(n, seed=seed)
    ]


def test_http_and_handle_equal_the_local_function(service):
    url, handle, cfg = service
    items = _items(40)
    res = httpx.post(f"{url}/score", json={"items": items}, timeout=60)
    assert res.status_code == 200
    fn = RewardFunction(cfg)
    expected = [{"id": i["id"], **fn(i["response"], i["ground_truth"]).to_dict()} for i in items]
    assert res.json()["results"] == expected
    assert handle.score_items.remote(items).result() == expected
    assert httpx.get(f"{url}/config").json()["reflection"]["preset"] == "b"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 422, None),
        (json.dumps({"items": [{"id": "a", "ground_truth": {"label": "normal"}}]}), 422, "response"),
        (
            json.dumps({"items": [{"response": "x", "ground_truth": {"label": "weird"}}]}),
            400,
            "items[0].ground_truth.label must be one of",
        ),
        (
            json.dumps(
                {
                    "items": [
                        {
                            "response": "x",
                            "ground_truth": {
                                "label": "anomalous",
                                "defects": [{"type": "banana", "box": [0, 0, 1, 1]}],
                            },
                        }
                    ]
                }
            ),
            400,
            "'banana' is not a fine type",
        ),
        (json.dumps({"itemz": []}), 422, "itemz"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message_and_serving_goes_on(service, body, status, message):
    url, _, _ = service
    res = httpx.post(f"{url}/score", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert res.status_code == status
    if message:
        assert message in res.text
    ok = httpx.post(f"{url}/score", json={"items": _items(1)}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1


def test_concurrent_clients_nothing_dropped_or_misscored(service):
    url, _, cfg = service
    fn = RewardFunction(cfg)
    items = _items(200, seed=3)
    expected = {i["id"]: fn(i["response"], i["ground_truth"]).score for i in items}

    def client(k):
        got = {}
        with httpx.Client(timeout=60) as c:
            for j in range(25):  # one item per request, as a naive client would
                item = items[(k * 25 + j) % len(items)]
                r = c.post(f"{url}/score", json={"items": [item]})
                r.raise_for_status()
                got[item["id"]] = r.json()["results"][0]["score"]
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    merged = {k: v for r in results for k, v in r.items()}
    assert len(merged) == 200 and all(merged[k] == expected[k] for k in merged)


def test_small_concurrent_requests_are_batched_and_a_bad_one_fails_alone(service):
    """@serve.batch gathers one-response requests into one scoring call (header x-batch-requests > 1
    for some), results equal the local function's, and a malformed request among them gets its 400
    without failing its batch-mates."""
    url, _, cfg = service
    fn = RewardFunction(cfg)
    items = _items(64, seed=5)
    expected = {i["id"]: fn(i["response"], i["ground_truth"]).to_dict() for i in items}
    bad = {"id": "bad", "response": "x", "ground_truth": {"label": "weird"}}
    bodies = [[i] for i in items]
    bodies[17:17] = [[bad]]

    def post(body):
        r = httpx.post(f"{url}/score", json={"items": body}, timeout=60)
        return body[0]["id"], r

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(post, bodies))
    together = []
    for item_id, r in replies:
        if item_id == "bad":
            assert r.status_code == 400 and "items[0].ground_truth.label" in r.text
            continue
        assert r.status_code == 200
        (got,) = r.json()["results"]
        assert {k: v for k, v in got.items() if k != "id"} == expected[item_id]
        together.append(int(r.headers["x-batch-requests"]))
    assert max(together) > 1, together
