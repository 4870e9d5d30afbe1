"""The enrolment log is the gallery's source of truth, on the real stack: what a real Tansu
broker holds in the state topic, read back and put through Kafka's compaction rule (Tansu
never compacts: ``kafka_compaction`` applies it), replays into a fresh gallery equal to the
live one point for point; and the topics carry their declared configs on the broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.gallery.base import point_id
from actors.gallery.edge import EdgeGallery
from facestream.reindex import Replay
from streams.clients import LogRecord, read_log
from streams.enrollment import EnrollmentRequest, Photo, split_state_key
from streams.topics import admin_client, check_topic_configs, describe_topic_configs, state_topic
from streams.topics import topic_configs as declared_configs
from tests.conftest import BASIS, Pipeline, unique
from tests.unit.test_compaction import kafka_compaction

pytestmark = pytest.mark.integration

# Every point of the live gallery, read through the deployment's gallery actor (a separate
# process: Ray's auth settings must not leak into the test process).
DUMP = """
import json
from facestream.gallery_reads import GalleryReader
from core.settings import Settings
with GalleryReader(Settings()) as g:
    rows = g.call("identities")
    print(json.dumps([p for r in rows for p in g.call("show", r["identity"])]))
"""


def live_points(pipeline: Pipeline) -> list[dict]:
    env = {**os.environ, **pipeline.settings.env(), **pipeline.stack.worker_env}
    out = subprocess.run(
        [sys.executable, "-c", DUMP], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def points(payloads: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (point_id(p["identity"], p["photo_sha256"]), p["identity"], p["photo_sha256"])
        for p in payloads
    }


def state_log(pipeline: Pipeline) -> list[LogRecord]:
    async def read() -> list[LogRecord]:
        topic = state_topic(pipeline.settings)
        return [rec async for rec in read_log(pipeline.settings, topic)]

    return asyncio.run(read())


def photos(samples: Path, *names: str) -> tuple[Photo, ...]:
    return tuple(Photo(n, (samples / n).read_bytes()) for n in names)


def test_the_compacted_state_log_replays_into_the_live_gallery(
    pipeline: Pipeline, samples: Path, face_model, tmp_path: Path
) -> None:
    ana, bo, cy = unique("ana"), unique("bo"), unique("cy")

    def send(op: str, identity: str, *names: str) -> dict:
        return pipeline.enroll(
            EnrollmentRequest(op, identity, identity, photos(samples, *names), basis=BASIS)
        )

    try:
        assert send("enroll", ana, "obama.jpg", "obama2.jpg")["ok"]
        assert send("enroll", ana, "obama3.jpg")["ok"]  # a second enrolment: more photos
        refused = send("enroll", ana, "t1.jpg")  # six faces: refused
        assert refused["error"]["reason"] == "multiple_faces"
        assert send("enroll", bo, "biden.jpg")["ok"]
        assert send("delete", bo)["tombstones"] == 1  # erased
        assert send("enroll", cy, "yaoming.jpg")["ok"]
        assert send("delete", cy)["ok"]
        assert send("enroll", cy, "biden2.jpg")["ok"]  # back after the erasure, another photo

        log = state_log(pipeline)
        compacted = kafka_compaction(log)
        mine = {split_state_key(r.key)[0] for r in compacted} & {ana, bo, cy}
        assert mine == {ana, cy}  # the erased person has no record left
        fresh = EdgeGallery(tmp_path / "replayed", face_model.model_id, face_model.embedding_dim)
        try:
            replay = Replay(pipeline.settings, face_model, fresh)
            asyncio.run(replay.apply_records(compacted))
            rebuilt = points([p for row in fresh.identities() for p in fresh.show(row["identity"])])
        finally:
            fresh.close()
        assert not replay.refused
        live = points(live_points(pipeline))
        assert rebuilt == live  # every identity of the session, not only these three
        assert {p for p in live if p[1] == ana} and len({p for p in live if p[1] == ana}) == 3
        assert {p[1] for p in live} & {bo} == set()
        assert len({p for p in live if p[1] == cy}) == 1
    finally:  # the session's other tests search these photos: leave them to their owners
        for identity in (ana, cy):
            send("delete", identity)


def test_topics_carry_their_declared_configs_on_the_broker(pipeline: Pipeline) -> None:
    """Tansu 0.6 answers DescribeConfigs with the configs a topic was created with (Kafka
    would add every default): each declared config is there, with its value."""
    settings = pipeline.settings

    async def read() -> tuple[dict, list]:
        admin = admin_client(settings)
        await admin.start()
        try:
            found = await describe_topic_configs(admin, list(declared_configs(settings)))
            return found, await check_topic_configs(settings, admin)
        finally:
            await admin.close()

    found, mismatches = asyncio.run(read())
    for topic, wanted in declared_configs(settings).items():
        assert {k: found[topic].get(k) for k in wanted} == wanted, topic
    assert mismatches == []
