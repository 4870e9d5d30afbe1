"""The two per-image stages before the model: the broker queue (record timestamp ->
consumed) and the batching wait (consumed -> the batch reaching the processor)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

import streams.processor
from core.events import ImageMeta
from core.settings import Settings
from streams.processor import ImageProcessor, record_waits
from streams.records import ImageMessage


def observed(stage: str) -> tuple[float, float]:
    """(count, sum) of facestream_stage_seconds for ``stage`` so far."""
    labels = {"stage": stage}
    count = REGISTRY.get_sample_value("facestream_stage_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("facestream_stage_seconds_sum", labels) or 0.0
    return count, total


def added(before: tuple[float, float], stage: str) -> tuple[float, float]:
    count, total = observed(stage)
    return count - before[0], total - before[1]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """(monotonic, wall) as ``streams.processor`` reads them, stopped: the waits are then
    exact, however long this thread is kept off the CPU between stamping and recording."""
    now, wall = time.monotonic(), time.time()
    clock = SimpleNamespace(monotonic=lambda: now, time=lambda: wall)
    monkeypatch.setattr(streams.processor, "time", clock)
    return now, wall


def message(produced_at: float | None, data: bytes = b"") -> ImageMessage:
    return ImageMessage(ImageMeta("img"), data, produced_at)


def test_each_image_splits_its_wait_into_broker_queue_and_batching(
    frozen_clock: tuple[float, float],
) -> None:
    queue, batching = observed("broker_queue"), observed("batching")
    now, wall = frozen_clock
    # Produced 1.0 s ago and consumed 0.25 s ago: 0.75 s in the broker, 0.25 s batching.
    # Produced 0.5 s ago, consumed 0.1 s ago: 0.4 s and 0.1 s.
    record_waits(
        [message(wall - 1.0), message(wall - 0.5)],
        [now - 0.25, now - 0.1],
    )
    count, total = added(queue, "broker_queue")
    assert count == 2 and total == pytest.approx(0.75 + 0.4, abs=1e-6)
    count, total = added(batching, "batching")
    assert count == 2 and total == pytest.approx(0.25 + 0.1, abs=1e-6)


def test_missing_stamps_and_skewed_clocks_are_not_made_up(
    frozen_clock: tuple[float, float],
) -> None:
    queue, batching = observed("broker_queue"), observed("batching")
    now, wall = frozen_clock
    record_waits(
        [message(None), message(wall - 1.0), message(wall + 5.0)],  # a producer clock ahead
        [now - 0.2, None, now - 0.1],
    )
    count, total = added(batching, "batching")  # the two images with a consume stamp
    assert count == 2 and total == pytest.approx(0.3, abs=1e-6)
    count, total = added(queue, "broker_queue")  # only the ahead one has both: clamped at 0
    assert count == 1 and total == 0.0


class NoCompute:
    """A Compute that must not be called: the batch below never reaches the model."""

    model_id = "none"
    embedding_dim = 4


def test_the_processor_records_the_waits_it_is_given(frozen_clock: tuple[float, float]) -> None:
    now, wall = frozen_clock
    proc = ImageProcessor(Settings(), NoCompute())  # type: ignore[arg-type]
    batching = observed("batching")
    messages = [message(wall - 0.3)]  # empty: a DLQ outcome, no model call
    outcomes = asyncio.run(proc.process(messages, [now - 0.2]))
    assert [o.event["reason"] for o in outcomes] == ["empty"]
    count, total = added(batching, "batching")
    assert count == 1 and total == pytest.approx(0.2, abs=1e-6)
    before = observed("batching")
    asyncio.run(proc.process(messages))  # without stamps: nothing recorded
    assert added(before, "batching") == (0.0, 0.0)
