"""Gallery interface: enrolled face embeddings, searched by cosine similarity.

Each enrolled photo is one point: its embedding plus a payload (identity, name, photo name,
photo sha256, model id, enrolment time). Searches rank *identities*: several photos of one
person yield one candidate carrying that person's best similarity.

A gallery is bound to the model id that produced its embeddings; opening it with another
model is refused (embeddings of different models are not comparable).
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.faces import Candidate

_POINT_NAMESPACE = uuid.UUID("6f1d3a52-8a4e-4f3c-9a55-1c2b7f0e9d11")
# Search this many points per wanted identity, so that a person with several photos does not
# crowd the others out of the top-k.
_OVERSAMPLE = 4
# Payloads read per request when listing the whole gallery.
_SCROLL_PAGE = 1024


class GalleryError(RuntimeError):
    pass


class ModelMismatch(GalleryError):
    pass


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]


def point_id(identity: str, photo_sha256: str) -> str:
    """Deterministic, so replaying the enrolment log upserts instead of duplicating."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{identity}\0{photo_sha256}"))


class Gallery(ABC):
    backend: str

    def __init__(self, model_id: str | None, dim: int | None) -> None:
        """``model_id=None`` adopts the stored model (reads, listing, deletion only)."""
        self.model_id = model_id
        self.dim = dim

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
        self._check_dim(embeddings)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        points = []
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
            points.append((point_id(identity, photo["sha256"]), vector.tolist(), payload))
        self._upsert(points)
        return [p[0] for p in points]

    def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Top-k identities per query embedding, best similarity first."""
        self._check_dim(embeddings)
        out = []
        for vector in embeddings:
            best: dict[str, float] = {}
            for hit in self._query(vector.tolist(), top_k * _OVERSAMPLE):
                ident = hit.payload["identity"]
                best[ident] = max(best.get(ident, -1.0), hit.score)
            ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
            out.append([Candidate(i, round(s, 4)) for i, s in ranked])
        return out

    def identities(self) -> list[dict[str, Any]]:
        """One row per enrolled identity: identity, name, photos, enrolled_at."""
        rows: dict[str, dict[str, Any]] = {}
        for payload in self._payloads():
            row = rows.setdefault(
                payload["identity"],
                {
                    "identity": payload["identity"],
                    "name": payload.get("name"),
                    "photos": 0,
                    "enrolled_at": payload.get("enrolled_at"),
                },
            )
            row["photos"] += 1
            row["enrolled_at"] = min(row["enrolled_at"] or "", payload.get("enrolled_at") or "")
        return sorted(rows.values(), key=lambda r: r["identity"])

    def show(self, identity: str) -> list[dict[str, Any]]:
        """Everything stored about ``identity``: one payload per enrolled photo."""
        return sorted(
            (p for p in self._payloads() if p.get("identity") == identity),
            key=lambda p: (p.get("enrolled_at") or "", p.get("photo") or ""),
        )

    def _payloads(self) -> list[dict[str, Any]]:
        """Every point's payload, a page at a time."""
        out: list[dict[str, Any]] = []
        offset = None
        while True:
            page, offset = self._scroll(offset, _SCROLL_PAGE)
            out.extend(page)
            if offset is None:
                return out

    def _check_dim(self, embeddings: np.ndarray) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise GalleryError(f"expected (n, {self.dim}) embeddings, got {embeddings.shape}")

    # -- what a backend implements -------------------------------------------------------

    @abstractmethod
    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None: ...

    @abstractmethod
    def _query(self, vector: list[float], limit: int) -> list[Hit]: ...

    @abstractmethod
    def _scroll(self, offset: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        """Up to ``limit`` payloads from ``offset`` (None: the first page), and the offset of
        the next page (None after the last)."""

    def delete(self, identity: str) -> int:
        """Remove every point of ``identity``; returns how many were removed."""
        return self._delete_where(self._equals("identity", identity))

    def purge_expired(self, now: float) -> int:
        """Remove every point whose ``expires_at`` (epoch seconds) is before ``now``."""
        return self._delete_where(self._before("expires_at", now))

    def add_points(self, embeddings: np.ndarray, payloads: list[dict[str, Any]]) -> list[str]:
        """Store anonymous points (sightings): random ids, the given payloads."""
        self._check_dim(embeddings)
        ids = [str(uuid.uuid4()) for _ in payloads]
        self._upsert(list(zip(ids, embeddings.tolist(), payloads, strict=True)))
        return ids

    def nearest(self, embedding: np.ndarray, limit: int) -> list[tuple[float, dict[str, Any]]]:
        """The ``limit`` nearest points with their payloads (no grouping by identity)."""
        return [(h.score, h.payload) for h in self._query(embedding.tolist(), limit)]

    @abstractmethod
    def _equals(self, field: str, value: str) -> Any: ...

    @abstractmethod
    def _before(self, field: str, value: float) -> Any: ...

    @abstractmethod
    def _delete_where(self, flt: Any) -> int: ...

    @abstractmethod
    def size(self) -> int:
        """Number of enrolled photos (points)."""

    @abstractmethod
    def close(self) -> None: ...
