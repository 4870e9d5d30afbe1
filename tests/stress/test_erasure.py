"""Erasure reaches every copy, on the real stack: after `facestream identities delete`, no
gallery generation holds the person (the live one, the one a reindex left behind, the one an
interrupted reindex left half built), and after Kafka's compaction rule no state record
does; the requests topic, which deletes by time, is declared to drop them within 24 h. The
worker's log never names the person."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.gallery import Generation, current_generation, generations, open_model_gallery
from facestream.reindex import Replay
from streams.clients import read_log
from streams.enrollment import split_state_key
from streams.topics import DAY_MS, admin_client, describe_topic_configs, state_topic
from tests.stress.test_delivery import new_stack
from tests.unit.test_compaction import kafka_compaction

pytestmark = pytest.mark.stress


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


def test_erasure_leaves_no_generation_and_no_live_log_record(samples: Path, face_model) -> None:
    stack, pipeline = new_stack(samples)
    try:
        settings = stack.settings
        env = {**os.environ, **settings.env(), **stack.worker_env}
        person = "erase-me-7f3a"
        pipeline.enroll_photos(person, samples / "biden.jpg", samples / "biden2.jpg")
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
