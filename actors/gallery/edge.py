"""The embedded Qdrant engine (qdrant-edge): in-process segments, HNSW, WAL.

Only one process may open a shard (a second one gets a WAL lock error), so in the pipeline
one Ray actor owns it and every read and write goes through that actor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from actors.gallery.base import Gallery, GalleryError, Hit

# Written beside the shard by the process that owns it: where CLI processes can reach it.
OWNER_FILE = "owner.json"


class EdgeGallery(Gallery):
    backend = "edge"

    def __init__(
        self, path: Path, model_id: str | None, dim: int | None, hnsw_ef: int = 128
    ) -> None:
        super().__init__(model_id, dim)
        self.path = Path(path).expanduser()
        self.hnsw_ef = hnsw_ef
        meta_file = self.path / "gallery.json"
        shard_dir = self.path / "shard"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        self._bind_model(meta.get("model_id"), meta.get("dim"))
        try:
            if shard_dir.exists() and any(shard_dir.iterdir()):
                self.shard = qe.EdgeShard.load(str(shard_dir))
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.shard = qe.EdgeShard.create(str(shard_dir), self._config())
                self.shard.update(
                    qe.UpdateOperation.create_field_index("identity", qe.PayloadSchemaType.Keyword)
                )
        except Exception as exc:  # the engine raises plain exceptions, e.g. on a held WAL lock
            raise GalleryError(f"cannot open gallery at {shard_dir}: {exc}") from exc
        if not meta:
            meta_file.write_text(json.dumps({"model_id": self.model_id, "dim": self.dim}))

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000),
        )

    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        self.shard.update(
            qe.UpdateOperation.upsert_points([qe.Point(pid, vec, pl) for pid, vec, pl in points])
        )
        self.shard.flush()

    def _query(self, vector: list[float], limit: int) -> list[Hit]:
        hits = self.shard.query(
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(vector),
                with_payload=True,
                params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit)),
            )
        )
        return [Hit(h.score, dict(h.payload or {})) for h in hits]

    def _equals(self, field: str, value: str) -> qe.Filter:
        return qe.Filter(must=[qe.FieldCondition(key=field, match=qe.MatchValue(value))])

    def _before(self, field: str, value: float) -> qe.Filter:
        return qe.Filter(must=[qe.FieldCondition(key=field, range=qe.RangeFloat(lt=value))])

    def _scroll(self, offset: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True)
        records, next_offset = self.shard.scroll(request)
        return [dict(r.payload or {}) for r in records], next_offset

    def _delete_where(self, flt: qe.Filter) -> int:
        removed = self.shard.count(qe.CountRequest(filter=flt, exact=True))
        if removed:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
            self.shard.flush()
        return removed

    def size(self) -> int:
        return self.shard.count(qe.CountRequest(exact=True))

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()
