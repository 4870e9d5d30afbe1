"""Reindex on a live system: `facestream reindex` builds a new gallery generation from the state
topic while the workers keep serving, and switches to it.

- A model change: the old workers keep serving; a worker of the new model then takes over.
- The same model: the running worker's gallery actor moves to the new generation by itself;
  an erasure sent while the reindex runs is absent from the new generation.
- 500+ photos: no deadline error, the time reported.

Every image produced throughout is matched: no window in which searches fail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from actors.gallery import current_generation, current_model
from actors.models.packs import resolve_pack
from core.settings import Settings
from core.waiting import wait_until_async
from facestream.embedded import EmbeddedStack, Worker
from streams.clients import ImageToSend, producer
from streams.enrollment import EnrollmentRequest, Photo, PhotoRecord
from streams.topics import state_topic
from tests.conftest import BASIS, embedded_settings, unique
from tests.stress.test_delivery import new_stack
from tests.waits import assert_faults_ran, run_flow_with_faults

pytestmark = pytest.mark.stress


def test_reindex_switches_models_with_every_search_answered(samples: Path, tmp_path: Path) -> None:
    stack, _ = new_stack(samples)
    try:
        old = stack.settings
        # "A new model": the same weights under another pack name, hence another model id.
        pack = tmp_path / "buffalo_s_v2"
        shutil.copytree(resolve_pack(None, Settings().cache_dir).folder, pack)
        new = old.override(model__folder=pack)
        env = {**os.environ, **new.env(), **stack.worker_env}
        rolled = threading.Event()

        def reindex() -> None:
            out = subprocess.run(
                [sys.executable, "-m", "facestream.cli", "reindex"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, out.stderr

        def roll_workers() -> None:
            stack.workers.append(Worker(new, stack.run_dir / "worker-new.log", stack.worker_env))
            stack.workers[0].stop()  # SIGTERM: the new worker takes over its partitions
            rolled.set()

        async def after_the_roll() -> None:
            """Hold the last images back until the workers have rolled, so that a slow reindex
            cannot let the old worker answer them all."""

            async def is_rolled() -> bool:
                return rolled.is_set()

            await wait_until_async(is_rolled, timeout_s=420, what="the workers rolled")

        photo = (samples / "obama2.jpg").read_bytes()
        images = [ImageToSend(unique(f"img-{i:03d}"), photo, "cam") for i in range(160)]
        # Placed by progress: the reindex starts once 20 images are answered and runs while
        # images keep coming (the old worker serves them); the workers roll once it is done and
        # 70 are answered; the images after the 120th are produced only after the roll.
        faults = {20: reindex, 70: roll_workers}
        report, done_at = asyncio.run(
            run_flow_with_faults(
                old, images, faults, timeout_s=480, rate_per_s=8, faults={119: after_the_roll}
            )
        )
        assert_faults_ran(done_at, faults)
        ids = {i.image_id for i in images}
        print("\n" + report.line(ids))
        assert not report.missing(ids)
        models = []
        for image in images:
            kind, event = report.outcomes[image.image_id]
            assert kind == "match" and event["faces"][0]["identity"] == "obama", event
            models.append(event["model"])
        assert models[0].startswith("buffalo_s/") and models[-1].startswith("buffalo_s_v2/")
        assert current_model(new) == models[-1]
    finally:
        stack.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facestream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_reindex_with_the_same_model_while_images_stream(samples: Path) -> None:
    # The same sample faces under many names: duplicates allowed.
    stack, pipeline = new_stack(samples, settings={"privacy__allow_duplicate_faces": True})
    try:
        settings = stack.settings
        env = {**os.environ, **settings.env(), **stack.worker_env}
        # Enough photos that the build takes several model calls of two photos each.
        for i in range(8):
            pipeline.enroll_photos(unique(f"p{i}"), samples / "biden.jpg", samples / "yaoming.jpg")
        erased = unique("erased")
        pipeline.enroll_photos(erased, samples / "biden2.jpg")
        live = current_generation(settings)
        summary: dict = {}

        def reindex_with_an_erasure_inside() -> None:
            """Stop the reindex once it embeds photos, erase someone meanwhile, let it go on:
            the erasure lands after its read of the log, so only its catch-up sees it."""
            proc = subprocess.Popen(
                [sys.executable, "-m", "facestream.cli", "reindex", "--batch", "2", "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stderr is not None
                for line in proc.stderr:
                    if line.startswith("reindex: embedding photos"):
                        break
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    reply = pipeline.enroll(EnrollmentRequest("delete", erased))
                    assert reply["ok"] and reply["tombstones"] == 1, reply
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                out, err = proc.communicate(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, err
            summary.update(last_json(out))

        photo = (samples / "obama2.jpg").read_bytes()
        images = [ImageToSend(unique(f"img-{i:03d}"), photo, "cam") for i in range(120)]
        faults = {20: reindex_with_an_erasure_inside}
        report, done_at = asyncio.run(
            run_flow_with_faults(settings, images, faults, timeout_s=480, rate_per_s=6)
        )
        assert_faults_ran(done_at, faults)
        ids = {i.image_id for i in images}
        print(f"\n{report.line(ids)}\nreindex: {summary}")
        assert not report.missing(ids)  # no image lacks its outcome
        for image in images:  # and no search failed
            kind, event = report.outcomes[image.image_id]
            assert kind == "match" and event["faces"][0]["identity"] == "obama", event
        new = current_generation(settings)
        assert new is not None and live is not None
        assert new.model_id == live.model_id and new.number > live.number  # a new generation
        assert summary["generation"] == new.name and summary["erasures during the run"] >= 1
        assert summary["live writes fenced"]  # the running owner was fenced, then followed
        # The worker's actor serves the new generation: the erased person is in none, the
        # others are in the new one (and still in the old, untouched one).
        gone = last_json(cli(env, "identities", "show", erased, "--json").stdout)
        assert gone["gallery"] == [] and gone["live_state_records"] == 0
        kept = last_json(cli(env, "identities", "show", "obama", "--json").stdout)
        assert {(g["gallery"], g["current"]) for g in kept["gallery"]} == {
            (new.name, True),
            (live.name, False),
        }
        # Enrolments go on, into the new generation.
        after = unique("after")
        pipeline.enroll_photos(after, samples / "obama3.jpg")
        shown = last_json(cli(env, "identities", "show", after, "--json").stdout)
        assert [(g["gallery"], g["current"]) for g in shown["gallery"]] == [(new.name, True)]
    finally:
        stack.stop()


def test_reindex_of_520_photos_has_no_deadline(samples: Path) -> None:
    """130 identities x 4 sample photos, written to the state topic as workers write them,
    rebuilt by `facestream reindex` (no worker: nothing live to fence)."""
    run_dir = Path(tempfile.mkdtemp(prefix="fsr-"))
    settings = embedded_settings(run_dir)
    names = ["obama.jpg", "obama2.jpg", "biden.jpg", "yaoming.jpg", "biden2.jpg", "obama3.jpg"]
    blobs = {n: (samples / n).read_bytes() for n in names}
    with EmbeddedStack(settings, run_dir, workers=0) as stack:

        async def write() -> int:
            sent = 0
            async with producer(stack.settings) as p:
                for i in range(130):
                    identity = f"person-{i:03d}"
                    for j in range(4):
                        name = names[(i + j) % len(names)]
                        record = PhotoRecord(identity, Photo(name, blobs[name]), identity, BASIS)
                        await p.send(
                            state_topic(settings), record.encode(), key=record.key.encode()
                        )
                        sent += 1
                await p.flush()
            return sent

        assert asyncio.run(write()) == 520
        env = {**os.environ, **stack.settings.env(), **stack.worker_env}
        started = time.monotonic()
        out = cli(env, "reindex", "--json")
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        summary = last_json(out.stdout)
        print(f"\nreindex of 520 photos: {took:.1f}s (its own count: {summary['seconds']}s)")
        assert (summary["identities"], summary["embeddings"]) == (130, 520)
        assert summary["photos added"] == 520 and summary["refused photos"] == []
        assert current_generation(stack.settings).name == summary["generation"]
