"""The embedded Qdrant engine (qdrant-edge), with an HNSW index that builds itself in the
background without stopping searches or enrolments.

How qdrant-edge 0.9.0 behaves (read in Qdrant's source, measured here):

- A shard is a set of *segments*. Upserts land in an appendable, "plain" segment, searched by
  a full scan (exact). Nothing happens by itself: ``optimize()`` runs Qdrant's server
  optimizers (indexing: build HNSW and the quantized vectors of a segment above
  ``indexing_threshold``; merge: join small segments down to ``default_segment_number``, at
  most ``max_segment_size`` KB each; vacuum: drop deleted points) in the calling thread,
  until none has a plan left. Merging an indexed segment with new points reuses its HNSW
  graph (incremental building, on by default): 20k points into 200k took 16 s here, the
  whole 200k 81 s. Segments under the HNSW ``full_scan_threshold`` (KB) are always scanned.
- Every ``EdgeShard`` method holds Python's GIL for its whole duration (the bindings never
  release it): during an ``optimize()`` (about 100 s for 100k faces on 2 cores) no other
  thread of the process runs; ``load()`` of an indexed 200k-point shard holds it 0.6-0.9 s,
  and a ``flush()`` (fsync) 7-30 ms, hundreds when the disk is busy.
- Only one process may open a shard (a second one fails on the WAL lock).

So the process that owns the gallery (the gallery actor) calls no engine method at all:
every shard lives in a child process (``python -m actors.gallery.edge``), and this process
only routes requests and waits on pipes. A gallery is:

- **live shards**, in the *live process*: plain segments where every enrolment lands
  (upsert + flush, durable when ``add`` returns). This process keeps a copy of their points
  (the *mirror*, float32) and searches it exactly with numpy, so the unindexed part is
  searched exactly and a flush never delays a search. Normally one live shard; two while a
  build runs (the older one is *frozen*: no new points).
- **the index**, served by an *index process*: one shard with HNSW (``gallery.hnsw_m``,
  ``hnsw_ef_construct``) and quantized vectors (``gallery.quantization``), searched with
  ``hnsw_ef`` and rescored with the original vectors.
- **a build**, when the live points reach ``gallery.index_threshold``: the live shard is
  frozen (a new one takes the enrolments), its points are exported from the mirror, and a
  builder process copies the index's folder (linking the files an indexed segment only
  reads: its vectors, quantized vectors and graph, so both processes share them in the page
  cache), applies the deletions made since, adds the
  exported points and runs ``optimize()`` (with ``gallery.index_threads``); then it serves
  the new index. This process switches to it in one step, after applying the deletions made
  during the build, and drops the frozen shard and the old index. Until then searches use
  the old index and the live shards: complete, and exact on the unindexed part. While a
  search runs, the builder process is stopped (for at most ``gallery.build_pause_share`` of
  the build's time): beside it, on shared cores, searches ran several times slower.
- Deletions that touch the index are *hidden* there at once (a ``must_not`` filter in the
  index process) and applied for real by the next build: the served index's files are
  never written, so the next build can copy them while they are served.

``state.json`` names the live shards and the index; a folder it does not name (a build cut
short by a crash) is removed on open. Identity records are a SQLite table beside the shards
(``identities.sqlite3``). A gallery made before all this (one ``shard`` folder) opens as
one live shard, indexed by the first build.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import qdrant_edge as qe

from actors.gallery.base import Gallery, GalleryError, Hit
from actors.gallery.records import RECORDS_FILE, IdentityRecords
from core.concurrency import ReadWriteLock

if TYPE_CHECKING:
    from core.settings import GallerySettings

log = logging.getLogger(__name__)

META_FILE = "gallery.json"
STATE_FILE = "state.json"
LEGACY_SHARD = "shard"
_FOLDER_PREFIXES = ("live-", "index-", "export-", "mirror-")
# Segments under this size (KB) are scanned, not searched through HNSW (Qdrant's default).
FULL_SCAN_KB = 10_000
# No merge limit: the index is one segment (plus an empty appendable one).
_MAX_SEGMENT_KB = 1 << 40
_UPSERT_CHUNK = 1000
_WARM_EF = 128  # the warm-up's search breadth: enough to page in what searches touch first
# Files of an indexed segment that qdrant-edge 0.9.0 only ever opens to read (strace of a
# build that deletes, adds and merges; guarded by test_a_build_never_writes_the_served_index):
# a build links them instead of copying. At 1.4M points they are 3.9 of the index's 4.3 GB,
# which a copy held twice in the page cache beside the served index (the builder's file
# pages reached 14 GB of a 23 GB machine, evicting the served index's own pages).
_READ_ONLY_FILES = frozenset(
    {"matrix.dat", "quantized.data", "links_compressed.bin", "links.bin", "graph.bin"}
)
_EXPORT_CHUNK = 2000
# Hidden points of the index (deleted, not yet rebuilt) that start a build of their own.
_MAX_HIDDEN = 5000
_RETRY_AFTER_S = 30.0
# Searches may stop a build this long beyond its share (``_Build.paused``): at 1M points the
# slowest searches (118-120 ms) came in the first 0.3 s of builds, when the share was ~0.
_PAUSE_ALLOWANCE_S = 1.0
# After a switch the next automatic build waits this long: the switch's aftermath (the old
# index exiting, its files removed, the frozen shards dropped: ~1 s of CPU at 1M points)
# and a build's start (its export, the builder's imports) together held a search 185 ms.
_SETTLE_AFTER_SWITCH_S = 3.0
_OPEN_ATTEMPTS = 6


# -- point selectors, shared by this process and the engine processes ----------------------


def _condition(spec: tuple | list) -> Any:
    kind = spec[0]
    if kind == "identity":
        return qe.FieldCondition(key="identity", match=qe.MatchValue(spec[1]))
    if kind == "identities":
        return qe.FieldCondition(key="identity", match=qe.MatchAny(list(spec[1])))
    if kind == "ids":
        return qe.HasIdCondition(set(spec[1]))
    if kind == "before":
        return qe.FieldCondition(key=spec[1], range=qe.RangeFloat(lt=spec[2]))
    raise ValueError(f"unknown selector {spec!r}")


def _filter(spec: tuple | list | None, hidden: Hidden | None = None) -> qe.Filter | None:
    must = [] if spec is None else [_condition(spec)]
    must_not = hidden.conditions() if hidden else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _matches(spec: tuple | list, pid: str, payload: dict[str, Any]) -> bool:
    kind = spec[0]
    if kind == "identity":
        return payload.get("identity") == spec[1]
    if kind == "identities":
        return payload.get("identity") in set(spec[1])
    if kind == "ids":
        return pid in set(spec[1])
    if kind == "before":
        value = payload.get(spec[1])
        return isinstance(value, int | float) and value < spec[2]
    raise ValueError(f"unknown selector {spec!r}")


class Hidden:
    """Points of the index deleted since it was built: excluded from every read there."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.identities: set[str] = set(data.get("identities", []))
        self.ids: set[str] = set(data.get("ids", []))
        self.before: dict[str, float] = dict(data.get("before", {}))
        self._cached: list[Any] | None = None

    def add(self, spec: tuple | list) -> None:
        kind = spec[0]
        if kind == "identity":
            self.identities.add(spec[1])
        elif kind == "identities":
            self.identities.update(spec[1])
        elif kind == "ids":
            self.ids.update(spec[1])
        elif kind == "before":
            self.before[spec[1]] = max(self.before.get(spec[1], spec[2]), spec[2])
        else:
            raise ValueError(f"unknown selector {spec!r}")
        self._cached = None

    def specs(self) -> list[tuple]:
        out: list[tuple] = []
        if self.identities:
            out.append(("identities", sorted(self.identities)))
        if self.ids:
            out.append(("ids", sorted(self.ids)))
        out.extend(("before", field, value) for field, value in sorted(self.before.items()))
        return out

    def conditions(self) -> list[Any]:
        if self._cached is None:
            self._cached = [_condition(s) for s in self.specs()]
        return self._cached

    def hides(self, pid: str, payload: dict[str, Any]) -> bool:
        return any(_matches(s, pid, payload) for s in self.specs())

    def size(self) -> int:
        return len(self.identities) + len(self.ids)

    def __bool__(self) -> bool:
        return bool(self.identities or self.ids or self.before)

    def to_json(self) -> dict[str, Any]:
        return {
            "identities": sorted(self.identities),
            "ids": sorted(self.ids),
            "before": self.before,
        }


# -- shard configurations ------------------------------------------------------------------


def quantization_config(kind: str) -> Any:
    """``gallery.quantization`` as qdrant-edge's quantization config (kept in RAM)."""
    if kind == "int8":
        return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    if kind in ("turbo4", "turbo2"):
        bits = qe.TurboQuantBitSize.Bits4 if kind == "turbo4" else qe.TurboQuantBitSize.Bits2
        return qe.TurboQuantQuantizationConfig(always_ram=True, bits=bits)
    if kind == "binary":
        return qe.BinaryQuantizationConfig(
            always_ram=True, query_encoding=qe.BinaryQuantizationQueryEncoding.Scalar8Bits
        )
    if kind == "none":
        return None
    raise ValueError(f"unknown quantization {kind!r}")


def _index_config(opts: dict[str, Any]) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=opts["dim"], distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=opts["m"],
            ef_construct=opts["ef_construct"],
            full_scan_threshold=opts["full_scan_kb"],
            max_indexing_threads=opts["threads"],
        ),
        quantization_config=quantization_config(opts["quantization"]),
        optimizers=qe.EdgeOptimizersConfig(
            default_segment_number=1, max_segment_size=_MAX_SEGMENT_KB
        ),
    )


def _live_config(dim: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        # Never indexed in place (optimize() is never called on a live shard).
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )


def _create_field_indexes(shard: qe.EdgeShard) -> None:
    shard.update(qe.UpdateOperation.create_field_index("identity", qe.PayloadSchemaType.Keyword))
    shard.update(qe.UpdateOperation.create_field_index("expires_at", qe.PayloadSchemaType.Float))


def _hits(points: list[Any]) -> list[tuple[str, float, dict[str, Any]]]:
    return [(str(p.id), p.score, dict(p.payload or {})) for p in points]


def _scroll_all(
    shard: qe.EdgeShard, flt: qe.Filter | None, with_vector: bool = False, page: int = 1024
) -> Iterator[Any]:
    offset = None
    while True:
        records, offset = shard.scroll(
            qe.ScrollRequest(
                offset=offset, limit=page, filter=flt, with_payload=True, with_vector=with_vector
            )
        )
        yield from records
        if offset is None:
            return


def _write_points(
    folder: Path, vectors: np.ndarray, ids: list[str], payloads: list[dict], tags: list[str]
) -> None:
    """Points as files another process reads: ``vectors.npy`` and ``points.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors.npy", np.ascontiguousarray(vectors, np.float32))
    with open(folder / "points.jsonl", "w") as f:
        for start in range(0, len(ids), _EXPORT_CHUNK):  # short GIL holds, chunk by chunk
            stop = start + _EXPORT_CHUNK
            f.write(
                "".join(
                    json.dumps({"id": i, "payload": p, "tag": t}) + "\n"
                    for i, p, t in zip(ids[start:stop], payloads[start:stop], tags[start:stop],
                                       strict=True)
                )
            )  # fmt: skip


def _read_points(folder: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    with open(folder / "points.jsonl") as f:
        meta = [json.loads(line) for line in f]
    return vectors, meta


# -- the engine processes ------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Linux: be killed with the thread that started this process (no orphan builds)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


def _background_priority() -> None:
    """The calling thread yields the CPU and the disk to searches and enrolments (best
    effort). On Linux both are per thread, and so are inherited by the threads it starts
    (the engine's indexing threads)."""
    with contextlib.suppress(Exception):
        os.nice(10)
    with contextlib.suppress(Exception):  # ioprio_set(IOPRIO_WHO_PROCESS, self, IDLE class)
        if sys.platform == "linux" and os.uname().machine == "x86_64":
            ctypes.CDLL("libc.so.6", use_errno=True).syscall(251, 1, 0, 3 << 13)


def _build_in_background(job: dict[str, Any]) -> tuple[qe.EdgeShard, dict[str, Any]]:
    """``_build`` and the prewarm in a thread at background priority. The process's main
    thread then serves the new index at normal priority: an unprivileged process cannot
    lower its nice again, so a builder that lowered its own would serve every search after
    a rebuild at nice 10, behind the enrolments."""

    def work() -> tuple[qe.EdgeShard, dict[str, Any]]:
        _background_priority()
        shard, info = _build(job)
        info["build_nice"] = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's
        info["prewarm_s"] = _prewarm(Path(job["out"]))
        return shard, info

    with ThreadPoolExecutor(1, thread_name_prefix="gallery-build") as pool:
        return pool.submit(work).result()


def _link_or_copy(src: str, dst: str) -> str:
    """A hard link for the files a segment only reads (a copy where links fail)."""
    if Path(src).name in _READ_ONLY_FILES:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def _build(job: dict[str, Any]) -> tuple[qe.EdgeShard, dict[str, Any]]:
    """A new index at ``job["out"]``: a copy of ``job["base"]`` (or a new shard), less the
    deletions ``job["deletes"]``, plus the exported points; then optimize()."""
    started = time.perf_counter()
    out = Path(job["out"])
    shutil.rmtree(out, ignore_errors=True)
    config = _index_config(job["options"])
    if job.get("base"):
        shutil.copytree(job["base"], out, copy_function=_link_or_copy)
        shard = qe.EdgeShard.load(str(out), config)
    else:
        shard = qe.EdgeShard.create(str(out), config)
        _create_field_indexes(shard)
    copied = time.perf_counter()
    for spec in job.get("deletes", []):
        shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(spec)))
    added = 0
    if job.get("export"):
        vectors, meta = _read_points(Path(job["export"]))
        points: list[Any] = []
        for start in range(0, len(meta), _UPSERT_CHUNK):
            chunk = meta[start : start + _UPSERT_CHUNK]
            points = [
                qe.Point(m["id"], vectors[start + k].tolist(), m["payload"])
                for k, m in enumerate(chunk)
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
        added = len(meta)
        del vectors, meta, points  # what optimize() does not need: ~1.5 KB a point
    loaded = time.perf_counter()
    shard.optimize()
    shard.flush()
    info = shard.info()
    return shard, {
        "points": info.points_count,
        "indexed": info.indexed_vectors_count,
        "segments": info.segments_count,
        "added": added,
        "copy_s": round(copied - started, 3),
        "load_s": round(loaded - copied, 3),
        "optimize_s": round(time.perf_counter() - loaded, 3),
        "build_s": round(time.perf_counter() - started, 3),
    }


class _IndexServer:
    """Requests to the index shard, in the index process."""

    # A search asks the index for up to this many more points than it needs and drops the
    # hidden ones from the answer: a must_not filter makes qdrant-edge's HNSW search twice as
    # slow per face (1M points, 10 erased identities: 5-6 -> 10-13 ms), and with thousands
    # of hidden points (re-enrolments replacing photos) ten times as slow. A query left short
    # (a person whose many old photos are hidden) is asked again with the filter.
    post_filter_extra = 32

    def __init__(self, shard: qe.EdgeShard, hidden: Hidden) -> None:
        self.shard, self.hidden = shard, hidden
        # Counted here and on each hide, never on a search's path: a count that is not
        # answered by a payload index (all points, or all but the hidden) scans every point,
        # ~110 ms at 1.4M, and requests to this process wait for one another.
        self._hidden_points = self._count_hidden()

    def warm(self, queries: int = 64) -> dict[str, Any]:
        """Search the index with some of its own points before it serves: its first searches
        page it in and set it up (at 2.3M points the first search of 3 faces on a new index
        took 325 ms, against ~6 ms once warm)."""
        started = time.perf_counter()
        records, _ = self.shard.scroll(
            qe.ScrollRequest(limit=queries, with_payload=False, with_vector=True)
        )
        vectors = np.asarray([r.vector for r in records], np.float32)
        params = qe.SearchParams(hnsw_ef=_WARM_EF)
        for start in range(0, len(vectors), 8):
            self._query(vectors[start : start + 8], 12, params, None)
        return {"warm_queries": len(vectors), "warm_s": round(time.perf_counter() - started, 3)}

    def _count_hidden(self) -> int:
        """How many points ``hidden`` hides (a union of indexed conditions: ~1 ms at 1.4M)."""
        conditions = self.hidden.conditions()
        if not conditions:
            return 0
        return self.shard.count(qe.CountRequest(exact=True, filter=qe.Filter(should=conditions)))

    def _post_filtered(self) -> int | None:
        """How many more points a search asks for, to drop the hidden ones from its answer;
        None: hidden by time, the index filters them."""
        if self.hidden.before:
            return None
        return min(self._hidden_points, self.post_filter_extra)

    def _query(
        self, vectors: np.ndarray, limit: int, params: Any, flt: qe.Filter | None
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(v.tolist()),
                with_payload=True,
                filter=flt,
                params=params,
            )
            for v in vectors
        ]
        return [_hits(p) for p in self.shard.query_batch(qe.QueryBatchRequest(requests))]

    def query(
        self, vectors: np.ndarray, limit: int, ef: int, oversampling: float | None, exact: bool
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        quantization = None
        if oversampling:
            quantization = qe.QuantizationSearchParams(rescore=True, oversampling=oversampling)
        extra = self._post_filtered()
        asked = limit + (extra or 0)
        params = qe.SearchParams(hnsw_ef=max(ef, asked), exact=exact, quantization=quantization)
        if extra is None:
            return self._query(vectors, limit, params, _filter(None, self.hidden))
        found = self._query(vectors, asked, params, None)
        if not extra:
            return found
        ids, identities = self.hidden.ids, self.hidden.identities
        kept = [
            [h for h in hits if h[0] not in ids and h[2].get("identity") not in identities]
            for hits in found
        ]
        # Complete: enough points left, or the index holds no more than it gave.
        short = [i for i, (k, f) in enumerate(zip(kept, found, strict=True))
                 if len(k) < limit and len(f) == asked]  # fmt: skip
        if short:
            again = self._query(vectors[short], limit, params, _filter(None, self.hidden))
            for i, hits in zip(short, again, strict=True):
                kept[i] = hits
        return [k[:limit] for k in kept]

    def count(self, spec: tuple | None) -> int:
        if spec is None:  # the gallery's size, asked by every worker's gauges every 5 s
            return self.shard.info().points_count - self._hidden_points
        return self.shard.count(qe.CountRequest(exact=True, filter=_filter(spec, self.hidden)))

    def counts(self, identities: list[str]) -> dict[str, int]:
        out = dict.fromkeys(identities, 0)
        for start in range(0, len(identities), 1000):
            chunk = identities[start : start + 1000]
            flt = _filter(("identities", chunk), self.hidden)
            found = self.shard.facet(qe.FacetRequest("identity", len(chunk), True, flt))
            for hit in found.hits:
                out[str(hit.value)] = hit.count
        return out

    def find(self, spec: tuple | None) -> list[tuple[str, dict[str, Any]]]:
        flt = _filter(spec, self.hidden)
        return [(str(r.id), dict(r.payload or {})) for r in _scroll_all(self.shard, flt)]

    def embeddings(self, spec: tuple) -> list[list[float]]:
        flt = _filter(spec, self.hidden)
        return [r.vector for r in _scroll_all(self.shard, flt, with_vector=True)]

    def has(self, ids: list[str]) -> list[str]:
        records = self.shard.retrieve(list(ids), True, False)
        found = [(str(r.id), dict(r.payload or {})) for r in records]
        return [pid for pid, payload in found if not self.hidden.hides(pid, payload)]

    def hide(self, spec: tuple) -> None:
        self.hidden.add(spec)
        self._hidden_points = self._count_hidden()

    def apply(self, specs: list[tuple]) -> None:
        for spec in specs:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(spec)))
        self.shard.flush()
        self._hidden_points = self._count_hidden()

    def info(self) -> dict[str, Any]:
        info = self.shard.info()
        return {
            "points": info.points_count,
            "indexed": info.indexed_vectors_count,
            "segments": info.segments_count,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        self.shard.close()


class _LiveServer:
    """The live shards, in the live process: durable writes, and exports."""

    def __init__(self, folder: Path, names: list[str], dim: int) -> None:
        self.folder, self.dim = folder, dim
        self.shards: dict[str, qe.EdgeShard] = {}
        for name in names:
            self.create(name)

    def create(self, name: str) -> None:
        path = self.folder / name
        if path.exists() and any(path.iterdir()):
            self.shards[name] = qe.EdgeShard.load(str(path))
        else:
            self.shards[name] = qe.EdgeShard.create(str(path), _live_config(self.dim))
            _create_field_indexes(self.shards[name])

    def upsert(
        self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]
    ) -> float:
        shard = self.shards[name]
        for start in range(0, len(ids), _UPSERT_CHUNK):
            stop = start + _UPSERT_CHUNK
            points = [
                qe.Point(pid, vec.tolist(), payload)
                for pid, vec, payload in zip(
                    ids[start:stop], vectors[start:stop], payloads[start:stop], strict=True
                )
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
        started = time.perf_counter()
        shard.flush()
        return (time.perf_counter() - started) * 1000  # the fsync an enrolment waits for

    def delete(self, spec: tuple, names: list[str] | None) -> int:
        flt, removed = _filter(spec), 0
        for name in names if names is not None else list(self.shards):
            shard = self.shards[name]
            n = shard.count(qe.CountRequest(exact=True, filter=flt))
            if n:
                shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
                shard.flush()
                removed += n
        return removed

    def dump(self, folder: str) -> int:
        """Every live point to files (``_write_points``), tagged with its shard's name."""
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        tags: list[str] = []
        vectors: list[Any] = []
        for name, shard in self.shards.items():
            for r in _scroll_all(shard, None, with_vector=True):
                ids.append(str(r.id))
                payloads.append(dict(r.payload or {}))
                tags.append(name)
                vectors.append(r.vector)
        matrix = np.asarray(vectors, np.float32).reshape(len(ids), self.dim)
        _write_points(Path(folder), matrix, ids, payloads, tags)
        return len(ids)

    def drop(self, names: list[str]) -> None:
        for name in names:
            shard = self.shards.pop(name, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self.folder / name, ignore_errors=True)

    def info(self) -> dict[str, int]:
        return {name: s.count(qe.CountRequest(exact=True)) for name, s in self.shards.items()}

    def close(self) -> None:
        for shard in self.shards.values():
            shard.flush()
            shard.close()
        self.shards = {}


def _prewarm(folder: Path) -> float:
    """Read a shard's files once, so that its first searches find them in the page cache
    (a cold 1M-face index otherwise answers in tens of ms while it pages in)."""
    started = time.perf_counter()
    buf = bytearray(16 << 20)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            with contextlib.suppress(OSError), open(file, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return round(time.perf_counter() - started, 3)


def _engine_main(fd: int) -> None:
    """An engine process: the live shards, or one index (built first, or loaded)."""
    from multiprocessing.connection import Connection  # here: readers of records need none

    conn = Connection(fd)
    job = conn.recv()
    _die_with_parent(job["parent_pid"])
    try:
        started = time.perf_counter()
        server: _IndexServer | _LiveServer
        if job["mode"] == "live":
            server = _LiveServer(Path(job["folder"]), job["names"], job["dim"])
            info: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 3)}
        elif job["mode"] == "build":
            shard, info = _build_in_background(job)
            server = _IndexServer(shard, Hidden())
            info |= server.warm()
        else:
            shard = qe.EdgeShard.load(job["path"])
            info = {"load_s": round(time.perf_counter() - started, 3)}
            info["prewarm_s"] = _prewarm(Path(job["path"]))
            server = _IndexServer(shard, Hidden(job.get("hidden")))
            info |= server.warm()
    except Exception as exc:
        conn.send(("err", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    try:
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                return
            if op == "close":
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", getattr(server, op)(*args)))
            except Exception as exc:  # reported to the caller; the process stays up
                conn.send(("err", f"{type(exc).__name__}: {exc}"))
    finally:
        server.close()


class EngineProcess:
    """A child process holding shards (``_engine_main``); its requests are serialised."""

    def __init__(self, job: dict[str, Any], spawn: Callable[[Callable[[], Any]], Any]) -> None:
        from multiprocessing.connection import Connection  # here: readers of records need none

        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "actors.gallery.edge", str(theirs.fileno())]
        # Started from one long-lived thread: the child dies with that thread (prctl).
        self.proc: subprocess.Popen = spawn(
            lambda: subprocess.Popen(
                cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL
            )
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send({**job, "parent_pid": os.getpid()})
        self._lock = threading.Lock()
        self.info: dict[str, Any] | None = None
        self.dead = False

    def _recv(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            self.dead = True
            raise GalleryError(f"the gallery's engine process {self.proc.pid} died") from exc

    def wait_ready(self, cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        with self._lock:
            while self.info is None:
                if self.dead:
                    raise GalleryError("the gallery's engine process died")
                if not self.conn.poll(0.2):
                    if cancelled():
                        raise GalleryError("cancelled")
                    if self.proc.poll() is not None:
                        self.dead = True
                    continue
                kind, value = self._recv()
                if kind != "ready":
                    self.dead = True
                    raise GalleryError(value)
                self.info = value
        return self.info

    @contextlib.contextmanager
    def request(self, op: str, *args: Any) -> Iterator[Callable[[], Any]]:
        """Send ``op`` now; its answer is received when the caller asks (meanwhile it may
        do its own work)."""
        self.wait_ready()
        with self._lock:
            if self.dead:
                raise GalleryError("the gallery's engine process died")
            self.conn.send((op, args))
            box: list[tuple[str, Any]] = []

            def result() -> Any:
                if not box:
                    box.append(self._recv())
                kind, value = box[0]
                if kind != "ok":
                    raise GalleryError(f"gallery engine: {value}")
                return value

            try:
                yield result
            finally:
                if not box and not self.dead:
                    box.append(self._recv())

    def call(self, op: str, *args: Any) -> Any:
        with self.request(op, *args) as result:
            return result()

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(Exception):
            if self.info is not None and not self.dead:
                self.call("close")
        with contextlib.suppress(Exception):
            self.conn.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead = True

    def yield_cpu(self) -> None:
        """Run every thread of the process at the lowest priority from now on (a process
        may always lower its own kind's). An index that is no longer served spends ~0.6 s
        of CPU at 1M points in closing and exiting (unmapping and freeing GBs), and did so
        beside the first searches on its successor."""
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    os.setpriority(os.PRIO_PROCESS, int(task.name), 19)

    def stop(self) -> None:
        """Kill the process, from any thread. Its connection is left to the thread that
        reads it, which sees it end and closes it: closed from here meanwhile, the
        descriptor's number could be closed twice, the second time someone else's."""
        with contextlib.suppress(Exception):
            self.proc.kill()

    def kill(self) -> None:
        """Kill the process and close its connection (by the thread that reads it)."""
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.dead = True


# -- the owner -----------------------------------------------------------------------------


class _Mirror:
    """The live points in this process, searched exactly (numpy releases the GIL while it
    multiplies). Rows are never rewritten: a replaced point gets a new row, the old one is
    marked dead, so a search works on a consistent snapshot without holding the lock."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.vectors = np.zeros((capacity, dim), np.float32)
        self.alive = np.zeros(capacity, bool)
        self.tag_of = np.zeros(capacity, np.int32)  # row -> code of its live shard
        self.codes: dict[str, int] = {}
        self.n = 0
        self.count_alive = 0
        self.ids: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        self.row_of: dict[str, int] = {}
        self.by_identity: dict[str, set[int]] = {}
        self.lock = threading.Lock()

    def add(
        self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]], tag: str
    ) -> None:
        k = len(ids)
        if not k:
            return
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.asarray(vectors, np.float32) / np.where(norms > 0, norms, 1.0)
        grown = self._grown(k)
        with self.lock:
            if self.n + k > len(self.alive):
                if grown is None or self.n + k > len(grown[0]):  # another add came between
                    grown = self._grown_copy(self.n, k)
                vec, copied = grown
                vec[copied : self.n] = self.vectors[copied : self.n]  # rows added meanwhile
                alive = np.zeros(len(vec), bool)
                alive[: self.n] = self.alive[: self.n]
                tag_of = np.zeros(len(vec), np.int32)
                tag_of[: self.n] = self.tag_of[: self.n]
                self.vectors, self.alive, self.tag_of = vec, alive, tag_of
            for pid in ids:
                old = self.row_of.get(pid)
                if old is not None:
                    self._kill(old)
            start = self.n
            self.vectors[start : start + k] = unit
            if tag not in self.codes:  # codes of dropped shards are never reused
                self.codes[tag] = max(self.codes.values(), default=-1) + 1
            self.tag_of[start : start + k] = self.codes[tag]
            for j, (pid, payload) in enumerate(zip(ids, payloads, strict=True)):
                row = start + j
                self.ids.append(pid)
                self.payloads.append(payload)
                self.row_of[pid] = row
                ident = payload.get("identity")
                if ident is not None:
                    self.by_identity.setdefault(ident, set()).add(row)
            self.alive[start : start + k] = True
            self.n += k
            self.count_alive += k

    def _grown(self, k: int) -> tuple[np.ndarray, int] | None:
        """Room for ``k`` more rows: a larger copy of the vectors and how many rows it holds,
        or None if they fit. Copied without the lock, which searches take too (rows never
        change once written): at 200k live points the copy is 400 MB, ~0.3 s a search would
        otherwise wait."""
        with self.lock:
            n = self.n
        return None if n + k <= len(self.vectors) else self._grown_copy(n, k)

    def _grown_copy(self, n: int, k: int) -> tuple[np.ndarray, int]:
        vectors = self.vectors
        vec = np.zeros((max(n + 2 * k, 2 * len(vectors)), self.dim), np.float32)
        vec[:n] = vectors[:n]
        return vec, n

    def _kill(self, row: int) -> None:
        if not self.alive[row]:
            return
        self.alive[row] = False
        self.count_alive -= 1
        pid = self.ids[row]
        if self.row_of.get(pid) == row:
            del self.row_of[pid]
        ident = self.payloads[row].get("identity")
        rows = self.by_identity.get(ident)
        if rows is not None:
            rows.discard(row)
            if not rows:
                del self.by_identity[ident]

    def _rows(self, spec: tuple | None) -> list[int]:
        if spec is None:
            return [r for r in range(self.n) if self.alive[r]]
        kind = spec[0]
        if kind == "identity":
            return sorted(self.by_identity.get(spec[1], ()))
        if kind == "identities":
            return sorted(r for i in spec[1] for r in self.by_identity.get(i, ()))
        if kind == "ids":
            return sorted(self.row_of[p] for p in spec[1] if p in self.row_of)
        return [
            r
            for r in range(self.n)
            if self.alive[r] and _matches(spec, self.ids[r], self.payloads[r])
        ]

    def kill(self, spec: tuple) -> int:
        with self.lock:
            rows = self._rows(spec)
            for r in rows:
                self._kill(r)
        return len(rows)

    def count(self, spec: tuple | None) -> int:
        with self.lock:
            return self.count_alive if spec is None else len(self._rows(spec))

    def counts(self, identities: list[str]) -> dict[str, int]:
        with self.lock:
            return {i: len(self.by_identity.get(i, ())) for i in identities}

    def find(self, spec: tuple | None) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(self.ids[r], dict(self.payloads[r])) for r in self._rows(spec)]

    def embeddings(self, spec: tuple) -> np.ndarray:
        """The (unit) vectors of the rows ``spec`` selects."""
        with self.lock:
            return self.vectors[self._rows(spec)]

    def present(self, ids: list[str], tags: set[str]) -> list[str]:
        """Which of ``ids`` are held by rows of ``tags``."""
        with self.lock:
            codes = {self.codes[t] for t in tags if t in self.codes}
            return [p for p in ids if p in self.row_of and self.tag_of[self.row_of[p]] in codes]

    def rows_of_tags(self, tags: set[str]) -> tuple[np.ndarray, list[str], list[dict], list[str]]:
        """The live rows of ``tags``: vectors, ids, payloads, tags. The lock is held only
        to take a snapshot (rows never change once written)."""
        with self.lock:
            n, vectors = self.n, self.vectors
            alive, tag_of = self.alive[:n].copy(), self.tag_of[:n].copy()
            names = {code: tag for tag, code in self.codes.items()}
            codes = [self.codes[t] for t in tags if t in self.codes]
        rows = np.flatnonzero(alive & np.isin(tag_of, codes))
        return (
            vectors[rows],
            [self.ids[r] for r in rows],
            [self.payloads[r] for r in rows],
            [names[int(tag_of[r])] for r in rows],
        )

    def without(self, tags: set[str]) -> _Mirror:
        """A new mirror of the rows not in ``tags`` (after a switch, under the write lock).

        Those are normally the newest rows: a build freezes every live shard and writes
        then go to a new one. The new mirror then shares the arrays from its first row
        (rows never change once written, and the old mirror reads none past its own; the
        memory of the rows before it goes at the next growth): a copy of 45k rows took
        0.6-0.8 s, with every enrolment waiting for the switch."""
        with self.lock:
            n, vectors, alive, tag_of = self.n, self.vectors, self.alive, self.tag_of
            ids, payloads = self.ids[:n], self.payloads[:n]
            codes = {t: c for t, c in self.codes.items() if t not in tags}
        kept = np.isin(tag_of[:n], list(codes.values()))
        first = int(np.argmax(kept)) if kept.any() else n
        if kept[first:].all():
            fresh = _Mirror(self.dim, 0)
            fresh.vectors, fresh.alive = vectors[first:], alive[first:].copy()
            fresh.tag_of, fresh.codes = tag_of[first:].copy(), codes
            fresh.n, fresh.ids, fresh.payloads = n - first, ids[first:], payloads[first:]
            rows = np.flatnonzero(fresh.alive[: fresh.n]).tolist()
            fresh.count_alive = len(rows)
            for r in rows:
                fresh.row_of[fresh.ids[r]] = r
                ident = fresh.payloads[r].get("identity")
                if ident is not None:
                    fresh.by_identity.setdefault(ident, set()).add(r)
            return fresh
        return self._copy_without(tags)

    def _copy_without(self, tags: set[str]) -> _Mirror:
        """``without``, for rows in any order: a copy of the kept rows."""
        vectors, ids, payloads, kept = self.rows_of_tags(set(self.codes) - tags)
        fresh = _Mirror(self.dim, max(1024, 2 * len(ids)))
        for tag in sorted(set(kept)):
            pick = [j for j, t in enumerate(kept) if t == tag]
            fresh.add([ids[j] for j in pick], vectors[pick], [payloads[j] for j in pick], tag)
        return fresh

    def search(self, queries: np.ndarray, limit: int) -> list[list[tuple[str, float, dict]]]:
        with self.lock:
            n, vectors, alive = self.n, self.vectors, self.alive[: self.n].copy()
            ids, payloads, count = self.ids, self.payloads, self.count_alive
        if not count:
            return [[] for _ in queries]
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        q = np.asarray(queries, np.float32) / np.where(norms > 0, norms, 1.0)
        # (queries, n): each query's scores contiguous, so that the matmul and the top-k
        # selection run along rows (1.5x faster at 79k points and 19 faces, measured).
        scores = q @ vectors[:n].T
        if count < n:
            scores[:, ~alive] = -np.inf
        take = min(limit, count)
        if take < n:
            top = np.argpartition(scores, n - take, axis=1)[:, n - take :]
        else:
            top = np.broadcast_to(np.arange(n), (len(q), n))
        out = []
        for j in range(len(q)):
            rows = top[j]
            rows = rows[np.argsort(-scores[j, rows], kind="stable")][:take]
            out.append([(ids[r], float(scores[j, r]), payloads[r]) for r in rows if alive[r]])
        return out


class _Build:
    def __init__(
        self,
        frozen: list[str],
        out: str,
        export: Path,
        pause_share: float,
        pause_allowance_s: float = _PAUSE_ALLOWANCE_S,
    ) -> None:
        self.frozen, self.out, self.export = frozen, out, export
        self.pending: list[tuple] = []  # deletions made while it runs
        self.child: EngineProcess | None = None
        self.thread: threading.Thread | None = None
        self.started = time.monotonic()
        self.cancel = False
        self.ready = False  # the builder serves its index now: never stopped again
        self.pause_share = pause_share
        self.pause_allowance_s = pause_allowance_s if pause_share > 0 else 0.0  # 0: never
        self._pause_lock = threading.Lock()
        self._searches = 0
        self._stopped_at: float | None = None
        self.paused_s = 0.0  # how long searches kept it stopped

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The builder process stopped (SIGSTOP) while searches run, for at most
        ``pause_share`` of the build's time so far plus ``pause_allowance_s``, so that every
        build ends. The allowance covers the builder's start (imports, loading, at normal
        priority), when the share alone is near nothing.

        On 2 vCPUs a search beside a build ran 3-7x slower, with the builder at nice 10 and a
        core free: the two share the core's caches and the memory bandwidth, which no
        priority divides (200k points, 13 searches of 3 faces a second and 100 enrolments:
        p99 77 ms, 223 of 1301 searches over 40 ms; stopped, p99 36 ms and 10, the builds
        15% longer)."""
        with self._pause_lock:
            self._searches += 1
            self._settle()
        try:
            yield
        finally:
            with self._pause_lock:
                self._searches -= 1
                self._settle()

    def release(self) -> None:
        """Let the builder run (it serves its index now, or is being stopped for good)."""
        with self._pause_lock:
            self.ready = True
            self._settle()

    def _settle(self) -> None:
        now = time.monotonic()
        stopped_s = self.paused_s + (now - self._stopped_at if self._stopped_at else 0.0)
        want = (
            self._searches > 0
            and not self.ready
            and self.child is not None
            and stopped_s < self.pause_share * (now - self.started) + self.pause_allowance_s
        )
        if want == (self._stopped_at is not None):
            return
        assert self.child is not None
        # send_signal does nothing once the child is reaped: never a reused pid.
        self.child.proc.send_signal(signal.SIGSTOP if want else signal.SIGCONT)
        self.paused_s = stopped_s
        self._stopped_at = now if want else None


class EdgeGallery(Gallery):
    backend = "edge"

    def __init__(
        self,
        path: Path,
        model_id: str | None,
        dim: int | None,
        hnsw_ef: int | None = None,
        options: GallerySettings | None = None,
        auto_index: bool = True,
    ) -> None:
        """``auto_index=False``: build the index only when ``build_index()`` is called.
        The engine processes start on first use (listing identities needs none)."""
        from core.settings import GallerySettings

        super().__init__(model_id, dim)
        self.options = options or GallerySettings()
        self.hnsw_ef = hnsw_ef if hnsw_ef is not None else self.options.hnsw_ef
        self.auto_index = auto_index
        self.path = Path(path).expanduser()
        self.builds: list[dict[str, Any]] = []  # what each finished build reported
        self.flush_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        self._rw = ReadWriteLock()
        self._start_lock = threading.RLock()
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="gallery-spawn")
        self._live: EngineProcess | None = None
        self._mirror = _Mirror(1)
        self._index: EngineProcess | None = None
        self._build: _Build | None = None
        self._retry_at = 0.0
        self._settle_timer: threading.Timer | None = None
        self._settled_at = 0.0  # no automatic build before (the aftermath of a switch)
        self._closed = False
        meta_file = self.path / META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        self._bind_model(meta.get("model_id"), meta.get("dim"))
        self.path.mkdir(parents=True, exist_ok=True)
        if not meta:
            meta_file.write_text(json.dumps({"model_id": self.model_id, "dim": self.dim}))
        self._state = self._load_state()
        self._hidden = Hidden(self._state.get("hidden"))
        self._records = IdentityRecords(self.path / RECORDS_FILE)
        if self._records.fresh and (self._state["live"] or self._state.get("index")):
            self._rebuild_records()  # a gallery made before identity records existed

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        file = self.path / STATE_FILE
        if file.exists():
            return json.loads(file.read_text())
        legacy = self.path / LEGACY_SHARD
        live = [LEGACY_SHARD] if legacy.exists() and any(legacy.iterdir()) else []
        return {"version": 2, "live": live, "index": None, "hidden": {}, "next": 1}

    def _save_state(self) -> None:
        tmp = self.path / f".{STATE_FILE}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path / STATE_FILE)

    def _next_name(self, prefix: str) -> str:
        n = self._state["next"]
        self._state["next"] = n + 1
        return f"{prefix}{n}"

    def _collect_garbage(self) -> None:
        keep = set(self._state["live"]) | {self._state.get("index")}
        for child in self.path.iterdir():
            ours = child.is_dir() and child.name.startswith(_FOLDER_PREFIXES)
            if ours and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def _spawn(self, make: Callable[[], Any]) -> Any:
        return self._spawner.submit(make).result()

    def _engine(self) -> EngineProcess:
        """The live process, and the mirror of its points (started on first use)."""
        live = self._live
        if live is not None and not live.dead:
            return live
        with self._start_lock:
            if self._closed:
                raise GalleryError("the gallery is closed")
            if self._live is not None and not self._live.dead:
                return self._live
            if self._live is not None:  # it died: start again from its files
                self._live.kill()
            if not self._state["live"]:
                self._state["live"] = [self._next_name("live-")]
            self._collect_garbage()
            job = {"mode": "live", "folder": str(self.path), "names": self._state["live"],
                   "dim": self.dim}  # fmt: skip
            for attempt in range(_OPEN_ATTEMPTS):
                live = EngineProcess(job, self._spawn)
                try:
                    live.wait_ready()
                    dump = self.path / self._next_name("mirror-")
                    live.call("dump", str(dump))
                    vectors, meta = _read_points(dump)
                    break
                except GalleryError as exc:
                    live.kill()
                    # A predecessor (a restarted actor's) may still be exiting, its WAL
                    # locks with it: wait a little for it, then give up.
                    if "lock" not in str(exc).lower() or attempt == _OPEN_ATTEMPTS - 1:
                        raise GalleryError(f"cannot open gallery at {self.path}: {exc}") from exc
                    time.sleep(0.5)
            mirror = _Mirror(self.dim, max(1024, 2 * len(meta)))
            for tag in self._state["live"]:
                rows = [j for j, m in enumerate(meta) if m["tag"] == tag]
                mirror.add([meta[j]["id"] for j in rows], np.asarray(vectors[rows]),
                           [meta[j]["payload"] for j in rows], tag)  # fmt: skip
            del vectors
            shutil.rmtree(dump, ignore_errors=True)
            self._mirror, self._live = mirror, live
            self._save_state()
        self._maybe_build()
        return live

    def _serving(self) -> EngineProcess | None:
        """The process serving the index (started on first use; restarted if it died)."""
        name = self._state.get("index")
        if name is None:
            return None
        index = self._index
        if index is None or index.dead:
            with self._start_lock:
                if self._index is None or self._index.dead:
                    if self._index is not None:
                        self._index.kill()
                    job = {"mode": "serve", "path": str(self.path / name),
                           "hidden": self._hidden.to_json()}  # fmt: skip
                    self._index = EngineProcess(job, self._spawn)
                index = self._index
        return index

    def _current(self) -> str:
        return self._state["live"][-1]

    def _options(self) -> dict[str, Any]:
        o = self.options
        return {
            "dim": self.dim,
            "m": o.hnsw_m,
            "ef_construct": o.hnsw_ef_construct,
            "full_scan_kb": FULL_SCAN_KB,
            "threads": o.index_threads,
            "quantization": o.quantization,
        }

    # -- writes ----------------------------------------------------------------------------

    def _upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        live = self._engine()
        ids = [p[0] for p in points]
        vectors = np.asarray([p[1] for p in points], np.float32).reshape(len(points), self.dim)
        payloads = [p[2] for p in points]
        current = self._current()
        # Each point lives in one place: a re-enrolled photo replaces its older copy.
        frozen = self._state["live"][:-1]
        in_frozen = self._mirror.present(ids, set(frozen)) if frozen else []
        index = self._serving()
        in_index = index.call("has", ids) if index is not None else []
        self.flush_ms.append(live.call("upsert", current, ids, vectors, payloads))
        self._mirror.add(ids, vectors, payloads, current)
        if in_frozen:
            live.call("delete", ("ids", in_frozen), frozen)
        if in_index:
            self._hide(index, ("ids", sorted(in_index)))
        if (in_frozen or in_index) and self._build is not None:
            self._build.pending.append(("ids", sorted(set(in_frozen) | set(in_index))))
        self._maybe_build()

    def _hide(self, index: EngineProcess, spec: tuple) -> None:
        index.call("hide", spec)
        self._hidden.add(spec)
        self._state["hidden"] = self._hidden.to_json()
        self._save_state()

    def _delete_where(self, spec: tuple) -> int:
        live = self._engine()
        removed = live.call("delete", spec, None)
        self._mirror.kill(spec)
        index = self._serving()
        if index is not None:
            n = index.call("count", spec)
            if n:
                self._hide(index, spec)
                removed += n
        if self._build is not None:
            self._build.pending.append(spec)
        self._maybe_build()
        return removed

    # -- reads -------------------------------------------------------------------------------

    def _query_batch(self, vectors: np.ndarray, limit: int, exact: bool = False) -> list[list[Hit]]:
        return self.query_batch(vectors, limit, exact)

    def query_batch(self, vectors: np.ndarray, limit: int, exact: bool = False) -> list[list[Hit]]:
        """The ``limit`` nearest points of each row: the index (in its process) and the live
        points (here, exactly) searched at the same time, merged. ``exact``: the index by
        brute force too (for measurements)."""
        if not len(vectors):
            return []
        self._engine()
        oversampling = None
        if self.options.quantization != "none":
            oversampling = self.options.rescore_oversampling
        vectors = np.asarray(vectors, np.float32)
        build = self._build
        with build.paused() if build is not None else contextlib.nullcontext(), self._rw.read():
            index = self._serving()
            with contextlib.ExitStack() as stack:
                result = None
                if index is not None:
                    ef = max(self.hnsw_ef, limit)
                    result = stack.enter_context(
                        index.request("query", vectors, limit, ef, oversampling, exact)
                    )
                merged = self._mirror.search(vectors, limit)
                if result is not None:
                    for row, hits in zip(merged, result(), strict=True):
                        row.extend(hits)
        out = []
        for row in merged:
            row.sort(key=lambda h: -h[1])
            out.append([Hit(score, payload, pid) for pid, score, payload in row[:limit]])
        return out

    def _points(self, spec: tuple | None) -> list[tuple[str, dict[str, Any]]]:
        self._engine()
        with self._rw.read():
            out = self._mirror.find(spec)
            index = self._serving()
            if index is not None:
                out += index.call("find", spec)
        return out

    def _find(self, spec: tuple) -> list[dict[str, Any]]:
        return [payload for _, payload in self._points(spec)]

    def _vectors(self, spec: tuple) -> np.ndarray:
        self._engine()
        with self._rw.read():
            out = [self._mirror.embeddings(spec)]
            index = self._serving()
            if index is not None:
                rows = index.call("embeddings", spec)
                out.append(np.asarray(rows, np.float32).reshape(len(rows), self.dim))
        return np.concatenate(out)

    def _all_payloads(self) -> list[dict[str, Any]]:
        return [payload for _, payload in self._points(None)]

    def _count(self, spec: tuple | None) -> int:
        self._engine()
        with self._rw.read():
            n = self._mirror.count(spec)
            index = self._serving()
            if index is not None:
                n += index.call("count", spec)
        return n

    def _counts(self, identities: list[str]) -> dict[str, int]:
        self._engine()
        with self._rw.read():
            out = self._mirror.counts(identities)
            index = self._serving()
            if index is not None:
                for i, n in index.call("counts", identities).items():
                    out[i] += n
        return out

    # -- identity records ------------------------------------------------------------------

    def _records_get(self, identities: list[str]) -> dict[str, dict[str, Any]]:
        return self._records.get(identities)

    def _records_put(self, rows: list[dict[str, Any]]) -> None:
        self._records.put(rows)

    def _records_delete(self, identity: str) -> None:
        self._records.delete(identity)

    def _records_page(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        return self._records.page(after, limit)

    def _records_count(self) -> int:
        return self._records.count()

    # -- the background index ----------------------------------------------------------------

    def unindexed(self) -> int:
        """Live points: searched exactly in this process, not in the index yet."""
        return self._mirror.count(None)

    def _maybe_build(self) -> None:
        if not self.auto_index or self._build is not None or self._closed:
            return
        if self._live is None or time.monotonic() < max(self._retry_at, self._settled_at):
            return
        if self.unindexed() >= self.options.index_threshold or self._hidden.size() >= _MAX_HIDDEN:
            self.build_index()

    def build_index(self, wait: bool = False) -> bool:
        """Start a background build now (unless one runs, or nothing is to be indexed);
        ``wait``: return once the new index is served. True if a build ran or runs."""
        live = self._engine()
        with self._write_lock:
            build = self._build
            if build is None and not self._closed and (self.unindexed() or self._hidden):
                frozen = list(self._state["live"])
                current = self._next_name("live-")
                live.call("create", current)
                self._state["live"] = [*frozen, current]
                build = _Build(
                    frozen,
                    self._next_name("index-"),
                    self.path / self._next_name("export-"),
                    self.options.build_pause_share,
                )
                self._save_state()
                build.thread = threading.Thread(
                    target=self._run_build, args=(build,), name="gallery-build", daemon=True
                )
                self._build = build
                build.thread.start()
        if wait and build is not None and build.thread is not None:
            build.thread.join()
        return build is not None

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait for the running build (if any) to be served; False on timeout."""
        build = self._build
        if build is None or build.thread is None:
            return True
        build.thread.join(timeout)
        return not build.thread.is_alive()

    def index_status(self) -> dict[str, Any]:
        """What is indexed and what is being built (for status pages and benchmarks)."""
        build, index = self._build, self._index
        return {
            "backend": self.backend,
            "unindexed": self.unindexed(),
            "index": self._state.get("index"),
            "index_info": index.call("info") if index is not None and index.info else None,
            "hidden": self._hidden.size(),
            "building": build is not None,
            "building_for_s": round(time.monotonic() - build.started, 1) if build else None,
            "builds": list(self.builds),
        }

    def _run_build(self, build: _Build) -> None:
        try:
            vectors, ids, payloads, tags = self._mirror.rows_of_tags(set(build.frozen))
            if ids:
                _write_points(build.export, vectors, ids, payloads, tags)
            del vectors
            base = self._state.get("index")
            job = {
                "mode": "build",
                "base": str(self.path / base) if base else None,
                "out": str(self.path / build.out),
                "deletes": self._hidden.specs(),
                "export": str(build.export) if ids else None,
                "options": self._options(),
            }
            build.child = EngineProcess(job, self._spawn)
            info = build.child.wait_ready(lambda: build.cancel or self._closed)
            build.release()
            self._switch(build, info)
        except Exception as exc:
            build.release()
            if not (build.cancel or self._closed):
                log.warning("gallery index build failed (retrying later): %s", exc)
            if build.child is not None:
                build.child.kill()
            shutil.rmtree(self.path / build.out, ignore_errors=True)
            self._retry_at = time.monotonic() + _RETRY_AFTER_S
            self._build = None
        finally:
            shutil.rmtree(build.export, ignore_errors=True)

    def _switch(self, build: _Build, info: dict[str, Any]) -> None:
        """Serve the new index. Searches are held only while references are swapped; the
        state file (an fsync: 7-30 ms, hundreds on a busy disk), the old index and the frozen
        shard come after."""
        assert build.child is not None and self._live is not None
        frozen = set(build.frozen)
        # Deletions made while it was built: most of them now, without holding up writes;
        # those made in the meantime under the write lock, with the switch.
        done = len(build.pending)
        if done:
            build.child.call("apply", build.pending[:done])
        with self._write_lock:
            if len(build.pending) > done:
                build.child.call("apply", build.pending[done:])
            mirror = self._mirror.without(frozen)
            with self._rw.write():
                old, self._index = self._index, build.child
                self._mirror = mirror
                old_name, self._state["index"] = self._state.get("index"), build.out
                self._state["live"] = [n for n in self._state["live"] if n not in frozen]
                self._hidden = Hidden()
                self._state["hidden"] = {}
                self._build = None
            served_at = time.monotonic()
            # No automatic build until the aftermath below is over (a timer starts it).
            self._settled_at = served_at + _SETTLE_AFTER_SWITCH_S
            # Until the state file says so, a restart opens the old index and the frozen
            # shard, both still on disk; no write can come between (the write lock).
            self._save_state()
        if sys.platform == "linux":  # per thread there (elsewhere it would be the process)
            _background_priority()  # what is left is cleanup, behind the searches
        self._live.call("drop", sorted(frozen))  # no longer read; deletes may still reach it
        if old is not None:
            old.yield_cpu()
            old.close()
        if old_name:
            shutil.rmtree(self.path / old_name, ignore_errors=True)
        wall_s, paused_s = served_at - build.started, build.paused_s
        self.builds.append({**info, "wall_s": round(wall_s, 3), "paused_s": round(paused_s, 3),
                            "started_at": build.started, "served_at": served_at})  # fmt: skip
        log.info("gallery index %s served: %s", build.out, info)
        # The next automatic build comes from a timer's thread, at normal priority.
        self._settle_timer = threading.Timer(_SETTLE_AFTER_SWITCH_S, self._build_after_settling)
        self._settle_timer.daemon = True
        self._settle_timer.start()

    def _build_after_settling(self) -> None:
        with contextlib.suppress(GalleryError):  # closed meanwhile
            self._maybe_build()

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            build = self._build
            if build is not None:
                build.cancel = True
            if self._settle_timer is not None:
                self._settle_timer.cancel()
        if build is not None:
            if build.child is not None:
                build.child.stop()  # its thread then closes it
            if build.thread is not None:
                build.thread.join()
        with self._rw.write(), self._start_lock:
            for proc in (self._index, self._live):
                if proc is not None:
                    proc.close()
            self._index = self._live = None
            self._records.close()
        self._spawner.shutdown(wait=True)


if __name__ == "__main__":  # an engine process: python -m actors.gallery.edge FD
    logging.basicConfig(level=logging.WARNING)
    _engine_main(int(sys.argv[1]))
