"""What an operator sees when something is wrong: one clear line and a non-zero exit, never
a traceback; ``produce`` skips what it cannot read and goes on; ``identify`` works while the
stack that owns the gallery is up; ``up`` stops when a process of its stack dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core.settings import Settings
from core.waiting import wait_until
from facestream.embedded import free_port
from streams.clients import ImageToSend
from tests.cli import run_cli
from tests.conftest import Pipeline

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return run_cli(settings, *args, timeout_s=timeout_s)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_up_refuses_a_port_in_use_before_starting_anything(tmp_path: Path, listening: int) -> None:
    settings = Settings().override(
        kafka__bootstrap_servers=f"127.0.0.1:{listening}", gallery__path=tmp_path / "g"
    )
    done = cli(settings, "up", timeout_s=60)
    assert_one_line_error(done, "already in use", f"127.0.0.1:{listening}")
    assert not (tmp_path / "g").exists()  # nothing started


def test_no_broker_is_one_line_not_a_traceback(tmp_path: Path, samples: Path) -> None:
    settings = Settings().override(kafka__bootstrap_servers=f"127.0.0.1:{free_port()}")
    done = cli(settings, "produce", str(samples / "obama.jpg"), timeout_s=120)
    assert_one_line_error(done, "broker")


def test_produce_skips_what_it_cannot_read_and_goes_on(
    pipeline: Pipeline, samples: Path, tmp_path: Path
) -> None:
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image's name
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "good.jpg").write_bytes((samples / "obama2.jpg").read_bytes())
    done = cli(pipeline.settings, "produce", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "sent 1 image" in done.stdout
    assert "skipped" in done.stdout and "dangling.jpg" in done.stdout
    assert "folder.jpg" in done.stdout and "Traceback" not in done.stderr


def test_identify_works_while_the_stack_owns_the_gallery(pipeline: Pipeline, samples: Path) -> None:
    done = cli(pipeline.settings, "identify", str(samples / "obama2.jpg"))
    assert done.returncode == 0, done.stderr
    assert '"identity": "obama"' in done.stdout


def test_a_second_worker_with_the_same_settings_is_one_line_error_and_the_first_goes_on(
    pipeline: Pipeline, samples: Path
) -> None:
    # Two `facestream worker` on one machine's defaults: the second used to die after 30 s
    # with Ray's "node timed out during startup", then on the gallery's WAL lock with a Ray
    # traceback. With the running stack's settings it is refused before starting anything.
    done = cli(pipeline.settings, "worker", timeout_s=60)
    assert_one_line_error(done, "served by another running facestream", "GALLERY__PATH")
    assert pipeline.stack.workers[0].alive()
    kind, event = pipeline.one(
        ImageToSend(f"second-worker-{uuid.uuid4().hex[:8]}", (samples / "obama2.jpg").read_bytes())
    )
    assert kind == "match" and event["faces"][0]["identity"] == "obama"


def test_a_worker_whose_replicas_cannot_fit_its_own_ray_is_one_line_error_not_a_hang(
    tmp_path: Path,
) -> None:
    # Serve waits for replicas it cannot place for ever: a GPU asked for on a machine
    # without one, or more replicas than cores, left the worker hanging at start, silent.
    settings = Settings().override(
        ray__num_cpus=2,
        ray__min_replicas=3,
        ray__metrics_export_port=free_port(),
        metrics__port=free_port(),
        gallery__path=tmp_path / "g",
        log_level="error",
    )
    done = cli(settings, "worker")
    # Ray's own start-up warnings come first; the error is the last line, and the only one.
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert errors == [done.stderr.strip().splitlines()[-1]], done.stderr
    for words in ("invalid settings: FACESTREAM_RAY__MIN_REPLICAS=3", "need 3 CPUs", "has 2"):
        assert words in errors[0], errors[0]


def test_up_exits_non_zero_when_its_broker_dies(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings().override(
        kafka__bootstrap_servers=f"127.0.0.1:{port}",
        kafka__app_id=f"up-{port}",
        gallery__path=tmp_path / "gallery",
        metrics__port=free_port(),
        ray__metrics_export_port=free_port(),
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "facestream.cli", "up"],
        env={**os.environ, **settings.env(), "RAY_TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: any("Ctrl-C stops" in line for line in lines),
            timeout_s=180,
            what="facestream up",
            interval_s=0.5,
        )
        broker = next(
            c
            for c in psutil.Process(up.pid).children(recursive=True)
            if any(f"tcp://127.0.0.1:{port}" in a for a in c.cmdline())
        )
        broker.kill()
        assert up.wait(120) != 0
        reader.join(10)
        assert any("the broker exited" in line for line in lines), "".join(lines)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(60)
