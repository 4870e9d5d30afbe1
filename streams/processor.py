"""Small processors with one job each: turn a batch of Kafka records into outcome events.

They hold no Kafka state; the Faust agents (``streams.app``) feed them and publish what they
return. All compute goes through ``core.compute.Compute`` (the Ray actors, in a worker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core import audit
from core.compute import Compute
from core.decisions import AmbiguousPhoto, Decision, SearchPlan, enrolment_face
from core.errors import one_line
from core.events import dlq_event, match_event
from core.faces import ImageFaces
from core.imaging import ImageRejected, Reason, check_size
from core.quality import assess
from core.settings import Settings
from streams import metrics, observe
from streams.enrollment import (
    DUPLICATE_CANDIDATES,
    EnrollmentReason,
    EnrollmentRequest,
    MalformedRequest,
    Photo,
    PhotoRecord,
    ack,
    duplicates,
    split_held,
    state_key,
)
from streams.records import ImageMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "match" or "dlq"
    key: str
    event: dict[str, Any]
    audit: dict[str, Any]


class ImageProcessor:
    def __init__(self, settings: Settings, compute: Compute) -> None:
        self.settings = settings
        self.compute = compute
        self.decision = Decision.configured(compute.model_id, settings.matching)

    async def process(
        self, messages: list[ImageMessage], consumed_at: Sequence[float | None] | None = None
    ) -> list[Outcome]:
        """One outcome per message, in order. ``consumed_at``: when the worker's consumer
        took each record, on ``time.monotonic``'s clock (as Faust's Monitor stamps
        ``Message.time_in``); with it, each image's wait before this batch is recorded as
        its two stages: the broker queue and the batching wait."""
        if consumed_at is not None:
            record_waits(messages, consumed_at)
        outcomes: dict[int, Outcome] = {}
        todo: list[int] = []
        for i, msg in enumerate(messages):
            if msg.bad_header:
                outcomes[i] = self._dlq(msg, Reason.BAD_HEADER, msg.bad_header)
                continue
            try:
                check_size(msg.data, self.settings.limits)  # no need to ship these to Ray
                todo.append(i)
            except ImageRejected as rejected:
                outcomes[i] = self._dlq(msg, rejected.reason, rejected.message)
        if todo:
            try:
                outcomes.update(await self._analyze([messages[i] for i in todo], todo))
            except Exception as exc:  # a bug, not a transient failure: still one outcome each
                log.exception("unexpected error processing a batch")
                for i in todo:
                    outcomes[i] = self._dlq(messages[i], Reason.PROCESSING_FAILED, one_line(exc))
        return [outcomes[i] for i in range(len(messages))]

    async def _analyze_isolating(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        """Analyze a batch; if it keeps failing, retry its images one by one so that only an
        image that kills the model goes to the DLQ, not its batch-mates."""
        try:
            return await self.compute.analyze(blobs)
        except Exception as exc:
            if len(blobs) == 1:
                return [
                    ImageRejected(
                        Reason.PROCESSING_FAILED,
                        f"the model failed on this image: {one_line(exc)}",
                    )
                ]
            log.warning("batch of %d failed (%s); isolating its images", len(blobs), one_line(exc))
            return [r for blob in blobs for r in await self._analyze_isolating([blob])]

    async def _analyze(self, messages: list[ImageMessage], index: list[int]) -> dict[int, Outcome]:
        with observe.stage("model_call"):
            results = await self._analyze_isolating([m.data for m in messages])
        analysed = [r for r in results if isinstance(r, ImageFaces)]
        plan = SearchPlan.of(analysed, self.settings.quality.search, self.compute.embedding_dim)
        found = []
        if len(plan.embeddings):
            with observe.stage("gallery_call"):
                found = await self.compute.search(plan.embeddings, self.settings.matching.top_k)
        per_image = iter(zip(plan.candidates(found), plan.reasons, strict=True))
        out: dict[int, Outcome] = {}
        unknown: list[tuple[np.ndarray, dict[str, Any]]] = []
        for i, msg, result in zip(index, messages, results, strict=True):
            if isinstance(result, ImageRejected):
                out[i] = self._dlq(msg, result.reason, result.message)
                continue
            candidates, reasons = next(per_image)
            event = match_event(msg.meta, result, candidates, self.decision, reasons)
            out[i] = Outcome("match", msg.meta.image_id, event, audit.identification(event))
            unknown += [
                (vector, {"image_id": msg.meta.image_id, "source": msg.meta.source})
                for vector, face in zip(result.embeddings, event["faces"], strict=True)
                if face["decision"] == "unknown"
            ]
        if unknown and self.settings.sightings.enabled:  # opt-in; nothing kept otherwise
            vectors, metas = zip(*unknown, strict=True)
            await self.compute.record_sightings(np.stack(vectors), list(metas))
        return out

    def _dlq(self, msg: ImageMessage, reason: str, message: str) -> Outcome:
        event = dlq_event(msg.meta, reason, message)
        return Outcome(
            "dlq", msg.meta.image_id, event, audit.rejection(event, self.decision.model_id)
        )


def record_waits(messages: Sequence[ImageMessage], consumed_at: Sequence[float | None]) -> None:
    """Per image, the ``broker_queue`` stage (record timestamp -> consumed: the time in the
    broker, fetch wait included) and the ``batching`` stage (consumed -> its batch reaching
    the processor: the wait for batch-mates, then for a free agent). Per image rather than
    per batch, like the end-to-end latency they add up to with the batch stages."""
    now, wall = time.monotonic(), time.time()
    for msg, consumed in zip(messages, consumed_at, strict=True):
        if consumed is None:
            continue
        batching = max(now - consumed, 0.0)
        metrics.STAGE.labels(stage="batching").observe(batching)
        if msg.produced_at is not None:  # producer and worker clocks may differ: never < 0
            queued = max(wall - batching - msg.produced_at, 0.0)
            metrics.STAGE.labels(stage="broker_queue").observe(queued)


StateRecord = tuple[str, bytes | None]  # key, value (None: a tombstone) on the state topic
Publish = Callable[[list[StateRecord]], Awaitable[None]]


@dataclass(frozen=True)
class EnrollmentResult:
    ack: dict[str, Any]
    audit: dict[str, Any]
    tombstone: str | None = None  # the identity erased (its state keys are in ``state``)
    # The state topic's records this request wrote (already published when the processor has
    # a ``publish``): one per accepted photo, or a tombstone per erased photo key.
    state: tuple[StateRecord, ...] = ()


class EnrollmentProcessor:
    """Applies enrolment requests to the gallery: enrolments (all photos or none) and
    erasures, and keeps the state topic (the gallery's source of truth) in step.

    Order, so that a reindex can fence the gallery's writes without losing one (README, "The
    enrolment log"): the photos pass the gates; their state records are published
    (``publish``); only then is the gallery written; the agent acks after that. A gallery
    write that fails after its records went out is compensated: the records of photos the
    gallery does not hold are tombstoned. An erasure tombstones every key of the person
    found in any gallery generation (``show``), then deletes the person everywhere.
    """

    def __init__(
        self, settings: Settings, compute: Compute, publish: Publish | None = None
    ) -> None:
        self.compute = compute
        self.model_id = compute.model_id
        self.gates = settings.quality.enrol
        self.search_gates = settings.quality.search
        self.require_basis = settings.privacy.require_basis
        self.allow_duplicates = settings.privacy.allow_duplicate_faces
        self.threshold = settings.matching.threshold
        self.publish = publish

    async def _publish(self, records: list[StateRecord]) -> None:
        if records and self.publish is not None:
            await self.publish(records)

    async def process(self, raw: bytes | None, key: bytes | None = None) -> EnrollmentResult | None:
        """Never raises: every record but a tombstone yields an acknowledgement."""
        if raw is None:
            return None  # a tombstone (older deployments compacted this topic): nothing to do
        try:
            req = EnrollmentRequest.decode(raw, key)
        except MalformedRequest as exc:
            # Acked under the sender's request id when it could be read, so it sees the refusal.
            message = f"malformed enrolment request: {exc}"
            error = {"reason": EnrollmentReason.BAD_REQUEST, "message": message, "photo": None}
            reply = ack(exc.request_id or "", None, "unknown", model_id=self.model_id, error=error)
            return EnrollmentResult(reply, audit.gallery_change(reply, None, []))
        state: list[StateRecord] = []
        try:
            if req.op == "delete":
                return await self._erase(req)
            reply, state = await self._enroll(req)
        except Exception as exc:  # the compute side still failed after its retries
            log.exception("enrolment %s failed", req.request_id)
            error = {"reason": Reason.PROCESSING_FAILED, "message": one_line(exc), "photo": None}
            reply = ack(req.request_id, req.identity, req.op, model_id=self.model_id, error=error)
        photos = [p.name for p in req.photos]
        return EnrollmentResult(
            reply, audit.gallery_change(reply, req.basis, photos), state=tuple(state)
        )

    async def _erase(self, req: EnrollmentRequest) -> EnrollmentResult:
        """Tombstones for every photo key of the person, then every vector and payload."""
        stored = await self.compute.show(req.identity)
        keys = sorted(
            {state_key(req.identity, p["photo_sha256"]) for p in stored if p.get("photo_sha256")}
        )
        tombstones: list[StateRecord] = [(k, None) for k in keys]
        await self._publish(tombstones)
        removed = await self.compute.delete(req.identity)
        photos = sorted({p["photo"] for p in stored})
        reply = ack(
            req.request_id,
            req.identity,
            req.op,
            model_id=self.model_id,
            removed=removed,
            photos=photos,
            tombstoned=True,
            tombstones=len(tombstones),
        )
        basis = next((p.get("basis") for p in stored), None)
        return EnrollmentResult(
            reply,
            audit.gallery_change(reply, basis, photos),
            req.identity,
            tuple(tombstones),
        )

    def subject(self, photo: Photo, result: ImageFaces | ImageRejected) -> int | tuple:
        """The index of the face that defines the person in ``photo``, or (reason, message)
        when the photo cannot define one: the enrolment gates (reindex applies them too)."""
        if isinstance(result, ImageRejected):
            return result.reason, result.message
        try:
            index = enrolment_face(result, self.search_gates)
        except AmbiguousPhoto as exc:
            return exc.reason, f"{photo.name}: {exc}"
        face = result.faces[index]
        why = assess(face.quality, face.det_score, self.gates) if face.quality else []
        if why:
            detail = f"{', '.join(why)} (quality {face.quality.as_dict()})"
            return why[0], f"{photo.name}: face fails the enrolment gates: {detail}"
        return index

    async def _enroll(self, req: EnrollmentRequest) -> tuple[dict[str, Any], list[StateRecord]]:
        def refuse(
            reason: str, message: str, photo: str | None = None
        ) -> tuple[dict[str, Any], list[StateRecord]]:
            error = {"reason": reason, "message": message, "photo": photo}
            reply = ack(req.request_id, req.identity, req.op, model_id=self.model_id, error=error)
            return reply, []

        if self.require_basis and not req.basis:
            return refuse(
                EnrollmentReason.MISSING_BASIS, "an enrolment must record its legal basis (--basis)"
            )
        if not req.photos:
            return refuse(EnrollmentReason.BAD_REQUEST, "an enrolment needs at least one photo")
        # Photos the gallery holds for this identity are not enrolled again (one point, one
        # state record each): a repeated request is a no-op, before any model time.
        new, held = split_held(req.photos, await self.compute.show(req.identity))
        done = {"already_enrolled": [p.name for p in held]} if held else {}
        if not new:
            reply = ack(
                req.request_id, req.identity, req.op, model_id=self.model_id,
                photos=0, basis=req.basis, **done,
            )  # fmt: skip
            return reply, []
        results = await self.compute.analyze([p.data for p in new])
        subjects = []
        for photo, result in zip(new, results, strict=True):
            subject = self.subject(photo, result)
            if isinstance(subject, tuple):
                return refuse(*subject, photo.name)
            subjects.append(result.embeddings[subject])
        embeddings = np.stack(subjects)
        # Searched after every earlier request was applied (the agent is serial), so two
        # photos of one person sent under two names in one bulk run are caught too.
        found = await self.compute.search(embeddings, DUPLICATE_CANDIDATES)
        if twins := duplicates(req.identity, new, found, self.threshold):
            if not self.allow_duplicates:
                twin = twins[0]
                reply, _ = refuse(EnrollmentReason.DUPLICATE_IDENTITY, twin.message, twin.photo)
                reply["error"] |= {"matches": twin.identity, "similarity": twin.similarity}
                return reply, []
            done["duplicates"] = [t.as_dict() for t in twins]
        photos = [{"name": p.name, "sha256": p.sha256} for p in new]
        records = PhotoRecord.of_request(replace(req, photos=new), self.model_id)
        state: list[StateRecord] = [(r.key, r.encode()) for r in records]
        await self._publish(state)  # before the gallery write: see the class docstring
        try:
            await self.compute.add(req.identity, req.name, embeddings, photos, req.basis)
        except Exception:
            await self._compensate(req)
            raise
        reply = ack(
            req.request_id,
            req.identity,
            req.op,
            model_id=self.model_id,
            photos=len(photos),
            basis=req.basis,
            **done,
        )
        return reply, state

    async def _compensate(self, req: EnrollmentRequest) -> None:
        """The gallery write failed after the state records went out: tombstone those of the
        photos the gallery does not hold (an earlier enrolment's photo stays recorded)."""
        if self.publish is None:
            return
        try:
            held = {p.get("photo_sha256") for p in await self.compute.show(req.identity)}
            await self._publish(
                [
                    (state_key(req.identity, p.sha256), None)
                    for p in req.photos
                    if p.sha256 not in held
                ]
            )
        except Exception:
            log.exception("enrolment %s: could not tombstone its state records", req.request_id)
