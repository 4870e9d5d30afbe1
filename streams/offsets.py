"""Offset commits that never pass an in-flight message: a correction of faust-streaming's
``Consumer._new_offset`` (upstream issue faust-streaming/faust#606).

The bug. Faust commits, per partition, the end of the first run of consecutive acknowledged
offsets (``Consumer._acked``, plus the gaps of ``Consumer._gap``). Its only guard for a
message still being processed at the head of that run is ``min(acked) - committed > 1``, and
the guard is skipped while the committed offset is 0 or unknown. With an agent
``concurrency`` above 1 (``batch.in_flight_batches``) a slow batch at the head of a
partition and a fast batch behind it therefore commit past the slow one's offsets:

- committed offset unknown (a new group) or 0: acked ``[1..10]`` while offset 0 is in flight
  commits 11;
- exactly one missing offset at the head: committed 5, acked ``[6, 7]`` while 5 is in flight
  commits 8;
- a gap (offsets compacted away or deleted) is recorded *including* the offset of the message
  read after it (``_add_gap(tp, r_offset + 1, offset)`` adds ``[from, offset]``), so that
  message counts as acknowledged while it is still being processed.

A crash then loses those messages: the next owner of the partition resumes after them.

The correction (the rule of upstream PR #707, unreleased as of 0.15.3): the offset Faust
computes is capped at the smallest offset that was delivered to a stream and is not yet
acknowledged, for that partition. Faust records every such message in
``Consumer._unacked_messages`` when a stream takes it from its channel (and drops it, or marks
it ``acked``, on the final ack); a stream takes messages of a partition in offset order, so
an offset below an acknowledged one is either acknowledged, in that set, or was never in the
log (a gap). Acknowledged offsets above the cap stay in ``_acked`` and are committed once the
in-flight message is acknowledged. Everything else is Faust's own logic, unchanged: gap
filling, the head guard (kept: after a seek Faust's read offset is the committed offset,
and its gap bookkeeping relies on that guard for a compacted offset at the head), the
clean-up of ``_acked`` and ``_acked_index``.

Versions. The correction replaces a private method and reads private state, so it is applied
only to the versions whose code it was checked against (``AFFECTED_VERSIONS``). On any other
version the worker refuses to start (``UnsupportedFaustVersion``), unless that version
carries the upstream fix (``Consumer._smallest_unacked_offset``, PR #707): then it is left
alone, with a warning. Before adding a version here, read its ``faust/transport/consumer.py``
(``ack``, ``_new_offset``, ``_add_gap``, ``_drain_messages``) and run
``tests/unit/test_offsets.py`` and ``tests/stress/test_faust_606_head_gap.py``.

It is installed on one app (``guard_commits``), not patched into Faust globally.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.types import TP, Message
from faust.utils.functional import consecutive_numbers

log = logging.getLogger(__name__)

DISTRIBUTION = "faust-streaming"
#: faust-streaming releases whose ``_new_offset`` has the bug and whose bookkeeping this
#: module was checked against.
AFFECTED_VERSIONS = frozenset({"0.15.3"})
#: What the upstream fix (PR #707) adds to ``Consumer``.
UPSTREAM_FIX_ATTRIBUTE = "_smallest_unacked_offset"


class UnsupportedFaustVersion(RuntimeError):
    """An installed faust-streaming this module was not checked against."""


def smallest_in_flight(messages: Iterable[Message], tp: TP) -> int | None:
    """The smallest offset of ``tp`` among ``messages`` not yet acknowledged, or None."""
    offsets = [m.offset for m in list(messages) if m.tp == tp and not m.acked]
    return min(offsets) if offsets else None


class InFlightSafeOffsets(Consumer):
    """Mixin for a Faust consumer class: ``_new_offset`` never returns an offset past a
    message delivered to a stream and not yet acknowledged (see the module docstring)."""

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        # Faust's gap filling, unchanged: gaps below the highest acked offset count as acked.
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                filled: list[int] = []
                for entry in candidates:
                    filled.extend(range(entry.begin, entry.end))
                acked.extend(filled)
                gap_for_tp.chop(0, max(filled[-1], max_offset + 1))
        acked.sort()
        # Faust's head guard, unchanged (it treats one missing offset as a compacted one).
        committed = self._committed_offset[tp]
        if committed and acked[0] - committed > 1:
            return None
        run = next(consecutive_numbers(acked))
        # The correction: stop below the first message still in flight.
        in_flight = smallest_in_flight(self._unacked_messages, tp)
        if in_flight is not None:
            run = run[: bisect_left(run, in_flight)]
            if not run:
                return None
        del acked[: len(run)]
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1


@cache
def in_flight_safe(consumer_class: type[Consumer]) -> type[Consumer]:
    """``consumer_class`` with the corrected ``_new_offset``."""
    if issubclass(consumer_class, InFlightSafeOffsets):
        return consumer_class
    return type(
        f"InFlightSafe{consumer_class.__name__}",
        (InFlightSafeOffsets, consumer_class),
        {"__module__": __name__, "__doc__": consumer_class.__doc__},
    )


def installed_version() -> str | None:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


def correction_needed(faust_version: str | None) -> bool:
    """True for a version known to have the bug; False when the upstream fix is present;
    ``UnsupportedFaustVersion`` for any other version."""
    if faust_version in AFFECTED_VERSIONS:
        return True
    if hasattr(Consumer, UPSTREAM_FIX_ATTRIBUTE):
        log.warning(
            "%s %s carries the upstream fix for faust#606 (%s): offsets not corrected here",
            DISTRIBUTION,
            faust_version,
            UPSTREAM_FIX_ATTRIBUTE,
        )
        return False
    raise UnsupportedFaustVersion(
        f"{DISTRIBUTION} {faust_version} is not one this worker's offset-commit correction was"
        f" checked against ({', '.join(sorted(AFFECTED_VERSIONS))}). Without it a worker with"
        " batch.in_flight_batches > 1 can commit past images still in flight and lose them"
        f" in a crash (faust#606). Install {DISTRIBUTION}=={max(AFFECTED_VERSIONS)} (the"
        " version pyproject.toml pins), or check this version and add it to"
        " streams/offsets.py AFFECTED_VERSIONS."
    )


def guard_commits(app: faust.App) -> None:
    """Make ``app`` commit offsets by the corrected rule. Call it when creating the app,
    before anything creates its consumer; raises ``UnsupportedFaustVersion`` on a
    faust-streaming it was not checked against.

    The corrected class is chosen when the app creates its consumer, from the transport the
    app has then, so a transport installed after this call (``streams.transport``) keeps it.
    """
    faust_version = installed_version()
    if not correction_needed(faust_version):
        return
    state: Any = app  # Faust's private consumer slot and factory
    if state._consumer is not None:
        raise RuntimeError("guard_commits: the app's consumer exists already")
    create_consumer = state._new_consumer

    def new_consumer() -> Consumer:
        transport = app.transport
        transport.Consumer = in_flight_safe(transport.Consumer)  # type: ignore[misc]
        consumer = create_consumer()
        if not isinstance(consumer, InFlightSafeOffsets):
            raise RuntimeError(f"guard_commits: {type(consumer)} lacks the offset correction")
        log.debug("%s %s: offset commits capped at in-flight messages", DISTRIBUTION, faust_version)
        return consumer

    state._new_consumer = new_consumer
