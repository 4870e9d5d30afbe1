"""Accountable by design, on the real stack: audit records for every decision and change,
erasure that leaves nothing live (gallery and enrolment log), a recorded legal basis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from core.waiting import Deadline
from streams.clients import ImageToSend, tail
from streams.enrollment import EnrollmentRequest, Photo
from tests.conftest import BASIS, Pipeline, unique

pytestmark = pytest.mark.integration
AUDIT_SCHEMA = json.loads(
    (Path(__file__).parents[2] / "core/schemas/audit-event.v1.1.json").read_text()
)


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **pipeline.settings.env(), **pipeline.stack.worker_env}
    return subprocess.run(
        [sys.executable, "-m", "facestream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def show(pipeline: Pipeline, identity: str) -> dict:
    out = cli(pipeline, "identities", "show", identity, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def audit_records(pipeline: Pipeline, keys: set[str], expected: int) -> list[dict]:
    """The audit records under ``keys``, read from the start of the topic until ``expected``
    of them have come (a generous deadline bounds a failure), then on to the topic's end at
    that moment, so that any duplicate already written is counted too."""
    settings = pipeline.settings

    async def read() -> list[dict]:
        found: list[dict] = []
        async with tail(settings, [settings.topics.audit], True) as c:

            async def more() -> None:
                for records in (await c.getmany(timeout_ms=500)).values():
                    found.extend(json.loads(r.value) for r in records if r.key.decode() in keys)

            deadline = Deadline(120)
            while len(found) < expected and not deadline.expired:
                await more()
            end = await c.end_offsets(list(c.assignment()))
            while [tp for tp, offset in end.items() if await c.position(tp) < offset]:
                if deadline.expired:
                    raise TimeoutError(f"could not read {settings.topics.audit} to its end")
                await more()
        return found

    return asyncio.run(read())


def test_erasure_leaves_no_vector_payload_or_live_enrolment_record(
    pipeline: Pipeline, samples: Path
) -> None:
    identity = unique("biden")
    photo = Photo("biden.jpg", (samples / "biden.jpg").read_bytes())
    enrolled = pipeline.enroll(
        EnrollmentRequest("enroll", identity, "Joe Biden", (photo,), basis=BASIS)
    )
    assert enrolled["ok"] and enrolled["basis"] == BASIS
    before = show(pipeline, identity)
    assert [(g["photo"], g["basis"], g["current"]) for g in before["gallery"]] == [
        ("biden.jpg", BASIS, True)
    ]
    assert [(r["op"], r["photos"]) for r in before["enrollment_log"]] == [("enroll", 1)]
    assert [(r["photo"], r["live"]) for r in before["state_log"]] == [("biden.jpg", True)]
    query = ImageToSend(unique("biden2"), (samples / "biden2.jpg").read_bytes(), "test")
    assert pipeline.one(query)[1]["faces"][0]["identity"] == identity

    deleted = pipeline.enroll(EnrollmentRequest("delete", identity))
    assert (deleted["removed"], deleted["photos"], deleted["tombstoned"]) == (
        1,
        ["biden.jpg"],
        True,
    )
    assert deleted["tombstones"] == 1
    after = show(pipeline, identity)
    assert after["gallery"] == []
    # The photo's record is followed by its tombstone: compaction removes both (within 24 h,
    # streams/topics.py); the request itself leaves the requests topic by time.
    state = after["state_log"]
    assert [r["tombstone"] for r in state] == [False, True] and after["live_state_records"] == 0
    assert not any(r["live"] for r in state)
    again = ImageToSend(unique("biden2"), (samples / "biden2.jpg").read_bytes(), "test")
    face = pipeline.one(again)[1]["faces"][0]
    assert face["decision"] == "unknown" and identity not in str(face["candidates"])

    changes = audit_records(pipeline, {identity}, expected=2)
    for record in changes:
        jsonschema.validate(record, AUDIT_SCHEMA)
    assert [(r["kind"], r["basis"], r["photos"]) for r in changes] == [
        ("enrolment", BASIS, ["biden.jpg"]),
        ("deletion", BASIS, ["biden.jpg"]),
    ]


def test_audit_topic_holds_one_record_per_decision(pipeline: Pipeline, samples: Path) -> None:
    images = [
        ImageToSend(unique(n.split(".")[0]), (samples / n).read_bytes(), "test")
        for n in ("obama2.jpg", "t1.jpg", "players.jpg")
    ]
    images.append(ImageToSend(unique("junk"), b"not a photo", "test"))
    results = pipeline.run(images)
    records = audit_records(pipeline, set(results), expected=len(results))
    assert sorted(r["image_id"] for r in records) == sorted(results)  # exactly one each
    for record in records:
        jsonschema.validate(record, AUDIT_SCHEMA)
        kind, event = results[record["image_id"]]
        assert "bbox" not in json.dumps(record)  # decisions only, no face geometry or pixels
        if kind == "dlq":
            assert (record["kind"], record["reason"]) == ("rejection", "not_an_image")
        else:
            assert record["model"] == event["model"] and record["threshold"] == 0.4
            assert [d["identity"] for d in record["decisions"]] == [
                f["identity"] for f in event["faces"]
            ]


def test_enrolment_without_a_basis_is_refused_by_the_cli(pipeline: Pipeline, samples: Path) -> None:
    out = cli(pipeline, "enroll", unique("nobody"), str(samples / "biden.jpg"))
    assert out.returncode == 2 and "--basis" in out.stderr
