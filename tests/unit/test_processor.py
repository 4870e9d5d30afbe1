"""The processors on ``RayCompute`` over fake handles (the model application's Serve handle, the
gallery actor's): ``.remote()`` returns an awaitable, like Ray and Serve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

import core.events
from actors.cluster import Actors
from actors.compute import RayCompute
from core.events import ImageMeta, encode
from core.faces import Candidate, DetectedFace, ImageFaces
from core.imaging import ImageRejected
from core.settings import Settings
from streams.enrollment import EnrollmentRequest, Photo
from streams.processor import EnrollmentProcessor, EnrollmentResult, ImageProcessor
from streams.records import ImageMessage

DIM = 4
SETTINGS = Settings().override(retry__backoff_s=0.0)
SCHEMAS = Path(core.events.__file__).parent / "schemas"
MATCH = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "match-event.v1.1.json").read_text()))
DLQ = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "dlq-event.v1.json").read_text()))
AUDIT = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "audit-event.v1.1.json").read_text()))


class Method:
    """One remote method: records each call; the awaitable runs ``fn`` (and raises its errors)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)

        async def result() -> Any:
            return self.fn(*args)

        return result()


class FakeModel:
    def __init__(self, fn: Callable[[list[bytes]], list[Any]]) -> None:
        self.analyze = Method(fn)


class FakeGallery:
    """Face ``code`` (first embedding value) is person-<code>, similarity 0.<code>."""

    def __init__(self, removed: int = 0) -> None:
        self.search = Method(
            lambda emb, k: [[Candidate(f"person-{int(v[0])}", float(v[0]) / 10)] for v in emb]
        )
        self.add = Method(lambda *args: ["point-id"])
        self.delete = Method(lambda identity: removed)
        self.show = Method(
            lambda identity: [
                {"identity": identity, "photo": p, "basis": "consent:ref-1"}
                for p in ("b.jpg", "a.jpg")
            ][:removed]
        )

    @property
    def call(self) -> Dispatch:
        return Dispatch(self)


class Dispatch:
    """The gallery actor's one entry point, ``call.remote(method, *args)``, onto the fake's
    per-method recorders."""

    NAMES = {"sightings.record": "record_sightings", "sightings.purge": "purge_sightings"}

    def __init__(self, gallery: FakeGallery) -> None:
        self.gallery = gallery

    def remote(self, method: str, *args: Any) -> Any:
        return getattr(self.gallery, self.NAMES.get(method, method)).remote(*args)


def faces(*codes: int) -> ImageFaces:
    """An analysis whose face k has bbox x1 = codes[k] and embedding[0] = codes[k]."""
    found = [DetectedFace([float(c), 0.0, 10.0, 10.0], [[1.0, 1.0]] * 5, 0.9) for c in codes]
    emb = np.zeros((len(codes), DIM), np.float32)
    emb[:, 0] = codes
    return ImageFaces(found, emb)


def by_blob(table: dict[bytes, ImageFaces | ImageRejected]) -> FakeModel:
    return FakeModel(lambda blobs: [table[b] for b in blobs])


def actors(model: FakeModel, gallery: FakeGallery | None = None) -> Actors:
    return Actors(model, gallery or FakeGallery(), "fake-model", DIM, ["CPU"])


def image_processor(acts: Actors, settings: Settings = SETTINGS) -> ImageProcessor:
    return ImageProcessor(settings, RayCompute(settings, acts))


def msg(image_id: str, data: bytes) -> ImageMessage:
    return ImageMessage(ImageMeta(image_id, source="cam"), data)


def process(proc: ImageProcessor, *messages: ImageMessage) -> list[Any]:
    outcomes = asyncio.run(proc.process(list(messages)))
    for o in outcomes:
        (MATCH if o.kind == "match" else DLQ).validate(json.loads(encode(o.event)))
        AUDIT.validate(json.loads(encode(o.audit)))  # one audit record per image, too
        assert o.audit["image_id"] == o.key
        if o.kind == "match":
            assert [d["decision"] for d in o.audit["decisions"]] == [
                f["decision"] for f in o.event["faces"]
            ]
    return outcomes


def test_batched_candidates_go_back_to_their_images_and_faces() -> None:
    gallery = FakeGallery()
    model = by_blob({b"a": faces(7, 2), b"b": faces(), b"c": faces(5)})
    outcomes = process(
        image_processor(actors(model, gallery=gallery)),
        msg("A", b"a"),
        msg("B", b"b"),
        msg("C", b"c"),
    )
    assert model.analyze.calls == [([b"a", b"b", b"c"],)]  # one model call for the batch
    assert len(gallery.search.calls) == 1  # one gallery search for all three faces
    assert [o.kind for o in outcomes] == ["match", "match", "match"]
    got = {o.key: [(f["bbox"][0], f["identity"]) for f in o.event["faces"]] for o in outcomes}
    assert got == {"A": [(7, "person-7"), (2, None)], "B": [], "C": [(5, "person-5")]}
    assert outcomes[0].event["faces"][1]["similarity"] == 0.2  # below both thresholds


def test_no_faces_anywhere_skips_the_gallery() -> None:
    gallery = FakeGallery()
    outcomes = process(
        image_processor(actors(by_blob({b"a": faces()}), gallery=gallery)), msg("A", b"a")
    )
    assert outcomes[0].event["faces"] == []
    assert gallery.search.calls == []


def test_empty_message_goes_to_dlq_without_reaching_the_model() -> None:
    model = by_blob({})
    outcomes = process(image_processor(actors(model)), msg("E", b""))
    assert [(o.kind, o.key, o.event["reason"]) for o in outcomes] == [("dlq", "E", "empty")]
    assert model.analyze.calls == []


def test_oversized_message_goes_to_dlq_without_reaching_the_model() -> None:
    model = by_blob({b"ok": faces()})
    settings = SETTINGS.override(limits__max_bytes=5)
    outcomes = process(
        image_processor(actors(model), settings), msg("big", b"x" * 6), msg("ok", b"ok")
    )
    assert [o.event.get("reason") for o in outcomes] == ["too_many_bytes", None]
    assert model.analyze.calls == [([b"ok"],)]


def test_model_side_rejection_becomes_dlq() -> None:
    model = by_blob({b"bad": ImageRejected("truncated", "cut off"), b"ok": faces(9)})
    outcomes = process(image_processor(actors(model)), msg("bad", b"bad"), msg("ok", b"ok"))
    assert outcomes[0].kind == "dlq"
    assert (outcomes[0].event["reason"], outcomes[0].event["message"]) == ("truncated", "cut off")
    assert outcomes[1].event["faces"][0]["identity"] == "person-9"


def test_outcomes_come_back_in_input_order() -> None:
    model = by_blob({b"1": faces(5), b"r": ImageRejected("too_small", "tiny"), b"2": faces()})
    ids = ["m1", "empty", "rejected", "m2", "empty2"]
    blobs = [b"1", b"", b"r", b"2", b""]
    outcomes = process(image_processor(actors(model)), *map(msg, ids, blobs))
    assert [o.key for o in outcomes] == ids
    assert [o.event["image_id"] for o in outcomes] == ids
    assert [o.kind for o in outcomes] == ["match", "dlq", "dlq", "match", "dlq"]


def raised_in_actor(exc: Exception) -> RayTaskError:
    """What awaiting a Ray call raises when the actor's own code raised ``exc``."""
    return RayTaskError("analyze", "Traceback (most recent call last): ...", exc)


def failing(calls: list[int]) -> FakeModel:
    def fail(blobs: list[bytes]) -> list[Any]:
        calls.append(len(blobs))
        raise ActorDiedError()  # transient: retried

    return FakeModel(fail)


def test_persistent_failure_isolates_images_then_dlqs_each() -> None:
    calls: list[int] = []
    outcomes = process(
        image_processor(actors(failing(calls))), msg("A", b"a"), msg("E", b""), msg("B", b"b")
    )
    # The batch of two is tried 3 times, then each image on its own 3 times.
    assert calls == [2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [(o.key, o.event["reason"]) for o in outcomes] == [
        ("A", "processing_failed"),
        ("E", "empty"),  # rejected before the model call: keeps its own reason
        ("B", "processing_failed"),
    ]
    assert "actor died" in outcomes[0].event["message"]
    assert "\n" not in outcomes[0].event["message"]  # one readable line


def test_poison_image_goes_to_dlq_alone_and_its_batch_mates_are_matched() -> None:
    def model(blobs: list[bytes]) -> list[Any]:
        if b"poison" in blobs:
            raise raised_in_actor(RuntimeError("OpenCV assertion in the model"))
        return [faces(5) for _ in blobs]

    outcomes = process(
        image_processor(actors(FakeModel(model))),
        msg("A", b"a"),
        msg("P", b"poison"),
        msg("B", b"b"),
    )
    assert [o.kind for o in outcomes] == ["match", "dlq", "match"]
    assert outcomes[1].event["reason"] == "processing_failed"


def test_retry_count_follows_settings() -> None:
    calls: list[int] = []
    settings = SETTINGS.override(retry__attempts=5)
    process(image_processor(actors(failing(calls)), settings), msg("A", b"a"))
    assert len(calls) == 5


def failing_first(*errors: Exception) -> FakeModel:
    """A model whose first calls raise ``errors`` (one each), then answer."""
    pending = list(errors)

    def model(blobs: list[bytes]) -> list[Any]:
        if pending:
            raise pending.pop(0)
        return [faces(8) for _ in blobs]

    return FakeModel(model)


def test_replica_died_or_serve_full_is_retried_and_recovers() -> None:
    # A replica lost mid-call (Serve sends the retry to another, or waits for its
    # replacement), Serve's queue full, the chosen replica gone before the call reached it.
    full = BackPressureError(num_queued_requests=9, max_queued_requests=8)
    model = failing_first(ActorDiedError(), full, ReplicaUnavailableError("r1"))
    settings = SETTINGS.override(retry__attempts=4)
    (outcome,) = process(image_processor(actors(model), settings), msg("A", b"a"))
    assert len(model.analyze.calls) == 4
    assert outcome.event["faces"][0]["identity"] == "person-8"


def test_unreachable_gallery_is_waited_for_not_turned_into_dlq_events() -> None:
    gallery = FakeGallery()
    failures = iter([raised_in_actor(ConnectionError("qdrant down"))] * 7)

    def search(emb: np.ndarray, k: int) -> list[list[Candidate]]:
        for exc in failures:
            raise exc
        return [[Candidate("person-1", 0.9)] for _ in emb]

    gallery.search = Method(search)
    outcomes = process(
        image_processor(actors(by_blob({b"a": faces(1)}), gallery=gallery)), msg("A", b"a")
    )
    assert len(gallery.search.calls) == 8  # more than retry.attempts: it never gives up
    assert outcomes[0].kind == "match" and outcomes[0].event["faces"][0]["identity"] == "person-1"


def test_permanent_gallery_error_dlqs_its_batch_at_once_and_the_next_batch_is_matched() -> None:
    gallery = FakeGallery()
    failures = iter([raised_in_actor(ValueError("vector dimension 4 != gallery's 512"))])

    def search(emb: np.ndarray, k: int) -> list[list[Candidate]]:
        for exc in failures:
            raise exc
        return [[Candidate("person-1", 0.9)] for _ in emb]

    gallery.search = Method(search)
    proc = image_processor(actors(by_blob({b"a": faces(1), b"b": faces(1)}), gallery=gallery))
    first = process(proc, msg("A", b"a"), msg("B", b"b"))
    assert len(gallery.search.calls) == 1  # permanent: not retried, the partition goes on
    assert [(o.kind, o.event["reason"]) for o in first] == [("dlq", "processing_failed")] * 2
    assert "dimension" in first[0].event["message"] and "\n" not in first[0].event["message"]
    (second,) = process(proc, msg("C", b"a"))
    assert second.kind == "match" and second.event["faces"][0]["identity"] == "person-1"


# -- enrolment ------------------------------------------------------------------------------


def enrollment(
    model: FakeModel, gallery: FakeGallery, raw: bytes | None, settings: Settings = SETTINGS
) -> EnrollmentResult | None:
    proc = EnrollmentProcessor(settings, RayCompute(settings, actors(model, gallery=gallery)))
    result = asyncio.run(proc.process(raw))
    if result is not None:
        AUDIT.validate(json.loads(encode(result.audit)))
    return result


def enroll(model: FakeModel, gallery: FakeGallery, raw: bytes | None) -> dict[str, Any] | None:
    result = enrollment(model, gallery, raw)
    return result.ack if result else None


def enrol_request(
    *photos: tuple[str, bytes], basis: str | None = "consent:ref-1"
) -> EnrollmentRequest:
    return EnrollmentRequest(
        "enroll", "ana", "Ana", tuple(Photo(n, d) for n, d in photos), "r1", basis
    )


# Codes under 4: similarities under the threshold, so no face is another person's duplicate.
PHOTOS = {b"one": faces(1), b"none": faces(), b"two": faces(1, 2), b"one-b": faces(3)}


def test_enrolment_refuses_a_photo_without_a_face() -> None:
    gallery = FakeGallery()
    req = enrol_request(("front.jpg", b"one"), ("blank.jpg", b"none"))
    reply = enroll(by_blob(PHOTOS), gallery, req.encode())
    assert reply["ok"] is False
    assert (reply["error"]["reason"], reply["error"]["photo"]) == ("no_face", "blank.jpg")
    assert "blank.jpg" in reply["error"]["message"]
    assert gallery.add.calls == []  # all photos or none


def test_enrolment_refuses_a_photo_with_several_faces() -> None:
    gallery = FakeGallery()
    reply = enroll(by_blob(PHOTOS), gallery, enrol_request(("group.jpg", b"two")).encode())
    assert (reply["error"]["reason"], reply["error"]["photo"]) == ("multiple_faces", "group.jpg")
    assert gallery.add.calls == []


def test_enrolment_refuses_an_undecodable_photo() -> None:
    model = by_blob({b"junk": ImageRejected("not_an_image", "nope")})
    reply = enroll(model, FakeGallery(), enrol_request(("x.bin", b"junk")).encode())
    assert (reply["error"]["reason"], reply["error"]["photo"]) == ("not_an_image", "x.bin")


def test_enrolment_without_photos_is_a_bad_request() -> None:
    reply = enroll(by_blob({}), FakeGallery(), enrol_request().encode())
    assert reply["error"]["reason"] == "bad_request"


def test_enrolment_with_one_face_per_photo_adds_to_the_gallery() -> None:
    gallery = FakeGallery()
    req = enrol_request(("a.jpg", b"one"), ("b.jpg", b"one-b"))
    reply = enroll(by_blob(PHOTOS), gallery, req.encode())
    assert reply["ok"] is True and reply["error"] is None
    assert (reply["request_id"], reply["identity"], reply["photos"]) == ("r1", "ana", 2)
    assert reply["model"] == "fake-model"
    [(identity, name, embeddings, photos, basis)] = gallery.add.calls
    assert (identity, name, basis) == ("ana", "Ana", "consent:ref-1")
    assert embeddings.shape == (2, DIM) and embeddings[:, 0].tolist() == [1, 3]
    assert photos == [{"name": p.name, "sha256": p.sha256} for p in req.photos]


def test_delete_reports_what_it_removed_and_tombstones_the_identity() -> None:
    gallery, model = FakeGallery(removed=2), by_blob({})
    raw = EnrollmentRequest("delete", "ana", request_id="r2").encode()
    result = enrollment(model, gallery, raw)
    reply = result.ack
    assert (reply["ok"], reply["op"], reply["removed"], reply["request_id"]) == (
        True,
        "delete",
        2,
        "r2",
    )
    assert reply["photos"] == ["a.jpg", "b.jpg"] and reply["tombstoned"] is True
    assert result.tombstone == "ana"
    assert (result.audit["kind"], result.audit["basis"]) == ("deletion", "consent:ref-1")
    assert gallery.delete.calls == [("ana",)]
    assert model.analyze.calls == []


def test_enrolment_without_a_legal_basis_is_refused_unless_waived() -> None:
    raw = enrol_request(("a.jpg", b"one"), basis=None).encode()
    gallery = FakeGallery()
    refused = enrollment(by_blob(PHOTOS), gallery, raw)
    assert refused.ack["error"]["reason"] == "missing_basis" and gallery.add.calls == []
    assert refused.audit["kind"] == "enrolment_refused"
    waived = SETTINGS.override(privacy__require_basis=False)
    accepted = enrollment(by_blob(PHOTOS), gallery, raw, waived)
    assert accepted.ack["ok"] and accepted.audit["kind"] == "enrolment"
    assert accepted.audit["photos"] == ["a.jpg"] and accepted.tombstone is None


def test_malformed_record_is_acknowledged_as_bad_request() -> None:
    reply = enroll(by_blob({}), FakeGallery(), b"{not json")
    assert reply["ok"] is False
    assert (reply["error"]["reason"], reply["op"], reply["identity"]) == (
        "bad_request",
        "unknown",
        None,
    )


def test_refused_request_is_acked_under_its_own_request_id() -> None:
    raw = EnrollmentRequest("enroll", "", photos=(Photo("a.jpg", b"one"),), request_id="r3")
    reply = enroll(by_blob(PHOTOS), FakeGallery(), raw.encode())
    assert reply["error"]["reason"] == "bad_request"
    assert reply["request_id"] == "r3"


def test_tombstone_gives_no_reply() -> None:
    gallery = FakeGallery()
    assert enroll(by_blob({}), gallery, None) is None
    assert gallery.add.calls == gallery.delete.calls == []


def test_unknown_faces_are_kept_only_when_sightings_are_enabled() -> None:
    def gallery_with_sightings() -> FakeGallery:
        gallery = FakeGallery()
        gallery.record_sightings = Method(lambda emb, metas: len(metas))
        return gallery

    # Face code 1 -> similarity 0.1: unknown; code 9 -> 0.9: a match.
    model = by_blob({b"a": faces(1, 9)})
    off = gallery_with_sightings()
    process(image_processor(actors(model, gallery=off)), msg("A", b"a"))
    assert off.record_sightings.calls == []  # the default: nothing stored about strangers

    on = gallery_with_sightings()
    settings = SETTINGS.override(sightings__enabled=True, sightings__ttl_s=60.0)
    process(image_processor(actors(model, gallery=on), settings), msg("A", b"a"))
    [(vectors, metas)] = on.record_sightings.calls
    assert vectors[:, 0].tolist() == [1] and metas == [{"image_id": "A", "source": "cam"}]
