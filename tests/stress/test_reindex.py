"""A model change without downtime: `facestream reindex` rebuilds the gallery for the new model
from the enrolment log while the old workers keep serving; a worker of the new model then
takes over. Every image produced throughout is matched: no window in which searches fail."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.gallery import current_model
from actors.models.packs import resolve_pack
from core.settings import Settings
from facestream.embedded import Worker
from streams.clients import ImageToSend
from tests.conftest import unique
from tests.flow import run_flow
from tests.stress.test_delivery import new_stack

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
        steps: dict[str, float] = {}

        async def reindex() -> None:
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "facestream.cli", "reindex"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            steps["reindexed"] = time.monotonic()

        def roll_workers() -> None:
            stack.workers.append(Worker(new, stack.run_dir / "worker-new.log", stack.worker_env))
            stack.workers[0].stop()  # SIGTERM: the new worker takes over its partitions
            steps["rolled"] = time.monotonic()

        photo = (samples / "obama2.jpg").read_bytes()
        images = [ImageToSend(unique(f"img-{i:03d}"), photo, "cam") for i in range(160)]
        report = asyncio.run(
            run_flow(
                old, images, timeout_s=240, rate_per_s=8, faults={20: reindex, 70: roll_workers}
            )
        )
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
