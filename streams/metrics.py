"""Prometheus metrics. Workers export these with prometheus-client on
``metrics.host:metrics.port``; the Ray actors export their stage timings with
``ray.util.metrics`` through each Ray node's metrics agent (as ``ray_facestream_...``).

Naming follows Prometheus conventions (``_total`` counters, ``_seconds`` base units) and
labels are bounded: never image ids or identities; ``source`` is capped to
``metrics.max_sources`` distinct values (the rest count as "other").
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Hashable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from core.buckets import LATENCY_BUCKETS, STAGE_BUCKETS

IMAGES = Counter(
    "facestream_images_total", "Images consumed, by outcome and source", ["outcome", "source"]
)
FACES = Counter("facestream_faces_total", "Faces detected, by decision", ["decision"])
DLQ = Counter("facestream_dlq_events_total", "DLQ events, by reason", ["reason"])
ENROLMENTS = Counter("facestream_enrolments_total", "Enrolment requests, by result", ["result"])
DELETIONS = Counter("facestream_deletions_total", "Identities erased")
RETRIES = Counter("facestream_retries_total", "Retried calls, by call", ["call"])
ACTOR_RESTARTS = Counter(
    "facestream_actor_restarts_total",
    "Actor deaths seen by this worker (Ray restarts the actor)",
    ["actor"],
)

E2E_LATENCY = Histogram(
    "facestream_end_to_end_latency_seconds",
    "From captured-at (else produce time) to the match event",
    buckets=LATENCY_BUCKETS,
)
# Worker-side stages: per image, broker_queue (record timestamp -> consumed) and batching
# (consumed -> its batch reaching the processor), streams.processor.record_waits; per batch,
# model_call, gallery_call and publish. The actors' decode, detect, embed and gallery_search
# are ray_facestream_actor_stage_seconds (actors/deployment.py).
STAGE = Histogram(
    "facestream_stage_seconds",
    "Time in each worker-side stage: per image for broker_queue and batching, else per batch",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "facestream_batch_images", "Images per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
FACES_PER_IMAGE = Histogram(
    "facestream_faces_per_image", "Faces detected per image", buckets=(0, 1, 2, 4, 8, 16, 32, 64)
)
SIMILARITY = Histogram(
    "facestream_best_similarity",
    "Best candidate's similarity per searched face (threshold health)",
    buckets=(-0.2, 0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1),
)

LAG = Gauge(
    "facestream_consumer_lag_messages",
    "Records behind the end of the partition",
    ["topic", "partition"],
)
STALLED = Gauge(
    "facestream_partition_stalled",
    "1 while the partition has lag and no image of it finished for the stall threshold",
    ["topic", "partition"],
)
# A partition is stalled when records wait (lag > 0) and none of them finished for
# metrics.stall_after_s (reported here, for the alert: FacestreamPartitionStalled).
STALL_AFTER = Gauge(
    "facestream_stall_threshold_seconds", "Seconds without progress, with lag, that mean stalled"
)
IN_FLIGHT = Gauge("facestream_in_flight_images", "Images taken from Kafka and not yet published")
GALLERY_SIZE = Gauge("facestream_gallery_embeddings", "Embeddings in the current gallery")
MODEL_INFO = Gauge(
    "facestream_model_info", "The model in use (value 1)", ["model_id", "provider", "gpu_requested"]
)
WORKER_UP = Gauge("facestream_worker_up", "1 while this worker runs", ["worker"])


class PartitionProgress:
    """Per partition: how far behind its end, and whether it is stalled (behind, and its
    finished position has not moved for ``stall_after_s``)."""

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s, self.clock = stall_after_s, clock
        self._last: dict[Hashable, tuple[int, float]] = {}  # position, when it last moved

    def update(self, tp: Hashable, end: int, position: int) -> tuple[int, bool]:
        """``end``: the partition's end offset; ``position``: the next offset to finish.
        Returns (lag, stalled)."""
        now = self.clock()
        before = self._last.get(tp)
        if before is None or position != before[0]:
            self._last[tp] = (position, now)
            moved_at = now
        else:
            moved_at = before[1]
        behind = max(end - position, 0)
        return behind, behind > 0 and now - moved_at >= self.stall_after_s

    def forget(self, tp: Hashable) -> None:
        self._last.pop(tp, None)


class SourceLabels:
    """Caps the number of distinct ``source`` label values (bounded cardinality)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen, self.lock = limit, set[str](), threading.Lock()

    def __call__(self, source: str | None) -> str:
        value = source or "none"
        with self.lock:
            if value in self.seen:
                return value
            if len(self.seen) < self.limit:
                self.seen.add(value)
                return value
        return "other"


def _create_known_series() -> None:
    """Export every known label value at 0, so that the first event of each is visible to
    rate() and increase() (a labelled series otherwise appears at its first increment)."""
    from core.imaging import Reason

    for decision in ("match", "review", "unknown", "rejected"):
        FACES.labels(decision=decision)
    for name, reason in vars(Reason).items():
        if name.isupper():
            DLQ.labels(reason=reason)
    for call in ("model", "gallery"):
        RETRIES.labels(call=call)
        ACTOR_RESTARTS.labels(actor=call)
    for result in ("ok", "refused"):
        ENROLMENTS.labels(result=result)


def serve(host: str, port: int, stall_after_s: float) -> None:
    """Expose this process's metrics over HTTP (a daemon thread)."""
    _create_known_series()
    STALL_AFTER.set(stall_after_s)
    start_http_server(port, addr=host)
    WORKER_UP.labels(worker=f"{socket.gethostname()}:{port}").set(1)
