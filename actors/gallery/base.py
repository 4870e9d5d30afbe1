"""Gallery interface: enrolled face embeddings, searched by cosine similarity.

Each enrolled photo is one point: its embedding plus a payload (identity, name, photo name,
photo sha256, model id, enrolment time). Searches rank *identities*: several photos of one
person yield one candidate carrying that person's best similarity.

Beside the points, every enrolled identity has one small *record* (identity, name, photos,
enrolled_at): listing, paging and counting identities read those records, never the points.

A gallery is bound to the model id that produced its embeddings; opening it with another
model is refused (embeddings of different models are not comparable).

Thread safety: every method may be called from several threads at once (the gallery actor is
a threaded actor). Writes are serialised by one lock; searches and reads take no gallery lock.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.gallery.errors import GalleryError, ModelMismatch
from core.faces import Candidate

_POINT_NAMESPACE = uuid.UUID("6f1d3a52-8a4e-4f3c-9a55-1c2b7f0e9d11")
# First search: this many points per wanted identity. When they hold fewer than top_k distinct
# identities (someone has many photos near the query), the search is repeated with a limit
# _GROW times larger, until top_k identities are found or the gallery has no more points: a
# person with many photos never crowds another out of the top-k.
_FIRST_OVERSAMPLE = 4
_GROW = 4
# First limit of an exact search for every point near a query (``within``), grown by _GROW.
_WITHIN_FIRST = 16
# Payloads read per request when a backend rebuilds its identity records from the points.
_SCROLL_PAGE = 1024


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]
    id: str = ""


def point_id(identity: str, photo_sha256: str) -> str:
    """Deterministic, so replaying the enrolment log upserts instead of duplicating."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{identity}\0{photo_sha256}"))


def record_id(identity: str) -> str:
    """The id of an identity's record (server backend)."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"identity\0{identity}"))


def group_by_identity(hits: list[Hit], top_k: int) -> list[Candidate]:
    """The ``top_k`` best identities among ``hits`` (best similarity first)."""
    best: dict[str, float] = {}
    for hit in hits:
        ident = hit.payload["identity"]
        if hit.score > best.get(ident, -2.0):
            best[ident] = hit.score
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [Candidate(i, round(s, 4)) for i, s in ranked]


class Gallery(ABC):
    backend: str

    def __init__(self, model_id: str | None, dim: int | None) -> None:
        """``model_id=None`` adopts the stored model (reads, listing, deletion only)."""
        self.model_id = model_id
        self.dim = dim
        self._write_lock = threading.RLock()

    def _bind_model(self, stored: str | None, stored_dim: int | None) -> None:
        if self.dim is None:
            self.dim = stored_dim
        if self.model_id is None:
            if stored is None:
                raise GalleryError("no gallery here yet (nothing has been enrolled)")
            self.model_id = stored
        elif stored is not None and stored != self.model_id:
            raise ModelMismatch(
                f"gallery holds embeddings of model {stored!r}; this worker runs "
                f"{self.model_id!r}. Re-enrol into a new gallery for the new model."
            )

    # -- enrolment --------------------------------------------------------------------------

    def add(
        self,
        identity: str,
        name: str | None,
        embeddings: np.ndarray,
        photos: list[dict[str, str]],
        basis: str | None = None,
    ) -> list[str]:
        """Enrol one photo per row of ``embeddings``; ``photos`` hold ``name`` and ``sha256``;
        ``basis`` is the legal basis recorded with every point."""
        return self.add_many([(identity, name, embeddings, photos, basis)])[0]

    def add_many(
        self,
        enrolments: list[tuple[str, str | None, np.ndarray, list[dict[str, str]], str | None]],
    ) -> list[list[str]]:
        """Several ``add`` calls in one write (one upsert, one flush): bulk enrolment.
        Each item: (identity, name, embeddings, photos, basis)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        points: list[tuple[str, list[float], dict[str, Any]]] = []
        ids: list[list[str]] = []
        for identity, name, embeddings, photos, basis in enrolments:
            self._check_dim(embeddings)
            mine = []
            for vector, photo in zip(embeddings, photos, strict=True):
                payload = {
                    "identity": identity,
                    "name": name,
                    "photo": photo["name"],
                    "photo_sha256": photo["sha256"],
                    "model_id": self.model_id,
                    "basis": basis,
                    "enrolled_at": now,
                }
                pid = point_id(identity, photo["sha256"])
                points.append((pid, np.asarray(vector, np.float32).tolist(), payload))
                mine.append(pid)
            ids.append(mine)
        with self._write_lock:
            if points:
                self._upsert(points)
            names: dict[str, str | None] = {}
            for identity, name, *_ in enrolments:
                if name is not None or identity not in names:
                    names[identity] = name
            self._refresh_records(names, now)
        return ids

    def _refresh_records(self, names: dict[str, str | None], now: str) -> None:
        """After points of ``names``' identities changed: their records, recounted from the
        points (so a replayed enrolment cannot inflate a count)."""
        old = self._records_get(list(names))
        counts = self._counts(list(names))
        rows, gone = [], []
        for identity, name in names.items():
            photos = counts[identity]
            if not photos:
                gone.append(identity)
                continue
            prev = old.get(identity) or {}
            rows.append(
                {
                    "identity": identity,
                    "name": name if name is not None else prev.get("name"),
                    "photos": photos,
                    "enrolled_at": min(prev.get("enrolled_at") or now, now),
                }
            )
        if rows:
            self._records_put(rows)
        for identity in gone:
            self._records_delete(identity)

    def add_points(self, embeddings: np.ndarray, payloads: list[dict[str, Any]]) -> list[str]:
        """Store anonymous points (sightings): random ids, the given payloads, no records."""
        self._check_dim(embeddings)
        ids = [str(uuid.uuid4()) for _ in payloads]
        with self._write_lock:
            self._upsert(list(zip(ids, embeddings.tolist(), payloads, strict=True)))
        return ids

    # -- search -----------------------------------------------------------------------------

    def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Top-k identities per query embedding, best similarity first: one backend query for
        the whole batch (more only for a query whose nearest points hold fewer than top_k
        identities, with a larger limit)."""
        self._check_dim(embeddings)
        out: list[list[Candidate]] = [[] for _ in range(len(embeddings))]
        pending = list(range(len(embeddings)))
        limit = max(1, top_k) * _FIRST_OVERSAMPLE
        while pending:
            found = self._query_batch(np.asarray(embeddings[pending], np.float32), limit)
            still = []
            for i, hits in zip(pending, found, strict=True):
                ranked = group_by_identity(hits, top_k)
                # Done: top_k identities seen (none beyond the limit can beat them), or the
                # gallery returned fewer points than asked for (it has no more).
                if len(ranked) >= top_k or len(hits) < limit:
                    out[i] = ranked
                else:
                    still.append(i)
            pending, limit = still, limit * _GROW
        return out

    def nearest(self, embedding: np.ndarray, limit: int) -> list[tuple[float, dict[str, Any]]]:
        """The ``limit`` nearest points with their payloads (no grouping by identity)."""
        (hits,) = self._query_batch(np.asarray(embedding, np.float32).reshape(1, -1), limit)
        return [(h.score, h.payload) for h in hits]

    def within(self, embeddings: np.ndarray, threshold: float) -> list[str]:
        """The ids of every point at or above ``threshold`` similarity to a row of
        ``embeddings``, by exact search (an erasure must not miss one that the approximate index
        would): the limit grows until a query's farthest hit is below ``threshold`` or the
        gallery has no more points."""
        self._check_dim(embeddings)
        found: set[str] = set()
        pending = list(range(len(embeddings)))
        limit = _WITHIN_FIRST
        while pending:
            queries = np.asarray(embeddings[pending], np.float32)
            still = []
            for i, hits in zip(pending, self._query_batch(queries, limit, exact=True), strict=True):
                found.update(h.id for h in hits if h.score >= threshold)
                if len(hits) == limit and hits[-1].score >= threshold:
                    still.append(i)
            pending, limit = still, limit * _GROW
        return sorted(found)

    def vectors(self, identity: str) -> np.ndarray:
        """The embeddings of ``identity``'s photos, one row each (to find their face in other
        stores before an erasure deletes them here)."""
        return self._vectors(("identity", identity))

    # -- identities ---------------------------------------------------------------------------

    def identities(
        self, limit: int | None = None, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Enrolled identities, one row each (identity, name, photos, enrolled_at), in the
        backend's stable order, starting after identity ``after``; at most ``limit`` rows
        (None: all of them)."""
        if limit is not None:
            return self._records_page(after, limit)
        rows: list[dict[str, Any]] = []
        while True:
            page = self._records_page(after, _SCROLL_PAGE)
            rows.extend(page)
            if len(page) < _SCROLL_PAGE:
                return rows
            after = page[-1]["identity"]

    def identity_count(self) -> int:
        """Number of enrolled identities."""
        return self._records_count()

    def show(self, identity: str) -> list[dict[str, Any]]:
        """Everything stored about ``identity``: one payload per enrolled photo."""
        return sorted(
            self._find(("identity", identity)),
            key=lambda p: (p.get("enrolled_at") or "", p.get("photo") or ""),
        )

    def delete(self, identity: str) -> int:
        """Remove every point of ``identity`` and its record; returns how many were removed."""
        with self._write_lock:
            removed = self._delete_where(("identity", identity))
            self._records_delete(identity)
        return removed

    def delete_points(self, ids: list[str]) -> int:
        """Remove the points ``ids`` (anonymous ones: sightings); returns how many there were."""
        if not ids:
            return 0
        with self._write_lock:
            return self._delete_where(("ids", list(ids)))

    def purge_expired(self, now: float) -> int:
        """Remove every point whose ``expires_at`` (epoch seconds) is before ``now``."""
        with self._write_lock:
            return self._delete_where(("before", "expires_at", float(now)))

    def _rebuild_records(self) -> None:
        """Identity records from the points, by one scroll of every payload: only for a gallery
        made before records existed."""
        rows: dict[str, dict[str, Any]] = {}
        for payload in self._all_payloads():
            ident = payload.get("identity")
            if ident is None:
                continue  # an anonymous point (sightings)
            row = rows.setdefault(
                ident,
                {"identity": ident, "name": payload.get("name"), "photos": 0, "enrolled_at": None},
            )
            row["photos"] += 1
            at = payload.get("enrolled_at")
            if at and (row["enrolled_at"] is None or at < row["enrolled_at"]):
                row["enrolled_at"] = at
        if rows:
            self._records_put(list(rows.values()))

    def _check_dim(self, embeddings: np.ndarray) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise GalleryError(f"expected (n, {self.dim}) embeddings, got {embeddings.shape}")

    # -- what a backend implements -------------------------------------------------------
    # A "spec" selects points: ("identity", value), ("ids", [point ids]) or
    # ("before", field, value).

    @abstractmethod
    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None: ...

    @abstractmethod
    def _query_batch(self, vectors: np.ndarray, limit: int, exact: bool = False) -> list[list[Hit]]:
        """The ``limit`` nearest points of each row of ``vectors``, best first: one request.
        ``exact``: by brute force, never through an approximate index."""

    @abstractmethod
    def _vectors(self, spec: tuple) -> np.ndarray:
        """The embeddings of the points ``spec`` selects, shape (n, dim)."""

    @abstractmethod
    def _find(self, spec: tuple) -> list[dict[str, Any]]:
        """The payloads of the points ``spec`` selects (through a payload index)."""

    @abstractmethod
    def _count(self, spec: tuple | None) -> int:
        """How many points ``spec`` selects (None: all of them)."""

    def _counts(self, identities: list[str]) -> dict[str, int]:
        """Points per identity (a backend may answer them in one request)."""
        return {i: self._count(("identity", i)) for i in identities}

    @abstractmethod
    def _delete_where(self, spec: tuple) -> int:
        """Delete the points ``spec`` selects; how many there were."""

    @abstractmethod
    def _all_payloads(self) -> list[dict[str, Any]]:
        """Every point's payload (only to rebuild the identity records)."""

    @abstractmethod
    def _records_get(self, identities: list[str]) -> dict[str, dict[str, Any]]: ...

    @abstractmethod
    def _records_put(self, rows: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def _records_delete(self, identity: str) -> None: ...

    @abstractmethod
    def _records_page(self, after: str | None, limit: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _records_count(self) -> int: ...

    def index_status(self) -> dict[str, Any]:
        """What the backend's index is doing (the edge backend builds its own)."""
        return {"backend": self.backend}

    def size(self) -> int:
        """Number of enrolled photos (points)."""
        return self._count(None)

    @abstractmethod
    def close(self) -> None: ...
