"""A model change without downtime: `facestream reindex` rebuilds the gallery for the new model
from the enrolment log while the old workers keep serving; a worker of the new model then
takes over. Every image produced throughout is matched: no window in which searches fail."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from actors.gallery import current_model
from actors.models.packs import resolve_pack
from core.settings import Settings
from core.waiting import wait_until_async
from facestream.embedded import Worker
from streams.clients import ImageToSend
from tests.conftest import unique
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
