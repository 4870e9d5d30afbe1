"""Two models on one shared Ray cluster, as during a rollout: one worker is restarted with a
second model folder (the pack under another name: another model id) after `facestream
reindex` built that model's gallery. Each model has its own Serve application; each worker's
events carry its own model id, and each worker searched its own model's gallery. Once the
last worker of the old model leaves, the new worker retires the old model's application."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actors.models.packs import resolve_pack
from actors.serving import model_app_name
from core.settings import Settings
from facestream.embedded import Worker
from tests.flow import run_flow
from tests.ray_probe import ReplicaWatch, probe
from tests.stress.test_delivery import check, new_stack, stream_of
from tests.stress.test_scale import spread_over_partitions
from tests.waits import wait_for_assignment

pytestmark = pytest.mark.stress


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "facestream.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_worker_restarted_with_another_model_uses_its_own_replicas_and_gallery(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One replica per model (two models on two cores); claims renewed every second.
    monkeypatch.setenv("FACESTREAM_RAY__MAX_REPLICAS", "1")
    monkeypatch.setenv("FACESTREAM_RAY__RETIRE_AFTER_S", "4")
    stack, _ = new_stack(samples, workers=2, shared_ray=True)
    assert stack.ray_head is not None
    try:
        old = stack.settings
        pack = tmp_path / "buffalo_s_v2"
        shutil.copytree(resolve_pack(None, Settings().cache_dir).folder, pack)
        new = old.override(model__folder=pack)
        ray_env = {**new.env(), **stack.ray_head.env}
        cli(ray_env, "reindex")  # model B's gallery, from the state topic

        stack.workers[1].stop()  # SIGTERM: it leaves the group; it comes back with model B
        stack.workers[1] = Worker(new, stack.run_dir / "worker-1-new.log", stack.worker_env)
        owned = wait_for_assignment(old, stack.workers)
        partitions = old.topics.images_partitions
        images = spread_over_partitions(stream_of(samples, 48, "rollout"), partitions)
        report = asyncio.run(run_flow(old, images, timeout_s=180, linger_s=1))
        check(report, images, stack)

        models: list[set[str]] = [set(), set()]
        for i, image in enumerate(images):
            kind, event = report.outcomes[image.image_id]
            if kind == "match":
                worker = 0 if i % partitions in owned[0] else 1
                models[worker].add(event["model"])
        print(f"models in the events of worker-0 {models[0]}, of worker-1 {models[1]}")
        (old_id,), (new_id,) = models
        assert old_id.startswith("buffalo_s/") and new_id.startswith("buffalo_s_v2/")

        listed = cli(ray_env, "models", "--json")  # what an operator sees
        apps = json.loads(listed.stdout.strip().splitlines()[-1])
        assert sorted(apps) == sorted([model_app_name(old), model_app_name(new)]), apps
        assert all(app["replicas"] == {"RUNNING": 1} for app in apps.values()), apps
        assert all(app["claimed_at"] for app in apps.values()), apps
        served = probe(ray_env, "galleries", old_id, new_id)
        for model_id, gallery in served.items():  # each worker's gallery actor: its model's
            assert gallery["model_id"] == model_id and gallery["size"] >= 1, served

        # The old model's last worker leaves: its claim lapses and the new worker's next
        # renewal deletes its application.
        stack.workers[0].stop()
        watch = ReplicaWatch(ray_env)
        try:
            watch.wait(
                lambda apps: sorted(apps) == [model_app_name(new)],
                "the old model's application retired",
                timeout_s=120,
            )
        finally:
            watch.close()
    finally:
        stack.stop()
