"""Sightings: the opt-in store of unknown faces, each with a mandatory expiry.

By default facestream keeps nothing about faces it does not recognise. An operator who needs
to search past unknown faces (e.g. "was this person seen yesterday?") enables this store; each
sighting then carries ``expires_at`` and the purge job deletes it once that time has passed.
Searches never return an expired sighting, even before the purge runs.

A sighting holds no identity, but it may be an enrolled person's face seen before their
enrolment: their erasure removes every sighting that matches one of their photos
(``erase_near``), so nothing of theirs stays here either.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from actors.gallery import Gallery, open_model_gallery


class Sightings:
    def __init__(self, settings: Any, model_id: str, dim: int) -> None:
        self.ttl_s: float = settings.sightings.ttl_s
        self.store: Gallery = open_model_gallery(settings, model_id, dim, kind="sightings")

    def record(
        self, embeddings: np.ndarray, metas: list[dict[str, Any]], now: float | None = None
    ) -> int:
        """Keep unknown faces; ``metas`` hold image_id, source, captured_at per face."""
        if not len(embeddings):
            return 0
        now = time.time() if now is None else now
        payloads = [{**m, "seen_at": now, "expires_at": now + self.ttl_s} for m in metas]
        return len(self.store.add_points(embeddings, payloads))

    def search(
        self, embedding: np.ndarray, limit: int = 10, now: float | None = None
    ) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        hits = self.store.nearest(embedding, limit * 4)
        live = [{**p, "similarity": round(s, 4)} for s, p in hits if p["expires_at"] > now]
        return live[:limit]

    def erase_near(self, embeddings: np.ndarray, threshold: float) -> int:
        """Remove every sighting, expired or not, at or above ``threshold`` similarity to a
        row of ``embeddings`` (an erased person's gallery photos); returns how many."""
        if not len(embeddings):
            return 0
        return self.store.delete_points(self.store.within(embeddings, threshold))

    def purge(self, now: float | None = None) -> int:
        return self.store.purge_expired(time.time() if now is None else now)

    def size(self) -> int:
        return self.store.size()

    def close(self) -> None:
        self.store.close()
