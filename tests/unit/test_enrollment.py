from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.compute import LocalCompute
from actors.gallery.edge import EdgeGallery
from core.faces import Candidate, DetectedFace, ImageFaces
from core.settings import Settings
from facestream.bulk_enroll import BulkError, Entry, Journal, Summary, _requests, _settle, plan
from streams.enrollment import EnrollmentRequest, Photo, ack, duplicates, split_held
from streams.processor import EnrollmentProcessor


def test_round_trip_preserves_photo_bytes() -> None:
    blob = bytes(range(256))
    req = EnrollmentRequest("enroll", "ana", "Ana B.", (Photo("a.jpg", blob), Photo("b", b"")))
    back = EnrollmentRequest.decode(req.encode())
    assert back == req
    assert back.photos[0].data == blob


def test_encode_carries_schema_and_base64_photos() -> None:
    doc = json.loads(EnrollmentRequest("delete", "ana", request_id="r1").encode())
    assert doc["schema"] == "facestream.enrollment/v1"
    assert (doc["op"], doc["identity"], doc["request_id"], doc["photos"]) == (
        "delete",
        "ana",
        "r1",
        [],
    )
    doc = json.loads(EnrollmentRequest("enroll", "ana", photos=(Photo("p", b"hi"),)).encode())
    assert doc["photos"] == [{"name": "p", "data": base64.b64encode(b"hi").decode()}]


def test_request_ids_are_unique_by_default() -> None:
    assert (
        EnrollmentRequest("delete", "a").request_id != EnrollmentRequest("delete", "a").request_id
    )


def test_photo_sha256() -> None:
    assert Photo("p", b"abc").sha256 == hashlib.sha256(b"abc").hexdigest()


def request(**changes: object) -> bytes:
    doc = {"op": "enroll", "identity": "ana", "request_id": "r1", "photos": []}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"enroll"',
        request(identity=...),
        request(identity=""),
        request(op="update"),
        request(op=...),
        request(request_id=...),
        request(photos=[{"name": "p", "data": "a!Gk="}]),  # "aGk=" once "!" is dropped
        request(photos=[{"name": "p"}]),
        request(photos=["p"]),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "list",
        "string",
        "missing-identity",
        "empty-identity",
        "bad-op",
        "missing-op",
        "missing-request-id",
        "bad-base64",
        "photo-without-data",
        "photo-not-object",
    ],
)
def test_malformed_requests_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        EnrollmentRequest.decode(raw)


def test_ack_ok_follows_error() -> None:
    ok = ack("r1", "ana", "enroll", model_id="m", photos=2)
    assert (ok["ok"], ok["error"], ok["photos"], ok["model"]) == (True, None, 2, "m")
    bad = ack("r1", "ana", "enroll", model_id="m", error={"reason": "no_face", "message": "x"})
    assert bad["ok"] is False and bad["schema"] == "facestream.enrollment-ack/v1"


# -- what an enrolment adds: idempotent per photo, no second record of one face -----------------

DIM = 4


class People:
    """Photo bytes b"<k>:<anything>" hold one face of person k (embedding: axis k)."""

    model_id, embedding_dim, providers = "fake/model@1", DIM, ["CPU"]

    def analyze_bytes(self, blobs: list[bytes], limits: object) -> list[ImageFaces]:
        out = []
        for blob in blobs:
            emb = np.zeros((1, DIM), np.float32)
            emb[0, int(blob.split(b":")[0])] = 1.0
            out.append(
                ImageFaces([DetectedFace([0.0, 0.0, 100.0, 100.0], [[1.0, 1.0]] * 5, 0.9)], emb)
            )
        return out


class Enroller:
    """The worker's enrolment path over a real gallery and ``People``; records what it
    published to the state topic."""

    def __init__(self, tmp_path: Path, **settings: object) -> None:
        self.settings = Settings().override(retry__backoff_s=0.0, **settings)
        self.gallery = EdgeGallery(tmp_path / "g", People.model_id, DIM)
        self.published: list[str] = []

        async def publish(records: list[tuple[str, bytes | None]]) -> None:
            self.published += [key for key, _ in records]

        compute = LocalCompute(self.settings, People(), self.gallery)  # type: ignore[arg-type]
        self.processor = EnrollmentProcessor(self.settings, compute, publish)

    def send(self, identity: str, *photos: Photo) -> dict[str, Any]:
        req = EnrollmentRequest("enroll", identity, None, photos, basis="consent:1")
        result = asyncio.run(self.processor.process(req.encode()))
        assert result is not None
        return result.ack


@pytest.fixture
def enroller(tmp_path: Path) -> Iterator[Enroller]:
    e = Enroller(tmp_path)
    yield e
    e.gallery.close()


def test_the_same_photo_of_the_same_identity_again_is_a_no_op(enroller: Enroller) -> None:
    a, b = Photo("a.jpg", b"0:a"), Photo("b.jpg", b"0:b")
    assert enroller.send("ana", a)["photos"] == 1
    again = enroller.send("ana", a)
    assert (again["ok"], again["photos"], again["already_enrolled"]) == (True, 0, ["a.jpg"])
    more = enroller.send("ana", a, b, b)  # one held, one new sent twice
    assert (more["photos"], more["already_enrolled"]) == (1, ["a.jpg", "b.jpg"])
    assert enroller.gallery.size() == 2 and len(enroller.published) == 2  # one record each
    assert sorted(set(enroller.published)) == sorted(enroller.published)


def test_a_face_of_another_identity_is_refused_and_nothing_is_written(enroller: Enroller) -> None:
    assert enroller.send("ana", Photo("a.jpg", b"0:a"))["ok"]
    assert enroller.send("ana", Photo("a2.jpg", b"0:second"))["ok"]  # herself: fine
    refused = enroller.send("bo", Photo("b.jpg", b"1:b"), Photo("twin.jpg", b"0:twin"))
    error = refused["error"]
    assert (refused["ok"], error["reason"], error["photo"]) == (
        False,
        "duplicate_identity",
        "twin.jpg",
    )
    assert (error["matches"], error["similarity"]) == ("ana", 1.0)
    assert "'ana'" in error["message"] and "ALLOW_DUPLICATE_FACES" in error["message"]
    assert enroller.gallery.size() == 2 and len(enroller.published) == 2


def test_a_duplicate_is_enrolled_and_reported_when_allowed(tmp_path: Path) -> None:
    enroller = Enroller(tmp_path, privacy__allow_duplicate_faces=True)
    try:
        assert enroller.send("ana", Photo("a.jpg", b"0:a"))["ok"]
        reply = enroller.send("bo", Photo("twin.jpg", b"0:twin"))
        assert reply["ok"] and reply["photos"] == 1
        assert reply["duplicates"] == [{"photo": "twin.jpg", "identity": "ana", "similarity": 1.0}]
    finally:
        enroller.gallery.close()


def test_split_held_and_duplicates_are_per_photo() -> None:
    a, b = Photo("a", b"1"), Photo("b", b"2")
    assert split_held((a, b, a), [{"photo_sha256": a.sha256}]) == ((b,), (a, a))
    found = [[Candidate("ana", 0.9), Candidate("bo", 0.5)], [Candidate("ana", 0.99)]]
    assert [(d.photo, d.identity) for d in duplicates("ana", (a, b), found, 0.4)] == [("a", "bo")]
    assert duplicates("ana", (a,), [[Candidate("bo", 0.39)]], 0.4) == []


# -- bulk enrolment: the source, the requests, the journal --------------------------------------


def files(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"0:{name}".encode())


def test_a_folder_is_one_identity_per_subfolder(tmp_path: Path) -> None:
    files(
        tmp_path, "ana/1.jpg", "ana/2.png", "ana/notes.txt", "bo/x/3.jpg", "stray.jpg", " sp/4.jpg"
    )
    (tmp_path / "empty").mkdir()
    got = plan(tmp_path, "consent:1")
    assert [(e.identity, e.path.name, e.basis) for e in got.entries] == [
        ("ana", "1.jpg", "consent:1"), ("ana", "2.png", "consent:1"), ("bo", "3.jpg", "consent:1"),
    ]  # fmt: skip
    assert len(got.skipped) == 3  # " sp" (an identity with a space), empty, stray.jpg
    assert any("stray.jpg" in s for s in got.skipped) and any("no photos" in s for s in got.skipped)


def test_a_manifest_names_photos_relative_to_itself(tmp_path: Path) -> None:
    files(tmp_path, "p/1.jpg", "p/2.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "Identity,Name,Photo,Basis\n"
        "ana,Ana B.,p/1.jpg,\nbo,,p/2.jpg,consent:bo\ncy,,p/missing.jpg,\n"
    )
    got = plan(manifest, "consent:all")
    assert [(e.identity, e.name, e.path, e.basis) for e in got.entries] == [
        ("ana", "Ana B.", tmp_path / "p/1.jpg", "consent:all"),
        ("bo", None, tmp_path / "p/2.jpg", "consent:bo"),
    ]
    assert len(got.skipped) == 1 and "m.csv:4" in got.skipped[0]
    (tmp_path / "bad.csv").write_text("who,file\nana,p/1.jpg\n")
    with pytest.raises(BulkError, match="header row identity,name,photo,basis"):
        plan(tmp_path / "bad.csv", None)


def outgoing(entries: list[Entry], journal: Journal, batch: int = 2) -> list[list[str]]:
    reqs = _requests(entries, journal, Summary(), batch, 1_000_000, False, lambda n: None)
    return [[p.name for p in out.request.photos] for out in reqs]


def test_requests_batch_each_person_and_skip_what_the_journal_holds(tmp_path: Path) -> None:
    files(tmp_path, "ana/1.jpg", "ana/2.jpg", "ana/3.jpg", "bo/4.jpg")
    entries = plan(tmp_path, "consent:1").entries
    journal = Journal(tmp_path / "j.jsonl")
    assert outgoing(entries, journal) == [["1.jpg", "2.jpg"], ["3.jpg"], ["4.jpg"]]
    (first, *_) = _requests(entries, journal, Summary(), 2, 1_000_000, False, lambda n: None)
    summary = Summary()
    settled, again = _settle(first, {"ok": True, "already_enrolled": ["2.jpg"]}, journal, summary)
    assert (settled, again, summary.enrolled, summary.already) == (2, None, 1, 1)
    journal.close()
    resumed = Journal(tmp_path / "j.jsonl")  # a rerun reads it back
    assert outgoing(entries, resumed) == [["3.jpg"], ["4.jpg"]]
    resumed.close()


def test_a_refused_photo_is_journaled_and_the_rest_sent_again(tmp_path: Path) -> None:
    files(tmp_path, "ana/1.jpg", "ana/2.jpg")
    journal = Journal(tmp_path / "j.jsonl")
    entries = plan(tmp_path, "consent:1").entries
    (out,) = _requests(entries, journal, Summary(), 8, 1_000_000, False, lambda n: None)
    summary = Summary()
    error = {"reason": "duplicate_identity", "message": "m", "photo": "2.jpg", "matches": "bo"}
    settled, again = _settle(out, {"ok": False, "error": error}, journal, summary)
    assert settled == 1 and [p.name for p in again.request.photos] == ["1.jpg"]
    assert (summary.refused[0]["reason"], summary.refused[0]["matches"]) == (
        "duplicate_identity",
        "bo",
    )
    whole = {"reason": "processing_failed", "message": "m", "photo": None}
    assert _settle(again, {"ok": False, "error": whole}, journal, summary) == (1, None)
    assert summary.retry == 1  # not journaled: a rerun sends it again
    journal.close()
    assert outgoing(entries, Journal(tmp_path / "j.jsonl")) == [["1.jpg"]]
