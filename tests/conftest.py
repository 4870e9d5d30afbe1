"""Shared fixtures: sample photos (fetched from packages, never committed), the real model,
and a real embedded stack (Tansu broker + a facestream worker with its own local Ray)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from facestream.embedded import EmbeddedStack, private_settings, unique_id
from streams.clients import ImageToSend, request_enrollment
from streams.enrollment import EnrollmentRequest, Photo
from streams.flow import RawRecord, run_flow

DEFAULT_CACHE = Settings().cache_dir
BASIS = "test: sample photos of public figures from public packages"
unique = unique_id  # test ids and app ids: a prefix and a random suffix


@pytest.fixture(scope="session")
def samples() -> Path:
    from facestream.samples import ensure_samples

    return ensure_samples(DEFAULT_CACHE)


@pytest.fixture(scope="session")
def face_model():
    from actors.models import load_face_model

    return load_face_model(Settings())


def embedded_settings(run_dir: Path, **overrides: object) -> Settings:
    """Settings for a private embedded stack: free broker port, own app id and gallery."""
    return private_settings(Settings(), run_dir, app_prefix="facestream-test", **overrides)


class Pipeline:
    """A running embedded stack plus helpers to drive it the way a user does."""

    def __init__(self, settings: Settings, stack: EmbeddedStack) -> None:
        self.settings, self.stack = settings, stack

    def run(
        self, images: list[ImageToSend | RawRecord], timeout_s: float = 120.0
    ) -> dict[str, tuple]:
        """Produce ``images``; image_id -> (kind, event) once every id has an outcome."""
        report = asyncio.run(run_flow(self.settings, images, timeout_s))
        missing = report.missing({img.image_id for img in images})
        assert not missing, f"no outcome for {sorted(missing)}\n{self.stack.workers[0].log_tail()}"
        return report.outcomes

    def one(self, image: ImageToSend) -> tuple[str, dict]:
        return self.run([image])[image.image_id]

    def enroll(self, request: EnrollmentRequest) -> dict:
        # The first request of a stack also waits for its worker to start (Ray, the model
        # replicas, the consumer group): on a loaded 2-core runner beside another stack,
        # minutes. Only a failure waits it out, and a worker that exited fails it at once.
        return asyncio.run(self._answered_while_a_worker_runs(request))

    async def _answered_while_a_worker_runs(self, request: EnrollmentRequest) -> dict:
        reply = asyncio.ensure_future(request_enrollment(self.settings, request, 300.0))
        while not reply.done():
            await asyncio.wait({reply}, timeout=1.0)
            workers = self.stack.workers
            if not reply.done() and workers and not any(w.alive() for w in workers):
                reply.cancel()
                raise AssertionError(
                    f"every worker exited before the enrolment was answered; the last one's"
                    f" log ends:\n{workers[-1].log_tail()}"
                )
        return reply.result()

    def enroll_photos(self, identity: str, *paths: Path) -> dict:
        photos = tuple(Photo(p.name, p.read_bytes()) for p in paths)
        reply = self.enroll(EnrollmentRequest("enroll", identity, None, photos, basis=BASIS))
        assert reply["ok"], reply
        return reply


@pytest.fixture(scope="session")
def pipeline(samples: Path) -> Iterator[Pipeline]:
    run_dir = Path(tempfile.mkdtemp(prefix="fst-"))
    # Small limits so that the byte and pixel checks are cheap to trigger.
    # The session's tests enrol the few sample people under many names: duplicates allowed
    # here (the duplicate check runs on its own stack, tests/integration/test_bulk_enroll.py).
    settings = embedded_settings(
        run_dir,
        limits__max_bytes=3_000_000,
        limits__max_pixels=20_000_000,
        privacy__allow_duplicate_faces=True,
    )
    with EmbeddedStack(settings, run_dir) as stack:
        p = Pipeline(settings, stack)
        p.enroll_photos("obama", samples / "obama.jpg")
        p.enroll_photos("yao-ming", samples / "yaoming.jpg")
        yield p
