"""The edge gallery's live points (not indexed yet) are searched exactly in the owner's process
(``_Mirror``): its answer must be numpy brute force's, whatever was replaced or erased."""

from __future__ import annotations

import numpy as np
import pytest

from actors.gallery.edge import _Mirror

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(vectors: dict[str, np.ndarray], q: np.ndarray, limit: int) -> list[list[str]]:
    ids = sorted(vectors)
    matrix = unit(np.stack([vectors[i] for i in ids]))
    scores = unit(q) @ matrix.T
    return [[ids[k] for k in np.argsort(-row, kind="stable")[:limit]] for row in scores]


@pytest.mark.parametrize("limit", [1, 3, 500])  # 500: more than the points it holds
def test_live_points_search_equals_brute_force_after_replacements_and_erasures(
    limit: int,
) -> None:
    rng = np.random.default_rng(7)
    mirror = _Mirror(DIM, capacity=8)  # small: the arrays grow while points come in
    held: dict[str, np.ndarray] = {}
    for batch in range(6):
        ids = [f"p{batch}-{k}" for k in range(40)]
        if batch:  # a photo enrolled again replaces its point (a new row, the old one dead)
            ids[:5] = [f"p0-{k}" for k in range(5 * batch, 5 * batch + 5)]
        vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
        payloads = [{"identity": f"person-{i.split('-')[1]}"} for i in ids]
        mirror.add(ids, vectors, payloads, tag="live-1")
        held.update(zip(ids, vectors, strict=True))
    erased = mirror.kill(("identity", "person-3"))
    held = {i: v for i, v in held.items() if i.split("-")[1] != "3"}
    assert erased and mirror.count(None) == len(held)

    queries = rng.standard_normal((9, DIM)).astype(np.float32)
    got = mirror.search(queries, limit)
    assert [[pid for pid, _, _ in row] for row in got] == brute_force(held, queries, limit)
    for row in got:
        scores = [s for _, s, _ in row]
        assert scores == sorted(scores, reverse=True)
        assert all(payload["identity"] != "person-3" for _, _, payload in row)


def test_an_empty_mirror_answers_every_query_with_nothing() -> None:
    assert _Mirror(DIM).search(np.ones((3, DIM), np.float32), 5) == [[], [], []]


def test_a_search_does_not_wait_for_the_live_points_to_grow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Growing the live points copies them all (400 MB at 200k): searches must not wait for
    that copy, as they did when it ran under the lock they take."""
    import threading

    mirror = _Mirror(DIM, capacity=8)
    mirror.add([f"p{k}" for k in range(8)], np.eye(8, DIM, dtype=np.float32), [{}] * 8, "live-1")
    copying, searched, copied = threading.Event(), threading.Event(), threading.Event()
    grown_copy = _Mirror._grown_copy

    def slow_copy(self: _Mirror, n: int, k: int) -> tuple[np.ndarray, int]:
        copying.set()
        searched.wait(10)  # the copy goes on until the search is done (or 10 s)
        try:
            return grown_copy(self, n, k)
        finally:
            copied.set()

    monkeypatch.setattr(_Mirror, "_grown_copy", slow_copy)
    adder = threading.Thread(
        target=mirror.add, args=(["new"], np.ones((1, DIM), np.float32), [{}], "live-1")
    )
    adder.start()
    assert copying.wait(10)
    [hits] = mirror.search(np.eye(1, DIM, dtype=np.float32), 1)
    assert not copied.is_set()  # answered while the copy was still going on
    searched.set()
    adder.join()
    assert hits[0][0] == "p0"  # answered from the rows held before the copy
    assert (
        mirror.count(None) == 9
        and mirror.search(np.ones((1, DIM), np.float32), 1)[0][0][0] == "new"
    )


def summary(mirror: _Mirror, queries: np.ndarray) -> tuple:
    """What a mirror answers: searches, counts, and which points each identity has."""
    found = [[pid for pid, _, _ in row] for row in mirror.search(queries, 500)]
    people = {p["identity"] for _, p in mirror.find(None)}
    by_person = {i: sorted(p for p, _ in mirror.find(("identity", i))) for i in people}
    return found, mirror.count(None), by_person


def test_a_switch_keeps_the_newest_live_points_without_copying_them() -> None:
    """At a switch the live points of the shards just indexed are dropped; the others, the
    newest rows, stay. Copied (45k rows), they held every enrolment for 0.6-0.8 s: the new
    mirror shares their arrays, and answers as a copy would."""
    rng = np.random.default_rng(11)
    mirror = _Mirror(DIM, capacity=8)
    for tag, first in (("live-1", 0), ("live-2", 60)):
        ids = [f"p{k}" for k in range(first, first + 60)]
        if tag == "live-2":  # re-enrolled photos: their points in live-1 die
            ids[:10] = [f"p{k}" for k in range(10)]
        payloads = [{"identity": f"person-{int(i[1:]) % 7}"} for i in ids]
        vectors = rng.standard_normal((60, DIM)).astype(np.float32)
        mirror.add(ids, vectors, payloads, tag)
    mirror.kill(("identity", "person-2"))
    queries = rng.standard_normal((5, DIM)).astype(np.float32)

    shared = mirror.without({"live-1"})
    copied = mirror._copy_without({"live-1"})
    assert np.shares_memory(shared.vectors, mirror.vectors)
    assert summary(shared, queries) == summary(copied, queries)
    assert {p for p, _ in shared.find(None)} == {p for p, _ in copied.find(None)}
    assert all(int(p[1:]) < 10 or int(p[1:]) >= 60 for p, _ in shared.find(None))
    # Points added afterwards go to a new shard of their own, apart from the kept one.
    newcomer = rng.standard_normal((1, DIM)).astype(np.float32)
    for m in (shared, copied):
        m.add(["n1"], newcomer, [{"identity": "new"}], "live-3")
        assert m.rows_of_tags({"live-3"})[1] == ["n1"]
        assert "n1" not in m.rows_of_tags({"live-2"})[1]
    assert summary(shared, queries) == summary(copied, queries)
