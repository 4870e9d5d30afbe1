"""A background index build yields to searches: its process is stopped while searches run,
for at most its share of the build's time, and never once it serves its index."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.gallery.edge import EngineProcess, _Build


def stopped(proc: subprocess.Popen, expect: bool) -> bool:
    """Whether the process is stopped (T in /proc), once a signal that makes it ``expect``
    has had up to 5 s to land."""
    deadline = time.monotonic() + 5
    while True:
        is_stopped = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        if is_stopped == expect or time.monotonic() > deadline:
            return is_stopped
        time.sleep(0.01)


@pytest.fixture
def builder() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def build_of(
    proc: subprocess.Popen, share: float, age_s: float, allowance_s: float = 0.0
) -> _Build:
    build = _Build([], "index-1", Path("export-1"), share, allowance_s)
    build.child = SimpleNamespace(proc=proc)  # type: ignore[assignment]
    build.started -= age_s
    return build


def test_the_builder_is_stopped_until_the_last_search_ends(builder: subprocess.Popen) -> None:
    build = build_of(builder, share=0.5, age_s=100)
    with build.paused():
        assert stopped(builder, True)
        with build.paused():
            assert stopped(builder, True)
        assert stopped(builder, True)  # one search still runs
    assert not stopped(builder, False)
    assert build.paused_s > 0


def test_the_builder_runs_again_once_searches_spent_its_share(builder: subprocess.Popen) -> None:
    build = build_of(builder, share=0.5, age_s=0.1)
    with build.paused():
        assert stopped(builder, True)
        time.sleep(1.2)  # stopped 1.2 s of 1.3: over half
        with build.paused():  # a search that comes now does not keep it stopped
            assert not stopped(builder, False)
    assert build.paused_s >= 1.2  # counted up to the moment it ran again


def test_a_builder_serving_its_index_is_never_stopped(builder: subprocess.Popen) -> None:
    build = build_of(builder, share=0.9, age_s=100)
    with build.paused():
        assert stopped(builder, True)
        build.release()  # ready: it answers searches now
        assert not stopped(builder, False)
    with build.paused():
        assert not stopped(builder, False)


def test_no_share_never_stops_the_builder(builder: subprocess.Popen) -> None:
    build = build_of(builder, share=0.0, age_s=100)
    with build.paused():
        assert not stopped(builder, False)
    assert build.paused_s == 0


def test_a_starting_build_is_stopped_for_searches_within_its_allowance(
    builder: subprocess.Popen,
) -> None:
    """A build's first moments (the builder's imports and loading, at normal priority) held
    the slowest searches at 1M points, while its share of a build 0.1 s old was ~0."""
    build = build_of(builder, share=0.5, age_s=0.1, allowance_s=1.0)
    with build.paused():
        assert stopped(builder, True)
        time.sleep(0.4)
    assert not stopped(builder, False)
    with build.paused():  # stopped 0.4 s of 0.5: past the share, within the allowance
        assert stopped(builder, True)
    without = build_of(builder, share=0.5, age_s=0.1)
    with without.paused():
        time.sleep(0.4)
    with without.paused():
        assert not stopped(builder, False)


def test_an_index_no_longer_served_runs_every_thread_at_the_lowest_priority() -> None:
    """The old index's close and exit (GBs unmapped and freed: ~0.6 s of CPU at 1M points)
    ran beside the first searches on the new index, at their priority."""
    code = "import threading as t, time; t.Thread(target=time.sleep, args=(60,)).start()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        tasks = Path(f"/proc/{proc.pid}/task")
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        EngineProcess.yield_cpu(SimpleNamespace(proc=proc))  # type: ignore[arg-type]
        nices = [os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks.iterdir()]
        assert len(nices) == 2 and set(nices) == {19}
    finally:
        proc.kill()
        proc.wait()
