"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny offline Qwen3-VL (small vocabulary), built once per test session."""
    pytest.importorskip("transformers")
    from m3ad_rl.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 API (moto) on 127.0.0.1 and an empty bucket, as production's s3:// datasets see it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    # moto keeps its buckets in process-global state, so a second module's server sees the first's
    # bucket: a fresh name per fixture instance keeps each module's bucket empty.
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()
