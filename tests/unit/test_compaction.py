"""The enrolment log's design, without a broker: Kafka's compaction rule (Tansu never
compacts, so the tests apply it themselves with ``kafka_compaction``), the state records the
worker writes (before its gallery write; tombstones for every key of an erased person), the
replay that rebuilds a gallery from what compaction leaves, the declared topic configs, and
the stall gauge's rule."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.gallery.base import point_id
from actors.gallery.edge import EdgeGallery
from core.faces import DetectedFace, ImageFaces
from core.imaging import ImageRejected
from core.settings import Settings
from facestream.reindex import Replay
from streams.clients import LogRecord, live_records
from streams.enrollment import EnrollmentRequest, Photo, PhotoRecord, split_state_key, state_key
from streams.metrics import PartitionProgress
from streams.processor import EnrollmentProcessor
from streams.topics import (
    DAY_MS,
    compare_configs,
    critical_configs,
    state_topic,
    topic_configs,
    topic_specs,
)

DIM = 4
# The fake faces are all alike: the duplicate check (tests/unit/test_enrollment.py) is off.
SETTINGS = Settings().override(retry__backoff_s=0.0, privacy__allow_duplicate_faces=True)


def kafka_compaction(records: list[LogRecord]) -> list[LogRecord]:
    """What a fully compacted Kafka log holds (every segment cleaned, tombstones older than
    ``delete.retention.ms``): the record with the highest offset of each key, unless that one
    is a tombstone; in offset order. Written from Kafka's documentation, independently of
    ``streams.clients.live_records`` (which the replay uses), so that each checks the other."""
    newest: dict[bytes, LogRecord] = {}
    for rec in records:
        if rec.key is None:
            continue  # a compacted topic refuses keyless records
        if rec.key not in newest or rec.offset > newest[rec.key].offset:
            newest[rec.key] = rec
    return sorted((r for r in newest.values() if r.value is not None), key=lambda r: r.offset)


def test_compaction_keeps_the_last_record_of_each_key_and_drops_tombstoned_keys() -> None:
    log = [
        LogRecord(0, b"a", b"1"),
        LogRecord(1, b"b", b"1"),
        LogRecord(2, b"a", b"2"),
        LogRecord(3, b"b", None),
        LogRecord(4, None, b"keyless"),
        LogRecord(5, b"c", None),
        LogRecord(6, b"c", b"back"),
    ]
    assert [(r.offset, r.key) for r in kafka_compaction(log)] == [(2, b"a"), (6, b"c")]


def test_live_records_agree_with_the_compaction_rule_on_random_logs() -> None:
    rng = random.Random(14)
    for _ in range(200):
        log = [
            LogRecord(i, rng.choice([b"k1", b"k2", b"k3", None]), rng.choice([b"v", None]))
            for i in range(rng.randrange(0, 30))
        ]
        assert sorted(live_records(log).values(), key=lambda r: r.offset) == kafka_compaction(log)


def test_per_identity_keys_lost_photos_under_compaction_per_photo_keys_do_not() -> None:
    """Issue #14: keyed by identity, a second enrolment or a refused request replaced the
    accepted record. Keyed per photo, every accepted photo survives."""
    first, second = Photo("a.jpg", b"A"), Photo("b.jpg", b"B")
    by_identity = [
        LogRecord(0, b"ana", b"enrol a.jpg"),
        LogRecord(1, b"ana", b"enrol b.jpg"),
        LogRecord(2, b"ana", b"refused c.jpg"),
    ]
    assert [r.value for r in kafka_compaction(by_identity)] == [b"refused c.jpg"]
    per_photo = [
        LogRecord(0, state_key("ana", first.sha256).encode(), b"a"),
        LogRecord(1, state_key("ana", second.sha256).encode(), b"b"),
    ]  # the refused request writes no state record
    assert [r.value for r in kafka_compaction(per_photo)] == [b"a", b"b"]


def test_state_keys_split_back_whatever_the_identity_holds() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    for identity in ("ana", "a/b", "dept/ana/2", "ünïcode"):
        assert split_state_key(state_key(identity, sha).encode()) == (identity, sha)
    for bad in (b"ana", b"/" + sha.encode(), b"ana/short"):
        with pytest.raises(ValueError):
            split_state_key(bad)


def test_photo_records_round_trip_and_refuse_a_wrong_sha() -> None:
    record = PhotoRecord("a/b", Photo("p.jpg", b"\x00\xff"), "Ana", "consent:1", "r1", "m")
    assert PhotoRecord.decode(record.encode()) == record
    tampered = record.encode().replace(record.photo.sha256.encode(), b"0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        PhotoRecord.decode(tampered)


# -- the worker's side: state records before the gallery write ---------------------------------


def faces(code: float) -> ImageFaces:
    emb = np.zeros((1, DIM), np.float32)
    emb[0, 0], emb[0, 1] = 1.0, code
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return ImageFaces([DetectedFace([0.0, 0.0, 100.0, 100.0], [[1.0, 1.0]] * 5, 0.9)], emb)


class FakeModel:
    """Photo bytes b"face:<x>" hold one face (embedding from x); anything else none."""

    model_id, embedding_dim, providers = "fake/model@1", DIM, ["CPU"]

    def analyze_bytes(self, blobs: list[bytes], limits: Any) -> list[Any]:
        out: list[Any] = []
        for blob in blobs:
            if blob.startswith(b"face:"):
                out.append(faces(float(blob[5:])))
            elif blob == b"junk":
                out.append(ImageRejected("not_an_image", "nope"))
            else:
                out.append(ImageFaces())
        return out


class Compute:
    """``core.compute.Compute`` over a real gallery and the fake model; records the order of
    events (publish, add, delete)."""

    def __init__(self, gallery: Any, events: list[str], fail_add: bool = False) -> None:
        self.model = FakeModel()
        self.model_id, self.embedding_dim, self.providers = self.model.model_id, DIM, ["CPU"]
        self.gallery, self.events, self.fail_add = gallery, events, fail_add

    async def analyze(self, blobs: list[bytes]) -> list[Any]:
        return self.model.analyze_bytes(blobs, None)

    async def add(self, *args: Any) -> list[str]:
        self.events.append("add")
        if self.fail_add:
            raise RuntimeError("gallery broke")
        return self.gallery.add(*args)

    async def show(self, identity: str) -> list[dict[str, Any]]:
        return self.gallery.show(identity)

    async def search(self, embeddings: np.ndarray, top_k: int) -> list[Any]:
        return self.gallery.search(embeddings, top_k)

    async def delete(self, identity: str) -> int:
        self.events.append("delete")
        return self.gallery.delete(identity)


def photo(name: str, code: float) -> Photo:
    return Photo(name, f"face:{code}".encode())


def request(op: str, identity: str, *photos: Photo) -> bytes:
    return EnrollmentRequest(op, identity, identity.title(), photos, basis="consent:1").encode()


class Worker:
    """An ``EnrollmentProcessor`` as the enroll agent runs it, writing a state log."""

    def __init__(self, gallery: Any, fail_add: bool = False) -> None:
        self.events: list[str] = []
        self.log: list[LogRecord] = []

        async def publish(records: list[tuple[str, bytes | None]]) -> None:
            self.events.append(f"publish {len(records)}")
            for key, value in records:
                self.log.append(LogRecord(len(self.log), key.encode(), value))

        self.compute = Compute(gallery, self.events, fail_add)
        self.processor = EnrollmentProcessor(SETTINGS, self.compute, publish)

    def send(self, raw: bytes) -> dict[str, Any]:
        result = asyncio.run(self.processor.process(raw))
        assert result is not None
        return result.ack


def points(gallery: Any) -> set[tuple[str, str, str]]:
    """Every point: (id, identity, photo sha256)."""
    out = set()
    for row in gallery.identities():
        for p in gallery.show(row["identity"]):
            out.add((point_id(p["identity"], p["photo_sha256"]), p["identity"], p["photo_sha256"]))
    return out


def test_state_records_are_published_before_the_gallery_write(tmp_path: Path) -> None:
    gallery = EdgeGallery(tmp_path / "g", FakeModel.model_id, DIM)
    worker = Worker(gallery)
    assert worker.send(request("enroll", "ana", photo("a", 0.1), photo("b", 0.2)))["ok"]
    assert worker.events == ["publish 2", "add"]
    refused = worker.send(request("enroll", "ana", photo("c", 0.3), Photo("blank", b"x")))
    assert not refused["ok"] and worker.events == ["publish 2", "add"]  # nothing written
    erased = worker.send(EnrollmentRequest("delete", "ana").encode())
    assert erased["tombstones"] == 2 and worker.events[-2:] == ["publish 2", "delete"]
    assert kafka_compaction(worker.log) == []  # every photo record of the person removed
    gallery.close()


def test_a_failed_gallery_write_tombstones_the_records_it_published(tmp_path: Path) -> None:
    gallery = EdgeGallery(tmp_path / "g", FakeModel.model_id, DIM)
    worker = Worker(gallery)
    assert worker.send(request("enroll", "ana", photo("a", 0.1)))["ok"]
    worker.compute.fail_add = True
    reply = worker.send(request("enroll", "ana", photo("a", 0.1), photo("b", 0.2)))
    assert reply["error"]["reason"] == "processing_failed"
    # a.jpg was already held (an earlier enrolment): its record stays; b.jpg's is tombstoned.
    live = kafka_compaction(worker.log)
    assert [split_state_key(r.key)[1] for r in live] == [photo("a", 0.1).sha256]
    gallery.close()


# -- the replay ---------------------------------------------------------------------------------


def test_replaying_the_compacted_log_equals_the_live_gallery_point_for_point(
    tmp_path: Path,
) -> None:
    live = EdgeGallery(tmp_path / "live", FakeModel.model_id, DIM)
    worker = Worker(live)
    assert worker.send(request("enroll", "ana", photo("a1", 0.1), photo("a2", 0.2)))["ok"]
    assert worker.send(request("enroll", "ana", photo("a3", 0.3)))["ok"]  # more photos
    assert not worker.send(request("enroll", "ana", Photo("blank", b"x")))["ok"]  # refused
    assert worker.send(request("enroll", "bo", photo("b1", 0.4)))["ok"]
    assert worker.send(EnrollmentRequest("delete", "bo").encode())["ok"]
    assert worker.send(EnrollmentRequest("delete", "cy").encode())["ok"]  # nobody: no keys
    assert worker.send(request("enroll", "cy", photo("c1", 0.5)))["ok"]
    assert worker.send(EnrollmentRequest("delete", "cy").encode())["ok"]
    assert worker.send(request("enroll", "cy", photo("c2", 0.6)))["ok"]  # back, new photo

    fresh = EdgeGallery(tmp_path / "fresh", FakeModel.model_id, DIM)
    replay = Replay(SETTINGS, FakeModel(), fresh)
    asyncio.run(replay.apply_records(kafka_compaction(worker.log)))
    assert points(fresh) == points(live)
    assert {p[1] for p in points(fresh)} == {"ana", "cy"} and len(points(fresh)) == 4
    # The uncompacted log (the head Kafka has not cleaned yet, or Tansu) replays the same.
    other = EdgeGallery(tmp_path / "other", FakeModel.model_id, DIM)
    asyncio.run(Replay(SETTINGS, FakeModel(), other).apply_records(worker.log))
    assert points(other) == points(live)
    for g in (live, fresh, other):
        g.close()


def test_a_resumed_replay_removes_what_the_log_erased_and_adds_only_the_rest(
    tmp_path: Path,
) -> None:
    live = EdgeGallery(tmp_path / "live", FakeModel.model_id, DIM)
    worker = Worker(live)
    worker.send(request("enroll", "ana", photo("a1", 0.1)))
    worker.send(request("enroll", "bo", photo("b1", 0.4)))
    partial = EdgeGallery(tmp_path / "partial", FakeModel.model_id, DIM)
    asyncio.run(Replay(SETTINGS, FakeModel(), partial).apply_records(list(worker.log)))
    worker.send(EnrollmentRequest("delete", "bo").encode())  # while "the run was down"
    worker.send(request("enroll", "ana", photo("a2", 0.2)))
    replay = Replay(SETTINGS, FakeModel(), partial)
    asyncio.run(replay.apply_records(worker.log))
    assert points(partial) == points(live)
    assert replay.counts == {"identities removed (erased)": 1, "photos added": 1}
    live.close()
    partial.close()


def test_a_photo_the_model_refuses_is_reported_not_retried(tmp_path: Path) -> None:
    gallery = EdgeGallery(tmp_path / "g", FakeModel.model_id, DIM)
    record = PhotoRecord("ana", Photo("junk.jpg", b"junk"))
    log = [LogRecord(0, record.key.encode(), record.encode())]
    replay = Replay(SETTINGS, FakeModel(), gallery)
    asyncio.run(replay.apply_records(log))
    assert gallery.size() == 0 and replay.counts == {"photos refused by this model": 1}
    assert replay.plan() == {}  # the same record is not embedded again at the next round
    gallery.close()


# -- the declared topic configs -------------------------------------------------------------


def test_every_topic_has_a_declared_policy_and_the_deadlines_hold() -> None:
    specs, configs = topic_specs(SETTINGS), topic_configs(SETTINGS)
    assert set(configs) == set(specs)
    t = SETTINGS.topics
    for name, config in configs.items():
        assert config["cleanup.policy"] in ("delete", "compact"), name
        if config["cleanup.policy"] == "delete":
            assert int(config["retention.ms"]) > 0, name
    state = configs[state_topic(SETTINGS)]
    assert state["cleanup.policy"] == "compact"  # never deleted by time: the gallery's truth
    # A tombstoned photo, and an enrolment request, leave the broker within 24 h.
    assert int(state["max.compaction.lag.ms"]) + int(state["segment.ms"]) <= DAY_MS
    requests = configs[t.enrollments]
    assert requests["cleanup.policy"] == "delete"
    assert int(requests["retention.ms"]) + int(requests["segment.ms"]) <= DAY_MS
    assert int(configs[t.audit]["retention.ms"]) == 400 * DAY_MS
    assert specs[state_topic(SETTINGS)] == specs[t.enrollments] == 1


def test_config_mismatches_are_found_and_the_dangerous_ones_are_critical() -> None:
    declared = topic_configs(SETTINGS)
    assert compare_configs(declared, declared) == []
    t = SETTINGS.topics
    found = {name: dict(c) for name, c in declared.items()}
    found[t.enrollments]["cleanup.policy"] = "compact"  # the old layout
    found[t.matches]["retention.ms"] = "1"
    del found[t.dlq]["retention.ms"]  # Tansu: a config the topic was not created with
    mismatches = {
        (m.topic, m.config): m for m in compare_configs(declared, found, critical_configs(SETTINGS))
    }
    assert set(mismatches) == {
        (t.enrollments, "cleanup.policy"),
        (t.matches, "retention.ms"),
        (t.dlq, "retention.ms"),
    }
    assert mismatches[(t.enrollments, "cleanup.policy")].critical
    assert not mismatches[(t.matches, "retention.ms")].critical
    assert not mismatches[(t.dlq, "retention.ms")].critical
    assert "unset" in str(mismatches[(t.dlq, "retention.ms")])


# -- the stall gauge --------------------------------------------------------------------------


def test_a_partition_is_stalled_only_with_lag_and_no_progress_for_the_threshold() -> None:
    now = [0.0]
    progress = PartitionProgress(60.0, clock=lambda: now[0])
    assert progress.update("p0", end=10, position=0) == (10, False)  # lag from the start
    now[0] = 59.0
    assert progress.update("p0", end=12, position=0) == (12, False)
    now[0] = 60.0
    assert progress.update("p0", end=12, position=0) == (12, True)
    assert progress.update("p0", end=12, position=5) == (7, False)  # it moved
    now[0] = 200.0
    assert progress.update("p0", end=5, position=5) == (0, False)  # idle, nothing waiting
    progress.forget("p0")
    assert progress.update("p0", end=9, position=5) == (4, False)
