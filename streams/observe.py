"""Worker-side metrics: what each batch, outcome and enrolment adds to the counters.

Kept out of the processors so that they stay pure; the agents call these after each step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from streams import metrics as m
from streams.records import ImageMessage


@contextmanager
def stage(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        m.STAGE.labels(stage=name).observe(time.perf_counter() - started)


def started_at(msg: ImageMessage) -> float | None:
    """When the image was taken (captured-at header) or else produced (record timestamp)."""
    if msg.meta.captured_at:
        try:
            return datetime.fromisoformat(msg.meta.captured_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass  # a malformed header must not break metrics: use the produce time
    return msg.produced_at


def outcomes(messages: list[ImageMessage], results: list[Any], sources: m.SourceLabels) -> None:
    """Count a published batch (``results`` are ``streams.processor.Outcome``)."""
    now = time.time()
    m.BATCH_SIZE.observe(len(messages))
    for msg, outcome in zip(messages, results, strict=True):
        m.IMAGES.labels(outcome=outcome.kind, source=sources(msg.meta.source)).inc()
        if outcome.kind == "dlq":
            m.DLQ.labels(reason=outcome.event["reason"]).inc()
            continue
        faces = outcome.event["faces"]
        m.FACES_PER_IMAGE.observe(len(faces))
        for face in faces:
            m.FACES.labels(decision=face["decision"]).inc()
            if face["similarity"] is not None:
                m.SIMILARITY.observe(face["similarity"])
        if (start := started_at(msg)) is not None:
            m.E2E_LATENCY.observe(max(now - start, 0.0))


def enrolment(ack: dict[str, Any]) -> None:
    if ack["op"] == "delete" and ack["ok"]:
        m.DELETIONS.inc()
    else:
        m.ENROLMENTS.labels(result="ok" if ack["ok"] else "refused").inc()


def failed_call(call: str, actor_restarting: bool) -> None:
    """A retried call (``call``: "model" or "gallery"); ``actor_restarting``: the actor died
    and its runtime is bringing it back."""
    m.RETRIES.labels(call=call).inc()
    if actor_restarting:
        m.ACTOR_RESTARTS.labels(actor=call).inc()
