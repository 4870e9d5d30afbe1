"""The index process never counts every point on a search's path: such a count scans the
whole index (~110 ms at 1.4M points) and every request to the process waits behind it. It
used to run on the first search after each index switch and on each worker's 5 s size gauge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from actors.gallery.edge import Hidden, _create_field_indexes, _IndexServer, _live_config

DIM = 8


def pid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


class CountsSeen:
    """The shard, with every count request it is asked recorded."""

    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.requests: list[Any] = []

    def count(self, request: qe.CountRequest) -> int:
        self.requests.append(request)
        return self.shard.count(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)

    def scans(self) -> list[Any]:
        """Counts that no payload index answers: none, or only must_not, conditions."""
        return [
            r for r in self.requests if r.filter is None or not (r.filter.must or r.filter.should)
        ]


@pytest.fixture
def shard(tmp_path: Path) -> qe.EdgeShard:
    shard = qe.EdgeShard.create(str(tmp_path / "index"), _live_config(DIM))
    _create_field_indexes(shard)
    rng = np.random.default_rng(0)
    points = [
        qe.Point(pid(i), rng.standard_normal(DIM).tolist(), {"identity": f"p{i % 10}"})
        for i in range(1, 201)
    ]
    shard.update(qe.UpdateOperation.upsert_points(points))
    yield shard
    shard.close()


@pytest.mark.parametrize("hidden", [None, {"identities": ["p3"]}, {"ids": [pid(1), pid(2)]}])
def test_searches_and_the_gallery_size_never_count_every_point(
    shard: qe.EdgeShard, hidden: dict[str, Any] | None
) -> None:
    seen = CountsSeen(shard)
    server = _IndexServer(seen, Hidden(hidden))  # type: ignore[arg-type]
    queries = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    server.query(queries, 5, 16, None, False)
    size = server.count(None)
    server.hide(("identity", "p4"))
    server.query(queries, 5, 16, None, False)
    assert seen.scans() == []
    # The size without a scan is still the exact one, hidden points left out.
    assert size == shard.count(qe.CountRequest(exact=True, filter=qe.Filter(
        must_not=Hidden(hidden).conditions() or None)))  # fmt: skip
    assert server.count(None) == size - 20
