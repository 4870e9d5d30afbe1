"""Shared fixtures: sample photos (fetched from packages, never committed), the real model,
and a real embedded stack (Tansu broker + a facestream worker with its own local Ray)."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facestream.settings import Settings

DEFAULT_CACHE = Settings().cache_dir


@pytest.fixture(scope="session")
def samples() -> Path:
    from facestream.samples import ensure_samples

    return ensure_samples(DEFAULT_CACHE)


@pytest.fixture(scope="session")
def face_model():
    from actors.models import load_face_model

    return load_face_model(Settings())


class Pipeline:
    """A running embedded stack plus helpers to drive it the way a user does."""

    def __init__(self, settings: Settings, stack: Any) -> None:
        self.settings, self.stack = settings, stack

    def run(self, images: list[Any], timeout_s: float = 120.0) -> dict[str, tuple[str, dict]]:
        """Produce ``images`` and return image_id -> (kind, event) once every id has one."""
        from streams.clients import outcome_topics, produce_images, read_outcomes, tail

        wanted = {img.image_id for img in images}

        async def go() -> dict[str, tuple[str, dict]]:
            got: dict[str, tuple[str, dict]] = {}
            async with tail(self.settings, outcome_topics(self.settings)) as consumer:
                await produce_images(self.settings, images)
                async for kind, event in read_outcomes(self.settings, consumer, timeout_s):
                    if event["image_id"] in wanted:
                        got[event["image_id"]] = (kind, event)
                    if wanted <= got.keys():
                        return got
            missing = wanted - got.keys()
            raise AssertionError(
                f"no outcome for {sorted(missing)}\n{self.stack.workers[0].log_tail()}"
            )

        return asyncio.run(go())

    def one(self, image: Any) -> tuple[str, dict]:
        return self.run([image])[image.image_id]

    def enroll(self, request: Any) -> dict:
        from streams.clients import request_enrollment

        return asyncio.run(request_enrollment(self.settings, request, 120.0))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def pipeline(samples: Path) -> Iterator[Pipeline]:
    from facestream.embedded import EmbeddedStack, free_port
    from streams.enrollment import EnrollmentRequest, Photo

    run_dir = Path(tempfile.mkdtemp(prefix="fst-"))
    settings = Settings().override(
        kafka__bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka__app_id=unique("facestream-test"),
        gallery__backend="edge",
        gallery__path=run_dir / "gallery",
        # Small limits so the byte and pixel checks are cheap to trigger.
        limits__max_bytes=3_000_000,
        limits__max_pixels=20_000_000,
    )
    with EmbeddedStack(settings, run_dir, worker_env={"RAY_TMPDIR": str(run_dir)}) as stack:
        p = Pipeline(settings, stack)
        for identity, photo in (("obama", "obama.jpg"), ("yao-ming", "yaoming.jpg")):
            reply = p.enroll(
                EnrollmentRequest(
                    "enroll", identity, None, (Photo(photo, (samples / photo).read_bytes()),)
                )
            )
            assert reply["ok"], reply
        yield p
