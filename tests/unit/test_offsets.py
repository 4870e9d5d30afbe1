"""The offset-commit rule (streams/offsets.py, faust#606), on real Faust consumer objects.

Each case drives the bookkeeping of a real, unstarted Faust worker consumer through Faust's
own code wherever it exists: ``perform_seek`` (with the broker's answer given), the gap
detection ``_drain_messages`` does per message (``_add_gap``), a stream taking a message
(``_unacked_messages``), ``Message.ack`` -> ``Consumer.ack``, and a commit round
(``_filter_committable_offsets`` -> ``_new_offset``, then what ``_commit_offsets`` records).
The same steps run on the stock consumer show the bug the correction removes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Iterator

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from core.settings import Settings
from streams import offsets
from streams.app import create_app

TOPIC = "images"
TP0 = TP(TOPIC, 0)


class Partition:
    """One partition as a worker consumer sees it: read, delivered to a stream, acked,
    committed."""

    def __init__(self, corrected: bool) -> None:
        app = faust.App(f"t-{uuid.uuid4().hex[:8]}", broker="kafka://127.0.0.1:1")
        if corrected:
            offsets.guard_commits(app)
        self.loop = asyncio.new_event_loop()
        self.consumer: Consumer = app.consumer
        assert isinstance(self.consumer, offsets.InFlightSafeOffsets) == corrected
        app.topics.add(app.topic(TOPIC))
        self.run(app.topics._update_indices())  # TOPIC is acked, as an agent's topic is
        self.messages: dict[int, ConsumerMessage] = {}

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def seek(self, committed: int | None) -> None:
        """The partition assigned, with ``committed`` as the group's committed offset."""

        async def seek_to_committed() -> dict[TP, int | None]:
            return {TP0: committed}  # aiokafka: None when the group never committed

        self.consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
        self.run(self.consumer.perform_seek())

    def deliver(self, *offsets_: int) -> None:
        """The fetcher reads each offset (in order) and a stream takes it."""
        for offset in offsets_:
            read = self.consumer._read_offset[TP0]
            assert read is None or offset >= read
            if offset - (read or 0) > 1 and read:  # as Consumer._drain_messages does
                self.run(self.consumer._add_gap(TP0, read + 1, offset))
            self.consumer._read_offset[TP0] = offset
            message = ConsumerMessage(TOPIC, 0, offset, 0.0, 0, [], b"k", b"v", None, tp=TP0)
            message.incref()  # the conductor, for the one stream that subscribes
            message.tracked = True  # the stream, as it takes the message
            self.consumer._unacked_messages.add(message)
            self.messages[offset] = message

    def ack(self, *offsets_: int) -> None:
        for offset in offsets_:
            self.messages[offset].ack(self.consumer)

    def commit(self) -> int | None:
        """One commit round; the offset it commits, if any."""
        to_commit = self.consumer._filter_committable_offsets([TP0])
        self.consumer._committed_offset.update(to_commit)  # as _commit_offsets does
        return to_commit.get(TP0)

    def commit_all(self) -> int | None:
        """Commit rounds until one commits nothing; the committed offset then."""
        while self.commit() is not None:
            pass
        return self.committed

    @property
    def committed(self) -> int | None:
        return self.consumer._committed_offset[TP0]

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def partition() -> Iterator[Partition]:
    p = Partition(corrected=True)
    yield p
    p.close()


@pytest.fixture
def stock() -> Iterator[Partition]:
    p = Partition(corrected=False)
    yield p
    p.close()


# -- the four cases of faust#606 ---------------------------------------------------------------


def test_one_missing_offset_at_the_head_is_not_committed_over(
    partition: Partition, stock: Partition
) -> None:
    for p in (partition, stock):
        p.seek(5)
        p.deliver(5, 6, 7)
        p.ack(6, 7)  # 5 is still in flight
    assert stock.commit() == 8  # the bug: past 5
    assert partition.commit() is None
    partition.ack(5)
    assert partition.commit() == 8


@pytest.mark.parametrize("committed", [None, 0], ids=["new-group", "committed-0"])
def test_committed_offset_0_head_in_flight_is_not_committed_over(
    partition: Partition, stock: Partition, committed: int | None
) -> None:
    for p in (partition, stock):
        p.seek(committed)
        p.deliver(*range(11))
        p.ack(*range(1, 11))  # offset 0 is still in flight
    assert stock.commit() == 11  # the bug: the guard is off while the committed offset is 0
    assert partition.commit() is None
    partition.ack(0)
    assert partition.commit() == 11


def test_several_in_flight_commits_stop_below_the_first(
    partition: Partition, stock: Partition
) -> None:
    for p in (partition, stock):
        p.seek(None)
        p.deliver(*range(10))
        p.ack(0, 1, 2, 4, 6, 7, 8)  # 3, 5 and 9 in flight
        assert p.commit() == 3
    assert stock.commit() == 5  # the bug: past 3 (one missing offset at the head)
    assert partition.commit() is None
    partition.ack(5)
    assert partition.commit() is None  # 3 still in flight
    partition.ack(3)
    assert partition.commit() == 9  # 9 still in flight
    assert partition.commit() is None
    partition.ack(9)
    assert partition.commit() == 10


@pytest.mark.parametrize("committed", [None, 0, 7])
def test_all_acked_commits_everything(partition: Partition, committed: int | None) -> None:
    start = committed or 0
    partition.seek(committed)
    partition.deliver(*range(start, start + 6))
    partition.ack(*reversed(range(start, start + 6)))
    assert partition.commit() == start + 6
    assert partition.commit() is None  # nothing new
    assert not partition.consumer._acked[TP0] and not partition.consumer._acked_index[TP0]


# -- gaps: offsets compacted away or deleted are committed over, in-flight ones are not ------


def test_a_gap_in_the_log_is_committed_over(partition: Partition) -> None:
    partition.seek(5)
    partition.deliver(5, 6, 9, 10)  # 7 and 8 were compacted away
    partition.ack(5, 6, 9, 10)
    assert partition.commit_all() == 11


def test_the_message_read_after_a_gap_is_not_committed_over_while_in_flight(
    partition: Partition, stock: Partition
) -> None:
    for p in (partition, stock):
        p.seek(5)
        p.deliver(5, 6, 9, 10)  # 7 and 8 compacted away; Faust's gap is [7, 9]
        p.ack(5, 6, 10)  # 9 is still in flight
    assert stock.commit_all() == 11  # the bug: 9 counted as part of the gap
    assert partition.commit_all() == 9  # over the gap, up to 9
    partition.ack(9)
    assert partition.commit_all() == 11


@pytest.mark.parametrize(("committed", "while_6_in_flight"), [(None, None), (3, 6)])
def test_a_gap_at_the_head_is_committed_over(
    partition: Partition, committed: int | None, while_6_in_flight: int | None
) -> None:
    partition.seek(committed)
    partition.deliver(6, 7, 8)  # the log starts at 6 (deleted), or 3..5 compacted away
    partition.ack(7)
    assert partition.commit_all() == while_6_in_flight  # up to 6 at most
    partition.ack(6, 8)
    assert partition.commit_all() == 9


# -- any concurrency: random interleavings -------------------------------------------------------


def simulate(p: Partition, rng: random.Random, first: int, n: int) -> list[str]:
    """Read ``n`` offsets from ``first`` with random holes, take up to a random number of them
    into flight, ack in random order, commit after every step. Returns the violations of:
    the committed offset is never past an offset delivered and not acked, and never past one
    that is neither acked nor absent from the log."""
    log = sorted(rng.sample(range(first, first + n + n // 3), n))
    p.seek(first or None)
    violations: list[str] = []
    pending = list(log)
    in_flight: list[int] = []
    acked: set[int] = set()
    concurrency = rng.randint(2, 8)
    while pending or in_flight:
        if pending and (len(in_flight) < concurrency) and rng.random() < 0.6:
            offset = pending.pop(0)
            p.deliver(offset)
            in_flight.append(offset)
        elif in_flight:
            offset = in_flight.pop(rng.randrange(len(in_flight)))
            p.ack(offset)
            acked.add(offset)
        committed = p.commit()
        if committed is None:
            continue
        not_done = [o for o in log if o < committed and o not in acked]
        if not_done:
            violations.append(f"committed {committed} while {not_done} not acked")
    final = p.commit_all()
    if final != log[-1] + 1:
        violations.append(f"everything acked but committed {final}, not {log[-1] + 1}")
    return violations


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_never_commit_past_an_unacked_offset(seed: int) -> None:
    rng = random.Random(seed)
    p = Partition(corrected=True)
    try:
        assert simulate(p, rng, first=rng.choice([0, 0, 1, 50]), n=rng.randint(5, 60)) == []
    finally:
        p.close()


def test_random_interleavings_do_break_stock_faust() -> None:
    """The simulation finds the bug on the stock consumer (so it can find it at all)."""
    broken = 0
    for seed in range(40):
        rng = random.Random(seed)
        p = Partition(corrected=False)
        try:
            broken += bool(simulate(p, rng, first=rng.choice([0, 0, 1, 50]), n=rng.randint(5, 60)))
        finally:
            p.close()
    assert broken >= 10


# -- which versions, and where it is installed --------------------------------------------------


def test_the_installed_faust_is_a_version_the_correction_applies_to() -> None:
    assert offsets.installed_version() in offsets.AFFECTED_VERSIONS
    assert offsets.correction_needed(offsets.installed_version()) is True


def test_an_unknown_faust_version_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offsets, "installed_version", lambda: "0.99.0")
    app = faust.App("t-unknown", broker="kafka://127.0.0.1:1")
    with pytest.raises(offsets.UnsupportedFaustVersion, match=r"0\.99\.0.*faust#606"):
        offsets.guard_commits(app)


def test_a_version_with_the_upstream_fix_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offsets, "installed_version", lambda: "0.99.0")
    monkeypatch.setattr(Consumer, offsets.UPSTREAM_FIX_ATTRIBUTE, lambda self, tp: None, False)
    app = faust.App("t-fixed", broker="kafka://127.0.0.1:1")
    offsets.guard_commits(app)
    assert not isinstance(app.consumer, offsets.InFlightSafeOffsets)


def test_guard_commits_refuses_an_app_whose_consumer_exists() -> None:
    app = faust.App("t-late", broker="kafka://127.0.0.1:1")
    assert app.consumer is not None
    with pytest.raises(RuntimeError, match="exists already"):
        offsets.guard_commits(app)


class NoCompute:
    model_id, embedding_dim, providers = "m", 4, ["CPU"]


def test_the_worker_app_commits_by_the_corrected_rule() -> None:
    async def build() -> object:
        settings = Settings().override(batch__in_flight_batches=2)
        return create_app(settings, NoCompute()).consumer  # type: ignore[arg-type]

    consumer = asyncio.run(build())
    assert isinstance(consumer, offsets.InFlightSafeOffsets)
    assert type(consumer)._new_offset is offsets.InFlightSafeOffsets._new_offset


def test_the_corrected_class_is_built_once_per_consumer_class() -> None:
    from faust.transport.drivers import aiokafka

    a, b = (offsets.in_flight_safe(aiokafka.Consumer) for _ in range(2))
    assert a is b and issubclass(a, aiokafka.Consumer)
    assert offsets.in_flight_safe(a) is a
    assert list(itertools.islice(a.__mro__, 2)) == [a, offsets.InFlightSafeOffsets]
