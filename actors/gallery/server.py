"""A Qdrant server through qdrant-client (production; shared by all workers).

The collection's metadata records the model id. Tests drive this adapter against
qdrant-client's local mode (``url=":memory:"`` or ``url="path:/some/dir"``), which speaks
the same API with brute-force search.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from actors.gallery.base import Gallery, Hit


def make_client(url: str, api_key: SecretStr | str | None = None) -> QdrantClient:
    """A client for ``url``; the API key (settings hold it as a SecretStr) is revealed here
    only, to qdrant-client."""
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("path:"):
        return QdrantClient(path=url.removeprefix("path:"))
    return QdrantClient(url=url, api_key=api_key)


class ServerGallery(Gallery):
    backend = "server"

    def __init__(
        self,
        url: str,
        collection: str,
        model_id: str | None,
        dim: int | None,
        api_key: SecretStr | str | None = None,
    ) -> None:
        super().__init__(model_id, dim)
        self.client = make_client(url, api_key)
        self.collection = collection
        if self.client.collection_exists(collection):
            config = self.client.get_collection(collection).config
            meta = config.metadata or {}
            self._bind_model(meta.get("model_id"), config.params.vectors.size)
        else:
            self._bind_model(None, None)
            self.client.create_collection(
                collection,
                vectors_config=qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE),
                metadata={"model_id": self.model_id},
            )
            if not url.startswith((":memory:", "path:")):  # local mode has no payload indexes
                self.client.create_payload_index(
                    collection, "identity", qm.PayloadSchemaType.KEYWORD
                )

    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        self.client.upsert(
            self.collection,
            [qm.PointStruct(id=pid, vector=vec, payload=pl) for pid, vec, pl in points],
            wait=True,
        )

    def _query(self, vector: list[float], limit: int) -> list[Hit]:
        res = self.client.query_points(
            self.collection, query=vector, limit=limit, with_payload=True
        )
        return [Hit(p.score, dict(p.payload or {})) for p in res.points]

    def _equals(self, field: str, value: str) -> qm.Filter:
        return qm.Filter(must=[qm.FieldCondition(key=field, match=qm.MatchValue(value=value))])

    def _before(self, field: str, value: float) -> qm.Filter:
        return qm.Filter(must=[qm.FieldCondition(key=field, range=qm.Range(lt=value))])

    def _scroll(self, offset: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        records, next_offset = self.client.scroll(
            self.collection, limit=limit, offset=offset, with_payload=True
        )
        return [dict(r.payload or {}) for r in records], next_offset

    def _delete_where(self, flt: qm.Filter) -> int:
        removed = self.client.count(self.collection, count_filter=flt, exact=True).count
        if removed:
            self.client.delete(
                self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True
            )
        return removed

    def size(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def close(self) -> None:
        self.client.close()
