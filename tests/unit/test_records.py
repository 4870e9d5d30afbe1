from __future__ import annotations

import pytest

from streams.records import image_headers, image_message, parse_headers


def test_defaults_come_from_coordinates_and_key() -> None:
    msg = image_message("images", 3, 1207, b"cam-7", b"\xff\xd8", None)
    assert msg.meta.image_id == "images/3/1207"
    assert msg.meta.source == "cam-7"
    assert (msg.meta.captured_at, msg.meta.content_type) == (None, None)
    assert msg.data == b"\xff\xd8"


def test_missing_key_and_value() -> None:
    msg = image_message("images", 0, 0, None, None, [])
    assert msg.meta.source is None
    assert msg.data == b""


@pytest.mark.parametrize(
    "headers",
    [
        [("image-id", b"img-1"), ("source", b"door"), ("captured-at", b"2024-05-01T12:00:00Z")],
        {"image-id": b"img-1", "source": b"door", "captured-at": b"2024-05-01T12:00:00Z"},
        [("Image-ID", b"img-1"), ("SOURCE", b"door"), ("Captured-At", b"2024-05-01T12:00:00Z")],
    ],
    ids=["tuples", "dict", "mixed-case"],
)
def test_headers_override_defaults(headers: object) -> None:
    msg = image_message("images", 3, 1207, b"cam-7", b"x", headers)
    assert msg.meta.image_id == "img-1"
    assert msg.meta.source == "door"
    assert msg.meta.captured_at == "2024-05-01T12:00:00Z"


def test_empty_header_values_fall_back_to_defaults() -> None:
    msg = image_message("images", 1, 2, b"cam", b"x", [("image-id", b""), ("source", b"")])
    assert (msg.meta.image_id, msg.meta.source) == ("images/1/2", "cam")


def test_key_that_is_not_utf8_does_not_raise() -> None:
    msg = image_message("images", 0, 5, b"cam-\xff\xfe", b"x", None)
    assert msg.meta.source == "cam-\\xff\\xfe"


def test_header_value_that_is_not_utf8_does_not_raise() -> None:
    assert parse_headers([("source", b"\xc3(")]) == {"source": "\\xc3("}


def test_headers_with_none_value_or_empty_name_are_skipped() -> None:
    assert parse_headers([("source", None), ("", b"x"), ("a", b"1")]) == {"a": "1"}


def test_image_headers_round_trip_through_parse_headers() -> None:
    pairs = image_headers("img-9", "lobby", "2024-05-01T12:00:00Z", "image/jpeg")
    assert all(isinstance(v, bytes) for _, v in pairs)
    msg = image_message("images", 0, 0, b"ignored", b"x", pairs)
    assert msg.meta.image_id == "img-9"
    assert msg.meta.source == "lobby"
    assert msg.meta.captured_at == "2024-05-01T12:00:00Z"
    assert msg.meta.content_type == "image/jpeg"


def test_image_headers_omit_missing_fields() -> None:
    assert parse_headers(image_headers("img-9", source="ünïcode")) == {
        "image-id": "img-9",
        "source": "ünïcode",
    }
