"""Bulk enrolment: everyone in a folder (one subfolder per person) or a CSV manifest, sent as
batched requests with several in flight, each outcome recorded in a journal so that a rerun
after Ctrl-C or a crash resumes where the last one stopped.

Exactly once, with no coordination but the journal: a photo is journaled only once its
acknowledgement came back, so a crash can at worst leave it sent and unrecorded. A rerun
sends it again, and the worker enrols nothing twice (a photo the gallery already holds for
the identity is a no-op, ``streams.enrollment.split_held``): it is acknowledged as
``already_enrolled`` and journaled then. The journal spares a rerun the model time and the
bytes on the broker; correctness rests on the worker.

A request is atomic (one bad photo refuses all of it), so a refusal that names a photo is
that photo's outcome, and the request's other photos are sent again without it. A refusal of
the whole request (no basis, a processing failure) is not journaled: a rerun retries it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.formats import named_as_image
from core.settings import Settings
from streams.enrollment import MAX_PHOTOS, EnrollmentRequest, Photo, identity_problem

MANIFEST_COLUMNS = ("identity", "name", "photo", "basis")
# Of the broker's message limit, what one request's photos may take (base64: 4/3 of the
# bytes; the JSON around them is small).
_REQUEST_SHARE = 0.9


class BulkError(ValueError):
    """A source that cannot be enrolled as given (one line for the person at the terminal)."""


@dataclass(frozen=True)
class Entry:
    """One photo to enrol, as the source lists it."""

    identity: str
    path: Path
    name: str | None = None
    basis: str | None = None


@dataclass
class Plan:
    entries: list[Entry]
    skipped: list[str] = field(default_factory=list)  # "<what>: <why>", shown before sending


def is_bulk_source(path: Path) -> bool:
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")


def plan(source: Path, basis: str | None) -> Plan:
    """The photos of a folder (subfolder name = identity) or a CSV manifest; ``basis`` is
    every photo's legal basis unless the manifest gives one."""
    if source.is_dir():
        return _plan_folder(source, basis)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _plan_manifest(source, basis)
    raise BulkError(f"{source}: neither a folder of people nor a .csv manifest")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if named_as_image(p) and p.is_file())


def _plan_folder(folder: Path, basis: str | None) -> Plan:
    out = Plan([])
    for item in sorted(folder.iterdir()):
        if not item.is_dir():
            if named_as_image(item):
                out.skipped.append(f"{item}: not in a person's subfolder")
            continue
        if problem := identity_problem(item.name):
            out.skipped.append(f"{item}: {problem}")
            continue
        photos = _images(item)
        if not photos:
            out.skipped.append(f"{item}: no photos")
        out.entries += [Entry(item.name, p, None, basis) for p in photos]
    if not out.entries and not out.skipped:
        raise BulkError(f"{folder}: no subfolders (one per person, named by identity)")
    return out


def _plan_manifest(manifest: Path, basis: str | None) -> Plan:
    out = Plan([])
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BulkError(f"{manifest}: cannot read the manifest ({exc})") from exc
    if not rows or not {"identity", "photo"} <= set(header):
        raise BulkError(
            f"{manifest}: a manifest needs a header row {','.join(MANIFEST_COLUMNS)} "
            "(name and basis may be left empty) and one row per photo"
        )
    for line, raw in enumerate(rows, start=2):
        # Cells past the header (key None) are ignored; missing ones are empty.
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{manifest}:{line}"
        if problem := identity_problem(row["identity"]):
            out.skipped.append(f"{where}: {problem}")
            continue
        path = manifest.parent / row["photo"]
        if not row["photo"] or not path.is_file():
            out.skipped.append(f"{where}: no such photo {str(path)!r}")
            continue
        name, own_basis = row.get("name") or None, row.get("basis") or None
        out.entries.append(Entry(row["identity"], path, name, own_basis or basis))
    return out


# -- the journal ------------------------------------------------------------------------------


def journal_path(settings: Settings, source: Path) -> Path:
    """Where the journal of enrolling ``source`` into this deployment lives (the cache dir,
    so that a read-only source works): one per source and per broker and topic."""
    key = "\0".join(
        [str(source.resolve()), settings.kafka.bootstrap_servers, settings.topics.enrollments]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return settings.cache_dir / "enrolments" / f"{source.stem or 'source'}-{digest}.jsonl"


class Journal:
    """Append-only JSON lines, one per photo outcome; ``(identity, sha256)`` -> the last.

    Each batch of lines is flushed and fsynced before the next request's outcome is read, so
    what it says was acknowledged survives a crash; a line torn by one is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.outcomes[(row["identity"], row["sha256"])] = row
                except (ValueError, KeyError, TypeError):
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def get(self, identity: str, sha256: str) -> dict[str, Any] | None:
        return self.outcomes.get((identity, sha256))

    def record(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._file.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        for row in rows:
            self.outcomes[(row["identity"], row["sha256"])] = row

    def close(self) -> None:
        self._file.close()


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Summary:
    photos: int = 0  # in the source
    enrolled: int = 0  # by this run
    already: int = 0  # held already: by the journal, or answered so by the worker
    refused: list[dict[str, Any]] = field(default_factory=list)  # this run's and journaled
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # enrolled, though alike
    retry: int = 0  # photos of requests refused as a whole: a rerun sends them again
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "photos": self.photos,
            "enrolled": self.enrolled,
            "already_enrolled": self.already,
            "refused": self.refused,
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
            "not_done": self.retry,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class _Outgoing:
    request: EnrollmentRequest
    paths: dict[str, Path]  # photo name in the request -> its file


def _requests(
    entries: list[Entry],
    journal: Journal,
    summary: Summary,
    batch: int,
    max_bytes: int,
    retry_refused: bool,
    advance: Callable[[int], None],
) -> Iterator[_Outgoing]:
    """Requests of up to ``batch`` photos of one person (and one name and basis), under the
    message limit; photos the journal holds an outcome for are counted and skipped. Files
    are read as they are sent, so memory holds only what is in flight."""
    groups: dict[tuple[str, str | None, str | None], list[Entry]] = {}
    for e in entries:  # each person's photos together, in the order people first appear
        groups.setdefault((e.identity, e.name, e.basis), []).append(e)
    budget = int(max_bytes * _REQUEST_SHARE * 3 / 4)
    for person, group in groups.items():
        identity = person[0]
        photos: list[Photo] = []
        paths: dict[str, Path] = {}
        size = 0
        for e in group:
            try:
                data = e.path.read_bytes()
            except OSError as exc:
                summary.unreadable.append(f"{e.path}: {exc.strerror or exc}")
                advance(1)
                continue
            if len(data) > budget:
                summary.unreadable.append(f"{e.path}: {len(data)} bytes, over the message limit")
                advance(1)
                continue
            photo = Photo(_unique_name(e.path, paths), data)
            done = journal.get(identity, photo.sha256)
            if done is not None and (done["ok"] or not retry_refused):
                if done["ok"]:
                    summary.already += 1
                else:
                    summary.refused.append(done)
                advance(1)
                continue
            if photos and (len(photos) >= min(batch, MAX_PHOTOS) or size + len(data) > budget):
                yield _outgoing(person, photos, paths)
                photos, paths, size = [], {}, 0
            photos.append(photo)
            paths[photo.name] = e.path
            size += len(data)
        if photos:
            yield _outgoing(person, photos, paths)


def _outgoing(
    person: tuple[str, str | None, str | None], photos: list[Photo], paths: dict[str, Path]
) -> _Outgoing:
    identity, name, basis = person
    return _Outgoing(EnrollmentRequest("enroll", identity, name, tuple(photos), basis=basis), paths)


def _unique_name(path: Path, taken: dict[str, Path]) -> str:
    """The photo's name in its request: the file name, unless another photo of the request
    has it (subfolders of one person): then its path below the person's folder."""
    return path.name if path.name not in taken else f"{path.parent.name}/{path.name}"


def _row(out: _Outgoing, photo: Photo, ok: bool, **fields: Any) -> dict[str, Any]:
    return {
        "identity": out.request.identity,
        "sha256": photo.sha256,
        "path": str(out.paths[photo.name]),
        "ok": ok,
        "request_id": out.request.request_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }


def _settle(
    out: _Outgoing, reply: dict[str, Any], journal: Journal, summary: Summary
) -> tuple[int, _Outgoing | None]:
    """Apply one acknowledgement: journal its photos' outcomes; (photos settled, the request
    to send again without a refused photo, if any)."""
    photos = out.request.photos
    if reply["ok"]:
        already = set(reply.get("already_enrolled") or [])
        journal.record([_row(out, p, True, already=p.name in already) for p in photos])
        summary.already += len(already)
        summary.enrolled += len(photos) - len(already)
        summary.duplicates += [
            {**d, "identity_enrolled": out.request.identity, "path": str(out.paths[d["photo"]])}
            for d in reply.get("duplicates") or []
        ]
        return len(photos), None
    error = reply.get("error") or {}
    bad = next((p for p in photos if p.name == error.get("photo")), None)
    if bad is None:  # the request as a whole: not journaled, a rerun sends it again
        summary.retry += len(photos)
        summary.refused += [
            {"path": str(out.paths[p.name]), "identity": out.request.identity, **_why(error)}
            for p in photos
        ]
        return len(photos), None
    row = _row(out, bad, False, **_why(error))
    journal.record([row])
    summary.refused.append(row)
    rest = tuple(p for p in photos if p is not bad)
    if not rest:
        return 1, None
    again = EnrollmentRequest(
        "enroll", out.request.identity, out.request.name, rest, basis=out.request.basis
    )
    return 1, _Outgoing(again, out.paths)


def _why(error: dict[str, Any]) -> dict[str, Any]:
    keep = ("reason", "message", "matches", "similarity")
    return {k: error[k] for k in keep if error.get(k) is not None}


async def send_all(
    settings: Settings,
    entries: list[Entry],
    journal: Journal,
    *,
    batch: int = 8,
    in_flight: int = 4,
    timeout_s: float = 120.0,
    retry_refused: bool = False,
    advance: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Enrol ``entries``, ``in_flight`` requests at a time; ``advance(n)``: n more photos
    have an outcome. Fails only when no acknowledgement at all comes for ``timeout_s``
    (the worker is serial: a deadline per request would count the queue ahead of it)."""
    from streams.clients import producer, tail

    summary = Summary(photos=len(entries))
    began = time.monotonic()
    todo = _requests(
        entries, journal, summary, batch, settings.kafka.max_message_bytes, retry_refused, advance
    )
    again: deque[_Outgoing] = deque()
    pending: dict[str, _Outgoing] = {}
    topic = settings.topics.enrollments
    # The broker's own fetch wait (Tansu holds a fetch for all of it, even once acks came).
    wait_ms = settings.tuning.fetch_max_wait_ms or 500
    acks_topic = settings.topics.enrollment_acks
    async with (
        tail(settings, [acks_topic], fetch_max_wait_ms=wait_ms) as acks,
        producer(settings) as p,
    ):
        last_ack = time.monotonic()
        while True:
            while len(pending) < in_flight:
                out = again.popleft() if again else next(todo, None)
                if out is None:
                    break
                req = out.request
                await p.send_and_wait(topic, req.encode(), key=req.identity.encode())
                pending[req.request_id] = out
            if not pending:
                break
            for records in (await acks.getmany(timeout_ms=500)).values():
                for rec in records:
                    reply = json.loads(rec.value)
                    out = pending.pop(reply.get("request_id"), None)
                    if out is None:
                        continue  # another sender's
                    last_ack = time.monotonic()
                    settled, retry = _settle(out, reply, journal, summary)
                    advance(settled)
                    if retry is not None:
                        again.append(retry)
            if time.monotonic() - last_ack > timeout_s:
                raise TimeoutError(
                    f"no acknowledgement for {timeout_s:.0f}s with {len(pending)} enrolment "
                    "request(s) waiting (is a worker running?); rerun to resume"
                )
    summary.seconds = time.monotonic() - began
    return summary
