"""``facestream reindex``: build a NEW generation of the gallery for the configured model from
the state topic, on a live system, then switch to it.

The state topic (``streams.topics.state_topic``) holds one record per accepted photo, keyed
``<identity>/<photo sha256>``, photos included; an erasure tombstones every key of the
person. Read with Kafka's compaction rule (the last record per key; a tombstone removes the
key), it is what the gallery holds, so a rebuild never needs the people again:

1. The target is a generation that is never the live one, even for the same model
   (``actors.gallery.Generation``): a new one, or the one an interrupted run left behind,
   which is resumed (its points that the log no longer holds are removed, the missing ones
   added: a rerun after a crash redoes only what is left).
2. Pass one reads the keys (which record of each key is the last); pass two reads the photos
   of the surviving records and runs them through the model in batches (the same enrolment
   gates as the workers'), with progress reported, and no deadline but a stalled broker.
3. It catches up with what arrived meanwhile (enrolments, erasures) until the log stops
   moving, then *fences* the live gallery's owner (its writes wait, searches go on), catches
   up the last records, closes the new generation and moves the pointer (one atomic step).
   The owner actor of the same model follows the pointer to the new generation and writes
   resume there; workers of another model keep searching their gallery, their writes wait
   for workers of the new model. Nothing is lost in between: workers publish a photo's
   state record before they write the gallery (``streams.processor.EnrollmentProcessor``),
   so every write the old generation took before the fence is in the log the new one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.gallery import (
    OWNER,
    Gallery,
    Generation,
    current_generation,
    gallery_exists,
    gallery_folder,
    generations,
    mark_building,
    open_model_gallery,
    set_current,
)
from actors.models import FaceModel, load_face_model
from core.settings import Settings
from facestream.gallery_reads import owner_ray_address
from streams.clients import LogRecord, log_end, read_log
from streams.enrollment import PhotoRecord, split_state_key
from streams.processor import EnrollmentProcessor
from streams.topics import state_topic

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)
BATCH = 32  # photos per model call
CATCH_UP_ROUNDS = 20  # before the fence: stop when the log stands still, or after these
FENCE_LEASE_S = 120.0  # writes resume by themselves if this process dies while fencing


class ReindexRefused(RuntimeError):
    pass


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass


@dataclass
class Replay:
    """Applies the state topic to one gallery generation: the keys' last records, and the
    photos they hold, through this process's model. Also used on a list of records (the
    tests replay a log read back and compacted by hand)."""

    settings: Settings
    model: FaceModel
    gallery: Gallery
    batch: int = BATCH
    progress: Progress = _no_progress
    last: dict[bytes, tuple[int, bool]] = field(default_factory=dict)  # key: offset, tombstone
    refused: dict[bytes, tuple[int, str]] = field(default_factory=dict)  # key: offset, reason
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from actors.compute import LocalCompute  # imports Ray: see _owner_address

        compute = LocalCompute(self.settings, self.model, self.gallery)
        self.gates = EnrollmentProcessor(self.settings, compute)

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # -- the keys --------------------------------------------------------------------------

    def note(self, rec: LogRecord) -> str | None:
        """Take one record into the key map; its identity (None: not a state key)."""
        try:
            identity, _ = split_state_key(rec.key or b"")
        except ValueError:
            self._count("records skipped (not a state key)")
            return None
        self.last[rec.key] = (rec.offset, rec.tombstone)
        return identity

    def survivors(self, identities: set[str] | None = None) -> dict[str, dict[str, int]]:
        """identity -> {photo sha256: offset of its last record}, tombstoned keys left out."""
        out: dict[str, dict[str, int]] = {}
        for key, (offset, tombstone) in self.last.items():
            identity, sha = split_state_key(key)
            if identities is not None and identity not in identities:
                continue
            if not tombstone:
                out.setdefault(identity, {})[sha] = offset
            else:
                out.setdefault(identity, {})
        return out

    # -- the gallery -----------------------------------------------------------------------

    def held(self, identities: set[str] | None = None) -> dict[str, set[str]]:
        """identity -> photo sha256s the gallery holds (every identity, or ``identities``)."""
        names = (
            [row["identity"] for row in self.gallery.identities()]
            if identities is None
            else sorted(identities)
        )
        out: dict[str, set[str]] = {}
        for identity in names:
            shas = {p["photo_sha256"] for p in self.gallery.show(identity)}
            if shas:
                out[identity] = shas
        return out

    def plan(self, identities: set[str] | None = None) -> dict[int, bytes]:
        """Make the gallery's identities agree with the log's: an identity holding a photo
        the log no longer holds is removed (an erasure; it is re-added from its surviving
        records, if any); returns the offsets of the records to add, with their keys."""
        want = self.survivors(identities)
        held = self.held(identities if identities is not None else None)
        todo: dict[int, bytes] = {}
        for identity in set(want) | set(held):
            wanted, have = want.get(identity, {}), held.get(identity, set())
            if have - wanted.keys():
                self.gallery.delete(identity)
                self._count("identities removed (erased)")
                have = set()
            for sha, offset in wanted.items():
                key = f"{identity}/{sha}".encode()
                if sha not in have and self.refused.get(key, (None,))[0] != offset:
                    todo[offset] = key
        return todo

    async def add(self, records: list[PhotoRecord]) -> None:
        """Embed ``records``' photos (enrolment gates applied) and add them, in log order."""
        results = await asyncio.to_thread(
            self.model.analyze_bytes, [r.photo.data for r in records], self.settings.limits
        )
        items = []
        for record, result in zip(records, results, strict=True):
            subject = self.gates.subject(record.photo, result)
            if isinstance(subject, tuple):
                self.refused[record.key.encode()] = (-1, f"{subject[0]}: {subject[1]}")
                self._count("photos refused by this model")
                continue
            photo = {"name": record.photo.name, "sha256": record.photo.sha256}
            items.append(
                (
                    record.identity,
                    record.name,
                    np.asarray(result.embeddings[subject : subject + 1]),
                    [photo],
                    record.basis,
                )
            )
        if not items:
            return
        add_many = getattr(self.gallery, "add_many", None)
        if add_many is not None:
            add_many(items)
        else:
            for item in items:
                self.gallery.add(*item)
        self._count("photos added", len(items))

    async def apply(self, todo: dict[int, bytes], values: AsyncIterator[LogRecord]) -> None:
        """Add the records at ``todo``'s offsets, read from ``values`` (log order)."""
        done, batch = 0, []
        async for rec in values:
            key = todo.get(rec.offset)
            if key is None or rec.key != key or rec.value is None:
                continue
            try:
                record = PhotoRecord.decode(rec.value)
            except (ValueError, KeyError, TypeError) as exc:
                self.refused[key] = (rec.offset, f"unreadable record: {exc}")
                self._count("records unreadable")
                continue
            batch.append((rec.offset, record))
            if len(batch) >= self.batch:
                await self._add_batch(batch)
                done += len(batch)
                batch = []
                self.progress("embedding photos", done, len(todo))
        if batch:
            await self._add_batch(batch)
            done += len(batch)
        self.progress("embedding photos", done, len(todo))

    async def _add_batch(self, batch: list[tuple[int, PhotoRecord]]) -> None:
        before = set(self.refused)
        await self.add([r for _, r in batch])
        for offset, record in batch:  # remember at which record a key was refused
            key = record.key.encode()
            if key in self.refused and key not in before:
                self.refused[key] = (offset, self.refused[key][1])

    async def apply_records(self, records: list[LogRecord]) -> None:
        """Replay ``records`` (already in memory, log order) into the gallery."""
        for rec in records:
            self.note(rec)
        todo = self.plan()

        async def values() -> AsyncIterator[LogRecord]:
            for rec in records:
                yield rec

        await self.apply(todo, values())


# -- the live owner: found through Ray, fenced while the pointer moves ------------------------


def _owner_address(settings: Settings, live: Generation | None) -> str | None:
    """The Ray cluster of the live gallery's running owner (see ``owner_ray_address``)."""
    return None if live is None else owner_ray_address(settings, live.model_id, live.number)


def _live_owner(settings: Settings, live: Generation | None) -> Any:
    """The running deployment's gallery actor serving ``live``; None when none runs."""
    if live is None:
        return None
    address = _owner_address(settings, live)
    if address is None:
        return None
    import ray

    from actors.cluster import find_gallery, join_ray

    # A loaded machine may be slow to answer the first time; no Ray there any more: nobody
    # writes the live gallery.
    if not join_ray(settings, address, attempts=3):
        return None
    try:
        actor = find_gallery(settings, live.model_id)
        ray.get(actor.info.remote(), timeout=60)
        return actor
    except Exception as exc:
        log.warning("no live gallery owner reachable (%s): writing without a fence", exc)
        return None


@contextlib.asynccontextmanager
async def fenced(settings: Settings, live: Generation | None) -> AsyncIterator[Any]:
    """Writes to the live gallery wait while inside (its owner refuses them, transiently);
    yields the owner actor (None: no deployment runs, nobody writes)."""
    owner = _live_owner(settings, live)  # in the main thread: ray.init needs it
    if owner is None:
        yield None
        return
    import ray

    token = uuid.uuid4().hex
    await asyncio.to_thread(ray.get, owner.fence.remote(FENCE_LEASE_S, token))
    try:
        yield owner
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ray.get, owner.unfence.remote(token), timeout=60)


def _hand_over_owner(settings: Settings, live: Generation | None, target: Generation) -> None:
    """The live owner of the same model serves ``target`` once the pointer moves: its record
    goes there first, so that tools find the actor (and never open the folder themselves)
    before it has followed the pointer."""
    if settings.gallery.backend != "edge" or live is None or live.model_id != target.model_id:
        return
    owner = gallery_folder(settings, live.model_id, live.number) / OWNER
    if owner.exists():
        dest = gallery_folder(settings, target.model_id, target.number) / OWNER
        dest.write_text(owner.read_text())


def _target(settings: Settings, model_id: str, live: Generation | None) -> Generation:
    """Never the live generation: the newest one of this model above the live one (left by
    an interrupted run: resumed), else a new one."""
    mine = [g for g in generations(settings) if g.model_id == model_id]
    floor = live.number if live is not None and live.model_id == model_id else -1
    leftovers = [g for g in mine if g.number > floor]
    if leftovers:
        return max(leftovers)
    return Generation(model_id, max([g.number for g in mine] + [floor]) + 1)


async def reindex(
    settings: Settings,
    progress: Progress = _no_progress,
    batch: int = BATCH,
    force: bool = False,
) -> dict[str, Any]:
    started = time.monotonic()
    live = current_generation(settings)
    _owner_address(settings, live)  # before Ray is imported (Replay, fenced)
    model = load_face_model(settings)
    target = _target(settings, model.model_id, live)
    resumed = gallery_exists(settings, target)
    topic = state_topic(settings)
    gallery = open_model_gallery(
        settings, model.model_id, model.embedding_dim, generation=target.number
    )
    mark_building(settings, target, True)  # others leave it alone (actors.gallery.holder)
    replay = Replay(settings, model, gallery, batch, progress)
    closed = False
    rounds = erased_meanwhile = 0
    owner = None
    try:
        end = await log_end(settings, topic)
        seen = 0
        async for rec in read_log(settings, topic, 0, end):
            replay.note(rec)
            seen += 1
            if seen % 256 == 0:
                progress("reading keys", rec.offset + 1, end)
        progress("reading keys", end, end)
        todo = replay.plan()
        if todo:
            await replay.apply(todo, read_log(settings, topic, min(todo), max(todo) + 1))

        async def catch_up() -> bool:
            """Apply what arrived since ``end``; False when nothing did."""
            nonlocal end, rounds, erased_meanwhile
            new_end = await log_end(settings, topic)
            if new_end <= end:
                return False
            rounds += 1
            progress("catching up", new_end - end, None)
            touched: set[str] = set()
            async for rec in read_log(settings, topic, end, new_end):
                if (identity := replay.note(rec)) is not None:
                    touched.add(identity)
                    erased_meanwhile += rec.tombstone
            todo = replay.plan(touched)
            if todo:
                await replay.apply(todo, read_log(settings, topic, min(todo), max(todo) + 1))
            end = new_end
            return True

        for _ in range(CATCH_UP_ROUNDS):
            if not await catch_up():
                break
        progress("switching", 0, 1)
        async with fenced(settings, live) as owner:
            await catch_up()  # the writes the live gallery took before the fence
            size, identities = gallery.size(), len(gallery.identities())
            if not force and not replay.last and live is not None:
                await asyncio.to_thread(_refuse_emptying, settings, live, owner)
            gallery.close()
            closed = True
            _hand_over_owner(settings, live, target)
            set_current(settings, target)
            if owner is not None:  # the same model's owner follows the pointer now
                import ray

                await asyncio.to_thread(ray.get, owner.call.remote("size"), timeout=120)
    finally:
        if not closed:
            gallery.close()
        mark_building(settings, target, False)
    return {
        "model": model.model_id,
        "generation": target.name,
        "previous": live.name if live else None,
        "resumed": resumed,
        "identities": identities,
        "embeddings": size,
        "log records": end,
        "catch-up rounds": rounds,
        "erasures during the run": erased_meanwhile,
        "live writes fenced": owner is not None,
        **dict(sorted(replay.counts.items())),
        "refused photos": sorted(
            f"{key.decode()}: {why}" for key, (_, why) in replay.refused.items()
        ),
        "seconds": round(time.monotonic() - started, 1),
    }


def _refuse_emptying(settings: Settings, live: Generation, owner: Any) -> None:
    """An empty state topic next to a populated live gallery: a deployment older than the
    state topic, or a lost topic. Switching would serve an empty gallery: refused."""
    if owner is not None:
        import ray

        held = ray.get(owner.call.remote("size"), timeout=120)
    elif gallery_exists(settings, live):
        gallery = open_model_gallery(settings, live.model_id, None, generation=live.number)
        try:
            held = gallery.size()
        finally:
            gallery.close()
    else:
        held = 0
    if held:
        raise ReindexRefused(
            f"the state topic {state_topic(settings)} holds no photo, but the live gallery "
            f"{live.name} holds {held}: refusing to switch to an empty gallery (--force to "
            "switch anyway)"
        )
