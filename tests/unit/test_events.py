from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import core.events
from core.events import Decision, ImageMeta, dlq_event, encode, face_record, match_event
from core.faces import Candidate, DetectedFace, ImageFaces
from core.imaging import Reason

FACE = DetectedFace(
    bbox=[1.0, 2.0, 30.5, 40.25],
    landmarks=[[5.0, 6.0], [7.0, 6.0], [6.0, 8.0], [5.0, 9.0], [7.0, 9.0]],
    det_score=0.91,
)
META = ImageMeta("images/0/42", source="cam-1", captured_at="2024-05-01T12:00:00Z")
DECISION = Decision("pack/rec@abc", 0.4)
SCHEMAS = Path(core.events.__file__).parent / "schemas"


def schema(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


MATCH = schema("match-event.v1.1.json")
DLQ = schema("dlq-event.v1.json")


ONLY_MATCH = Decision("pack/rec@abc", 0.4)  # no review band
BANDED = Decision("pack/rec@abc", 0.4, 0.3)


@pytest.mark.parametrize(
    ("similarity", "decision", "identity"),
    [
        (0.4, "match", "ana"),
        (0.3999, "review", "ana"),
        (0.3, "review", "ana"),
        (0.2999, "unknown", None),
    ],
)
def test_three_decisions_by_the_two_thresholds(
    similarity: float, decision: str, identity: str | None
) -> None:
    rec = face_record(FACE, [Candidate("ana", similarity)], BANDED)
    assert (rec["decision"], rec["identity"], rec["similarity"]) == (decision, identity, similarity)


def test_review_band_is_in_the_event_and_a_review_is_never_a_match() -> None:
    event = match_event(
        ImageMeta("img-1"),
        ImageFaces([FACE], np.ones((1, 4), np.float32)),
        [[Candidate("ana", 0.35)]],
        BANDED,
    )
    MATCH.validate(json.loads(encode(event)))
    assert event["review_threshold"] == 0.3 and event["faces"][0]["decision"] == "review"


def test_similarity_equal_to_threshold_is_a_match() -> None:
    rec = face_record(FACE, [Candidate("ana", 0.4)], ONLY_MATCH)
    assert (rec["decision"], rec["identity"], rec["similarity"]) == ("match", "ana", 0.4)


def test_similarity_below_threshold_is_unknown_but_reported() -> None:
    rec = face_record(FACE, [Candidate("ana", 0.3999)], ONLY_MATCH)
    assert (rec["decision"], rec["identity"], rec["similarity"]) == ("unknown", None, 0.3999)
    assert rec["candidates"] == [{"identity": "ana", "similarity": 0.3999}]


def test_only_the_best_candidate_decides() -> None:
    cands = [Candidate("ana", 0.8), Candidate("bo", 0.5)]
    rec = face_record(FACE, cands, ONLY_MATCH)
    assert (rec["decision"], rec["identity"], rec["similarity"]) == ("match", "ana", 0.8)
    assert [c["identity"] for c in rec["candidates"]] == ["ana", "bo"]


def test_empty_gallery_gives_unknown_with_null_similarity() -> None:
    rec = face_record(FACE, [], ONLY_MATCH)
    assert (rec["decision"], rec["identity"], rec["similarity"]) == ("unknown", None, None)
    assert rec["candidates"] == []
    assert rec["bbox"] == FACE.bbox and rec["det_score"] == FACE.det_score


def test_match_event_validates_against_schema() -> None:
    faces = ImageFaces([FACE, FACE], np.zeros((2, 4), np.float32))
    event = match_event(META, faces, [[Candidate("ana", 0.7)], []], DECISION)
    MATCH.validate(event)
    assert event["schema"] == "facestream.match/v1.1"
    assert (event["model"], event["threshold"]) == ("pack/rec@abc", 0.4)
    assert [f["decision"] for f in event["faces"]] == ["match", "unknown"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["processed_at"])


def test_match_event_without_faces_validates() -> None:
    event = match_event(ImageMeta("x"), ImageFaces(), [], DECISION)
    MATCH.validate(event)
    assert event["faces"] == [] and event["source"] is None


def test_match_event_needs_one_candidate_list_per_face() -> None:
    with pytest.raises(ValueError):
        match_event(META, ImageFaces([FACE], np.zeros((1, 4))), [], DECISION)


@pytest.mark.parametrize("reason", [v for k, v in vars(Reason).items() if k.isupper()])
def test_every_reason_code_is_in_the_dlq_schema(reason: str) -> None:
    event = dlq_event(META, reason, "detail")
    DLQ.validate(event)
    assert (event["schema"], event["reason"], event["image_id"]) == (
        "facestream.dlq/v1",
        reason,
        "images/0/42",
    )


def test_dlq_schema_rejects_unknown_reason() -> None:
    assert not DLQ.is_valid(dlq_event(META, "on_fire", "detail"))


def test_encode_is_compact_utf8_json() -> None:
    event = dlq_event(ImageMeta("id-1", source="café"), "empty", "message value is empty")
    raw = encode(event)
    assert isinstance(raw, bytes)
    assert b", " not in raw and b'": ' not in raw
    assert "café".encode() in raw  # raw UTF-8, not \u00e9
    assert json.loads(raw) == event
