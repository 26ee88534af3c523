"""Shared piece of the HTTP clients (captioner, OpenAI engine): reading a server's Retry-After."""

from __future__ import annotations

import email.utils
import time

import httpx


def retry_after_seconds(resp: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if it said."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
