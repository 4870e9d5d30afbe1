from __future__ import annotations

from facestream.tally import Tally


def match(image_id: str, *decisions: str) -> dict:
    return {"image_id": image_id, "faces": [{"decision": d} for d in decisions]}


def test_counts_images_faces_matches_unknowns_and_errors() -> None:
    t = Tally()
    assert t.add("match", match("a", "match", "unknown", "match", "rejected", "review"))
    assert t.add("match", match("b"))
    assert t.add("dlq", {"image_id": "c", "reason": "empty"})
    assert t.summary() == {
        "images": 3,
        "faces": 5,
        "matches": 2,
        "reviews": 1,
        "unknowns": 1,
        "rejected": 1,
        "errors": 1,
        "duplicates": 0,
    }


def test_a_replayed_image_id_is_a_duplicate_and_not_recounted() -> None:
    t = Tally()
    t.add("match", match("a", "match"))
    assert t.add("match", match("a", "match")) is False
    assert t.add("dlq", {"image_id": "a"}) is False  # same id on the other topic
    assert t.summary() == {
        "images": 1,
        "faces": 1,
        "matches": 1,
        "reviews": 0,
        "unknowns": 0,
        "rejected": 0,
        "errors": 0,
        "duplicates": 2,
    }
