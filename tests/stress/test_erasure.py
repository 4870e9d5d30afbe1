"""Erasure reaches every copy, on the real stack: after `facestream identities delete`, no
gallery generation holds the person (the live one, the one a reindex left behind, the one an
interrupted reindex left half built), no sighting matches them (their face seen before the
enrolment; someone else's sightings stay), and after Kafka's compaction rule no state record
does; the requests topic, which deletes by time, is declared to drop them within 24 h. The
worker's log never names the person."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.gallery import Generation, current_generation, generations, open_model_gallery
from facestream.reindex import Replay
from streams.clients import ImageToSend, read_log
from streams.enrollment import split_state_key
from streams.topics import DAY_MS, admin_client, describe_topic_configs, state_topic
from tests.conftest import unique
from tests.photo_variants import variant
from tests.stress.test_delivery import new_stack
from tests.unit.test_compaction import kafka_compaction

pytestmark = pytest.mark.stress

# The sightings store, read through the running gallery actor: the only process that may
# open it while the worker runs. Queries arrive on stdin; one list of hits per query.
SIGHTINGS_NEAR = """
import json, sys
import numpy as np
from core.settings import Settings
from facestream.gallery_reads import GalleryReader

queries = np.asarray(json.load(sys.stdin), np.float32)
with GalleryReader(Settings()) as reader:
    print(json.dumps([reader.call("sightings.search", q, 10) for q in queries]))
"""


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "facestream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return out


def best_sighting(env: dict[str, str], queries: np.ndarray) -> list[float]:
    """Per query, the similarity of the nearest live sighting (-1: none)."""
    done = subprocess.run(
        [sys.executable, "-c", SIGHTINGS_NEAR],
        input=json.dumps(queries.tolist()),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    hits = json.loads(done.stdout.strip().splitlines()[-1])
    return [max((h["similarity"] for h in row), default=-1.0) for row in hits]


def test_erasure_leaves_no_generation_no_sighting_and_no_live_log_record(
    samples: Path, face_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sightings on (new_stack takes its settings from the environment).
    monkeypatch.setenv("FACESTREAM_SIGHTINGS__ENABLED", "true")
    monkeypatch.setenv("FACESTREAM_SIGHTINGS__TTL_S", "86400")
    stack, pipeline = new_stack(samples)
    try:
        settings = stack.settings
        env = {**os.environ, **settings.env(), **stack.worker_env}
        person = "erase-me-7f3a"
        photos = [samples / "biden.jpg", samples / "biden2.jpg"]
        # Before the enrolment, a camera sees the person (a mirrored copy of one of the photos
        # they will be enrolled with) and someone else: both unknown, both kept as sightings.
        seen = variant(Image.open(photos[1]), "mirror")
        other = (samples / "yaoming.jpg").read_bytes()
        outcomes = pipeline.run(
            [
                ImageToSend(unique("seen-before"), seen, "cam"),
                ImageToSend(unique("other"), other, "cam"),
            ]
        )
        assert {f["decision"] for _, e in outcomes.values() for f in e["faces"]} == {"unknown"}
        # The queries: the person's two photos, then the other's (one face each).
        found = face_model.analyze_bytes(
            [*(p.read_bytes() for p in photos), other], settings.limits
        )
        queries = np.concatenate([r.embeddings for r in found])
        threshold = settings.matching.threshold
        assert all(s >= threshold for s in best_sighting(env, queries))
        pipeline.enroll_photos(person, *photos)
        # The same model: generation 1 goes live (the worker's actor follows), 0 stays.
        rebuilt = json.loads(cli(env, "reindex", "--json").stdout.splitlines()[-1])
        assert rebuilt["live writes fenced"], rebuilt
        live = current_generation(settings)
        assert live is not None and live.number == 1

        async def state() -> list:
            return [r async for r in read_log(settings, state_topic(settings))]

        # What an interrupted reindex leaves: a third generation, half built, nobody's.
        leftover = Generation(live.model_id, 2)
        gallery = open_model_gallery(
            settings, leftover.model_id, face_model.embedding_dim, generation=leftover.number
        )
        try:
            asyncio.run(Replay(settings, face_model, gallery).apply_records(asyncio.run(state())))
        finally:
            gallery.close()
        shown = json.loads(cli(env, "identities", "show", person, "--json").stdout.splitlines()[-1])
        where = {(g["gallery"], g["current"]) for g in shown["gallery"]}
        assert where == {(g.name, g == live) for g in generations(settings)}
        assert len(where) == 3 and shown["live_state_records"] == 2

        cli(env, "identities", "delete", person)

        shown = json.loads(cli(env, "identities", "show", person, "--json").stdout.splitlines()[-1])
        assert shown["gallery"] == [] and shown["live_state_records"] == 0
        *mine, someone_else = best_sighting(env, queries)
        assert all(s < threshold for s in mine), f"a sighting still matches the person: {mine}"
        assert someone_else >= threshold, "someone else's sighting went with the erasure"
        for generation in generations(settings):  # each one opened on its own, too
            if generation == current_generation(settings):
                continue  # held by the running actor: read through it above
            gallery = open_model_gallery(
                settings, generation.model_id, None, generation=generation.number
            )
            try:
                assert gallery.show(person) == [], generation.name
            finally:
                gallery.close()
        after = kafka_compaction(asyncio.run(state()))
        assert all(split_state_key(r.key)[0] != person for r in after)
        assert {split_state_key(r.key)[0] for r in after} == {"obama"}

        async def configs() -> dict:
            admin = admin_client(settings)
            await admin.start()
            try:
                return await describe_topic_configs(admin, [settings.topics.enrollments])
            finally:
                await admin.close()

        requests = asyncio.run(configs())[settings.topics.enrollments]
        assert requests["cleanup.policy"] == "delete"
        assert int(requests["retention.ms"]) + int(requests["segment.ms"]) <= DAY_MS
        log = stack.workers[0].log_path.read_text(errors="replace")
        assert "enrolment delete" in log and person not in log  # request ids only
    finally:
        stack.stop()
