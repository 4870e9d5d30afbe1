"""A Qdrant server through qdrant-client (production; shared by all workers).

The collection's metadata records the model id. It is created with explicit settings: HNSW
(``gallery.hnsw_m``, ``gallery.hnsw_ef_construct``), quantization (``gallery.quantization``,
kept in RAM, searches rescore with the original vectors) and payload indexes on ``identity``
(keyword) and ``expires_at`` (float), which every filtered read uses. The server builds its
HNSW index in the background by itself (its optimizer runs beside the searches).

Identity records live in a companion collection without vectors, ``<collection>--identities``:
one point per identity (id = ``record_id(identity)``), so listing and counting identities never
scroll the faces. Pages follow the record ids' order.

Tests drive this adapter against qdrant-client's local mode (``url=":memory:"`` or
``url="path:/some/dir"``), which speaks the same API with brute-force search and ignores
index and quantization settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import SecretStr
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from actors.gallery.base import _SCROLL_PAGE, Gallery, Hit, record_id
from core.settings import GallerySettings

RECORDS_SUFFIX = "--identities"


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


def records_collection(collection: str) -> str:
    """The companion collection holding ``collection``'s identity records: drop it with it."""
    return f"{collection}{RECORDS_SUFFIX}"


def quantization_config(kind: str) -> qm.QuantizationConfig | None:
    """``gallery.quantization`` as the server's quantization config (kept in RAM)."""
    if kind == "int8":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True)
        )
    if kind in ("turbo4", "turbo2"):
        bits = qm.TurboQuantBitSize.BITS4 if kind == "turbo4" else qm.TurboQuantBitSize.BITS2
        return qm.TurboQuantization(
            turbo=qm.TurboQuantQuantizationConfig(always_ram=True, bits=bits)
        )
    if kind == "binary":
        return qm.BinaryQuantization(
            binary=qm.BinaryQuantizationConfig(
                always_ram=True, query_encoding=qm.BinaryQuantizationQueryEncoding.SCALAR8BITS
            )
        )
    return None


class ServerGallery(Gallery):
    backend = "server"

    def __init__(
        self,
        url: str,
        collection: str,
        model_id: str | None,
        dim: int | None,
        api_key: SecretStr | str | None = None,
        options: GallerySettings | None = None,
    ) -> None:
        super().__init__(model_id, dim)
        self.options = options or GallerySettings()
        self.client = make_client(url, api_key)
        self.collection = collection
        self.records = records_collection(collection)
        self.local = url.startswith((":memory:", "path:"))
        if self.client.collection_exists(collection):
            config = self.client.get_collection(collection).config
            meta = config.metadata or {}
            self._bind_model(meta.get("model_id"), config.params.vectors.size)
        else:
            self._bind_model(None, None)
            o = self.options
            self.client.create_collection(
                collection,
                vectors_config=qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE),
                hnsw_config=qm.HnswConfigDiff(
                    m=o.hnsw_m, ef_construct=o.hnsw_ef_construct, full_scan_threshold=10_000
                ),
                quantization_config=quantization_config(o.quantization),
                metadata={"model_id": self.model_id},
            )
            if not self.local:  # local mode has no payload indexes (it warns on each)
                self.client.create_payload_index(
                    collection, "identity", qm.PayloadSchemaType.KEYWORD
                )
                self.client.create_payload_index(
                    collection, "expires_at", qm.PayloadSchemaType.FLOAT
                )
        if not self.client.collection_exists(self.records):
            self.client.create_collection(self.records, vectors_config={})
            self._rebuild_records()  # a collection made before records existed

    # -- points -----------------------------------------------------------------------------

    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        self.client.upsert(
            self.collection,
            [qm.PointStruct(id=pid, vector=vec, payload=pl) for pid, vec, pl in points],
            wait=True,
        )

    def _params(self, limit: int, exact: bool = False) -> qm.SearchParams | None:
        if self.local:  # brute force: the parameters only draw a warning per query
            return None
        quantization = None
        if self.options.quantization != "none":
            quantization = qm.QuantizationSearchParams(
                rescore=True, oversampling=self.options.rescore_oversampling
            )
        return qm.SearchParams(
            hnsw_ef=max(self.options.hnsw_ef, limit), exact=exact, quantization=quantization
        )

    def _query_batch(self, vectors: np.ndarray, limit: int, exact: bool = False) -> list[list[Hit]]:
        params = self._params(limit, exact)
        requests = [
            qm.QueryRequest(query=v.tolist(), limit=limit, with_payload=True, params=params)
            for v in vectors
        ]
        answers = self.client.query_batch_points(self.collection, requests)
        return [
            [Hit(p.score, dict(p.payload or {}), str(p.id)) for p in answer.points]
            for answer in answers
        ]

    def _filter(self, spec: tuple) -> qm.Filter:
        cond: qm.Condition
        if spec[0] == "identity":
            cond = qm.FieldCondition(key="identity", match=qm.MatchValue(value=spec[1]))
        elif spec[0] == "ids":
            cond = qm.HasIdCondition(has_id=list(spec[1]))
        elif spec[0] == "before":
            cond = qm.FieldCondition(key=spec[1], range=qm.Range(lt=spec[2]))
        else:
            raise ValueError(f"unknown selector {spec!r}")
        return qm.Filter(must=[cond])

    def _scroll(self, spec: tuple | None, vectors: bool = False) -> Iterator[qm.Record]:
        """Every point ``spec`` selects (None: all), a page at a time."""
        flt = None if spec is None else self._filter(spec)
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=not vectors,
                with_vectors=vectors,
            )
            yield from records
            if offset is None:
                return

    def _find(self, spec: tuple) -> list[dict[str, Any]]:
        return [dict(r.payload or {}) for r in self._scroll(spec)]

    def _all_payloads(self) -> list[dict[str, Any]]:
        return [dict(r.payload or {}) for r in self._scroll(None)]

    def _vectors(self, spec: tuple) -> np.ndarray:
        rows = [r.vector for r in self._scroll(spec, vectors=True)]
        return np.asarray(rows, np.float32).reshape(len(rows), self.dim)

    def _count(self, spec: tuple | None) -> int:
        flt = None if spec is None else self._filter(spec)
        return self.client.count(self.collection, count_filter=flt, exact=True).count

    def _counts(self, identities: list[str]) -> dict[str, int]:
        """Points per identity: one facet request per thousand identities."""
        out = dict.fromkeys(identities, 0)
        for start in range(0, len(identities), 1000):
            chunk = identities[start : start + 1000]
            flt = qm.Filter(must=[qm.FieldCondition(key="identity", match=qm.MatchAny(any=chunk))])
            found = self.client.facet(
                self.collection, key="identity", facet_filter=flt, exact=True, limit=len(chunk)
            )
            for hit in found.hits:
                out[str(hit.value)] = hit.count
        return out

    def _delete_where(self, spec: tuple) -> int:
        flt = self._filter(spec)
        removed = self.client.count(self.collection, count_filter=flt, exact=True).count
        if removed:
            self.client.delete(
                self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True
            )
        return removed

    # -- identity records -------------------------------------------------------------------

    def _records_get(self, identities: list[str]) -> dict[str, dict[str, Any]]:
        found = self.client.retrieve(
            self.records, [record_id(i) for i in identities], with_payload=True
        )
        return {r.payload["identity"]: dict(r.payload) for r in found if r.payload}

    def _records_put(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _SCROLL_PAGE):
            self.client.upsert(
                self.records,
                [
                    qm.PointStruct(id=record_id(r["identity"]), vector={}, payload=r)
                    for r in rows[start : start + _SCROLL_PAGE]
                ],
                wait=True,
            )

    def _records_delete(self, identity: str) -> None:
        self.client.delete(
            self.records, points_selector=qm.PointIdsList(points=[record_id(identity)]), wait=True
        )

    def _records_page(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        offset = None if after is None else record_id(after)
        # The page starts at ``after``'s own record when it still exists: ask for one more.
        records, _ = self.client.scroll(
            self.records, limit=limit + 1, offset=offset, with_payload=True
        )
        rows = [dict(r.payload or {}) for r in records]
        if after is not None and rows and rows[0].get("identity") == after:
            rows = rows[1:]
        return rows[:limit]

    def _records_count(self) -> int:
        return self.client.count(self.records, exact=True).count

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
