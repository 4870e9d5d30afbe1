"""Hostile records, as pure logic: every one yields a refusal with a reason, never an
exception that would stall a partition or crash an agent (the hostile-input suite drives
the same cases through a real stack: tests/stress/test_hostile.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest
from PIL import Image

from core.errors import one_line
from core.imaging import ImageRejected, decode_image
from core.settings import ImageLimits
from streams.delivery import Delivery, is_transient
from streams.enrollment import EnrollmentRequest, MalformedRequest
from streams.records import MAX_HEADER_CHARS, image_message

PHOTO = {"name": "a.jpg", "data": base64.b64encode(b"jpeg bytes").decode()}


def record(**fields: Any) -> bytes:
    doc = {"op": "enroll", "request_id": "r-1", "identity": "ana", "photos": [PHOTO], **fields}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "readable_id"),
    [
        (record(request_id=12345), False),  # an int id once made the ack unpublishable
        (record(request_id=""), False),
        (record(request_id="r" * 129), False),
        (record(identity="\ud800"), True),  # a lone surrogate once failed in the gallery
        (json.dumps({"op": "delete", "request_id": "r-1", "identity": "\ud800"}).encode(), True),
        (record(identity="x" * 129), True),
        (record(identity=" ana"), True),
        (record(identity="line\nbreak"), True),
        (record(identity=7), True),
        (record(name=["not", "text"]), True),
        (record(basis=3), True),
        (record(photos={"name": "a"}), True),
        (record(photos=[PHOTO] * 33), True),
        (record(photos=[{"name": "a.jpg", "data": 5}]), True),
        (record(photos=[{"name": None, "data": PHOTO["data"]}]), True),
        (record(op="delete"), True),  # an erasure carries no photos
        (b"[" * 100_000, False),  # nesting deep enough to exhaust the parser
    ],
    ids=lambda v: str(v)[:30],
)
def test_malformed_enrolment_is_refused_with_its_request_id_when_readable(
    raw: bytes, readable_id: bool
) -> None:
    with pytest.raises(MalformedRequest) as refused:
        EnrollmentRequest.decode(raw)
    assert refused.value.request_id == ("r-1" if readable_id else None)
    assert "\n" not in str(refused.value)


def test_enrolment_whose_key_differs_from_its_identity_is_refused() -> None:
    """Erasure tombstones are keyed by identity: a record under another key could never be
    removed from the compacted log."""
    assert EnrollmentRequest.decode(record(), key=b"ana").identity == "ana"
    with pytest.raises(MalformedRequest, match="key must equal"):
        EnrollmentRequest.decode(record(), key=b"someone-else")


def test_oversized_image_id_header_becomes_a_bad_header_with_an_id_that_fits() -> None:
    msg = image_message("images", 2, 40, b"cam", b"jpeg", [("image-id", b"x" * 4_300_000)])
    assert msg.bad_header and "image-id has 4300000" in msg.bad_header
    assert msg.meta.image_id == "images/2/40"
    ok = image_message("images", 2, 41, b"cam", b"jpeg", [("image-id", b"x" * MAX_HEADER_CHARS)])
    assert ok.bad_header is None and ok.meta.image_id == "x" * MAX_HEADER_CHARS


def test_oversized_key_used_as_source_is_a_bad_header() -> None:
    msg = image_message("images", 0, 1, b"k" * 10_000, b"jpeg", None)
    assert msg.bad_header and msg.meta.source is None


def _image(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, fmt)
    return buf.getvalue()


def test_undocumented_formats_are_not_opened() -> None:
    """Pillow would hand EPS to Ghostscript when it is installed."""
    with pytest.raises(ImageRejected) as rejected:
        decode_image(_image("EPS", (64, 64)), ImageLimits())
    assert rejected.value.reason == "not_an_image"


@pytest.mark.parametrize("size", [(60000, 16), (16, 60000), (5000, 20)])
def test_extreme_aspect_ratio_is_refused_before_the_model(size: tuple[int, int]) -> None:
    with pytest.raises(ImageRejected) as rejected:
        decode_image(_image("PNG", size), ImageLimits())
    assert rejected.value.reason == "too_small" and "elongated" in rejected.value.message


def test_a_panorama_still_decodes() -> None:
    assert decode_image(_image("JPEG", (4000, 500)), ImageLimits()).shape == (500, 4000, 3)


def test_one_line_strips_colour_codes_and_tracebacks() -> None:
    exc = RuntimeError("\x1b[36mray::ModelActor.analyze()\x1b[39m (pid=1, ip=10.0.0.1)\nTraceback")
    line = one_line(exc)
    assert line == "RuntimeError: ray::ModelActor.analyze() (pid=1, ip=10.0.0.1)"
    assert len(one_line(RuntimeError("x" * 5000))) <= 200


class Topic:
    """A topic that refuses records over ``limit`` bytes, as the producer does."""

    def __init__(self, name: str, limit: int = 1000) -> None:
        self.name, self.limit, self.sent = name, limit, []

    def __str__(self) -> str:
        return self.name

    async def send(self, key: bytes, value: bytes | None) -> asyncio.Future:
        from aiokafka.errors import MessageSizeTooLargeError

        if value is not None and len(value) > self.limit:
            raise MessageSizeTooLargeError()
        self.sent.append((key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_record_that_can_never_be_published_is_replaced_by_a_small_dlq_event() -> None:
    from core.settings import Settings

    matches, audit, dlq = Topic("matches"), Topic("audit"), Topic("images.dlq")
    deliver = Delivery(Settings(), dlq)
    asyncio.run(
        deliver([(matches, "big", b"x" * 5000), (matches, "ok", b"{}"), (audit, "big", b"{}")])
    )
    assert [k for k, _ in matches.sent] == [b"ok"] and [k for k, _ in audit.sent] == [b"big"]
    [(key, value)] = dlq.sent
    event = json.loads(value)
    assert key == b"big" and event["reason"] == "publish_failed"
    assert "MessageSizeTooLargeError" in event["message"] and "\n" not in event["message"]


def test_publish_errors_are_classified() -> None:
    from aiokafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        MessageSizeTooLargeError,
        NotLeaderForPartitionError,
    )
    from faust.exceptions import ProducerSendError

    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = KafkaConnectionError()
    assert all(
        map(is_transient, [KafkaConnectionError(), KafkaTimeoutError(), wrapped])
    ) and is_transient(NotLeaderForPartitionError())
    assert not is_transient(MessageSizeTooLargeError())
    assert not is_transient(AttributeError("'int' object has no attribute 'encode'"))
