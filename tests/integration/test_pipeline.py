"""End to end on real components: Tansu broker, Faust worker, Ray actors, real models and
photos, the embedded Qdrant engine. Each test produces images the way a user does and reads
the outcome events back from the matches and DLQ topics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from facestream.demo import no_face_png
from streams.clients import ImageToSend
from streams.enrollment import EnrollmentRequest, Photo
from tests.conftest import BASIS, Pipeline, unique

pytestmark = pytest.mark.integration
SCHEMAS = Path(__file__).parents[2] / "core" / "schemas"


def _bytes(samples: Path, name: str) -> bytes:
    return (samples / name).read_bytes()


def image(samples: Path, name: str) -> ImageToSend:
    return ImageToSend(unique(name.split(".")[0]), (samples / name).read_bytes(), "test")


def validate(kind: str, event: dict) -> None:
    name = "match-event.v1.1.json" if kind == "match" else "dlq-event.v1.json"
    jsonschema.validate(event, json.loads((SCHEMAS / name).read_text()))


def test_enrolled_person_is_matched(pipeline: Pipeline, samples: Path) -> None:
    results = pipeline.run([image(samples, "obama2.jpg"), image(samples, "obama3.jpg")])
    for kind, event in results.values():
        validate(kind, event)
        assert kind == "match"
        (face,) = event["faces"]
        assert face["decision"] == "match" and face["identity"] == "obama"
        assert face["similarity"] >= event["threshold"]
        assert face["candidates"][0] == {"identity": "obama", "similarity": face["similarity"]}
        assert event["source"] == "test" and event["model"].startswith("buffalo_s/")


def test_stranger_is_unknown(pipeline: Pipeline, samples: Path) -> None:
    kind, event = pipeline.one(image(samples, "biden2.jpg"))
    validate(kind, event)
    (face,) = event["faces"]
    assert face["decision"] == "unknown" and face["identity"] is None
    assert face["similarity"] < event["threshold"]


def test_group_photo_reports_every_face(pipeline: Pipeline, samples: Path) -> None:
    kind, event = pipeline.one(image(samples, "players.jpg"))
    validate(kind, event)
    faces = event["faces"]
    assert len(faces) == 22
    matched = [f for f in faces if f["decision"] == "match"]
    assert [f["identity"] for f in matched] == ["yao-ming"]
    assert all(len(f["bbox"]) == 4 and len(f["landmarks"]) == 5 for f in faces)


def test_photo_without_face_yields_empty_faces(pipeline: Pipeline) -> None:
    kind, event = pipeline.one(ImageToSend(unique("landscape"), no_face_png(), "test"))
    validate(kind, event)
    assert kind == "match" and event["faces"] == []


def test_missing_image_id_header_defaults_to_topic_partition_offset(
    pipeline: Pipeline, samples: Path
) -> None:
    import asyncio

    from streams.clients import outcome_topics, producer, read_outcomes, tail

    settings = pipeline.settings
    key = unique("camera")

    async def go() -> dict:
        async with tail(settings, outcome_topics(settings)) as consumer:
            async with producer(settings) as p:
                meta = await p.send_and_wait(
                    settings.topics.images, (samples / "obama2.jpg").read_bytes(), key=key.encode()
                )
            want = f"{settings.topics.images}/{meta.partition}/{meta.offset}"
            async for _, event in read_outcomes(settings, consumer, 120):
                if event["image_id"] == want:
                    return event
        raise AssertionError("no event")

    event = asyncio.run(go())
    assert event["source"] == key and event["faces"][0]["identity"] == "obama"


def test_enrolment_is_acknowledged_and_bad_photos_are_refused(
    pipeline: Pipeline, samples: Path
) -> None:
    def enroll(*photos: tuple[str, bytes]) -> dict:
        req = EnrollmentRequest(
            "enroll",
            unique("person"),
            "Someone",
            tuple(Photo(n, d) for n, d in photos),
            basis=BASIS,
        )
        return pipeline.enroll(req)

    good = enroll(("biden.jpg", (samples / "biden.jpg").read_bytes()))
    assert good["ok"] and good["photos"] == 1 and good["model"].startswith("buffalo_s/")
    # Leave the gallery as we found it (the deletion test needs Biden unknown).
    assert pipeline.enroll(EnrollmentRequest("delete", good["identity"]))["removed"] == 1
    several = enroll(
        ("ok.jpg", (samples / "biden.jpg").read_bytes()),
        ("group.jpg", (samples / "t1.jpg").read_bytes()),
    )
    assert not several["ok"]
    assert (
        several["error"]["reason"] == "multiple_faces" and several["error"]["photo"] == "group.jpg"
    )
    none = enroll(("landscape.png", no_face_png()))
    assert none["error"]["reason"] == "no_face" and none["error"]["photo"] == "landscape.png"
    broken = enroll(("notes.txt", b"not a photo"))
    assert broken["error"]["reason"] == "not_an_image"


def test_deleted_person_is_no_longer_matched(pipeline: Pipeline, samples: Path) -> None:
    identity = unique("biden")
    enrolled = pipeline.enroll(
        EnrollmentRequest(
            "enroll",
            identity,
            "Joe Biden",
            (Photo("biden.jpg", (samples / "biden.jpg").read_bytes()),),
            basis=BASIS,
        )
    )
    assert enrolled["ok"]
    _, before = pipeline.one(image(samples, "biden2.jpg"))
    assert before["faces"][0]["identity"] == identity

    deleted = pipeline.enroll(EnrollmentRequest("delete", identity))
    assert deleted["ok"] and deleted["removed"] == 1
    _, after = pipeline.one(image(samples, "biden2.jpg"))
    face = after["faces"][0]
    assert face["decision"] == "unknown"
    assert identity not in [c["identity"] for c in face["candidates"]]


def test_identities_list_reads_the_running_gallery(pipeline: Pipeline) -> None:
    env = {**pipeline.settings.env(), **pipeline.stack.worker_env}
    out = subprocess.run(
        [sys.executable, "-m", "facestream.cli", "identities", "list", "--json"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {"obama", "yao-ming"} <= {r["identity"] for r in rows}


def test_a_worker_leaves_no_folder_in_its_working_directory(pipeline: Pipeline) -> None:
    # Faust's default data folder is `<app id>-data` in the working directory; the worker
    # (started from this one, and running: the fixture's enrolments were answered) has no
    # Faust tables and must not leave one there.
    assert pipeline.stack.workers[0].alive()
    assert not (Path.cwd() / f"{pipeline.settings.kafka.app_id}-data").exists()
