"""The worker consumer gets the profile's fetch wait, not Faust's hard-coded 1500 ms."""

from __future__ import annotations

import asyncio

import pytest

from core.settings import Settings
from streams.app import create_app


class NoCompute:
    model_id, embedding_dim, providers = "m", 4, ["CPU"]


def worker_consumer(settings: Settings) -> object:
    """The aiokafka consumer Faust builds for a worker of this app (not started)."""

    async def build() -> object:  # aiokafka clients are made inside a running loop
        app = create_app(settings, NoCompute())
        return app.consumer._thread._create_worker_consumer(app.transport)

    return asyncio.run(build())


@pytest.mark.parametrize(("profile", "expected"), [("embedded", 20), ("production", 500)])
def test_worker_consumer_fetch_wait_follows_the_broker_profile(profile: str, expected: int) -> None:
    settings = Settings().override(profile=profile)
    client = worker_consumer(settings)
    assert client._fetch_max_wait_ms == expected
    assert client._fetch_max_wait_ms == settings.tuning.fetch_max_wait_ms


def test_fetch_wait_is_a_setting() -> None:
    settings = Settings().override(kafka__tuning__fetch_max_wait_ms=5)
    assert worker_consumer(settings)._fetch_max_wait_ms == 5
