"""The model tier's own logic, without a cluster: application names, the provider check, the
self-check's verdict, and the merging of several workers' batches into one model run."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import serving
from actors.models.packs import resolve_pack
from core.settings import Settings

SETTINGS = Settings()


@pytest.fixture(scope="module")
def pack_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default pack under another name: another model id, the same weights."""
    folder = tmp_path_factory.mktemp("packs") / "buffalo_s_v2"
    shutil.copytree(resolve_pack(None, SETTINGS.cache_dir).folder, folder)
    return folder


def test_one_application_per_model_and_per_setting_that_changes_the_answers(
    pack_copy: Path,
) -> None:
    name = serving.model_app_name(SETTINGS)
    assert name.startswith(f"{SETTINGS.kafka.app_id}-model-buffalo-s-")
    assert serving.model_app_name(Settings()) == name  # every worker of the model: one app
    others = [
        SETTINGS.override(model__folder=pack_copy),
        SETTINGS.override(model__det_size=320),
        SETTINGS.override(model__providers=["CPUExecutionProvider"]),
        SETTINGS.override(limits__max_pixels=1000),
        SETTINGS.override(ray__model_num_gpus=0.5),
        SETTINGS.override(kafka__app_id="another-deployment"),
    ]
    names = [serving.model_app_name(s) for s in others]
    assert len({name, *names}) == len(others) + 1, names
    assert names[0].startswith(f"{SETTINGS.kafka.app_id}-model-buffalo-s-v2-")
    # Autoscaling and batching change how many replicas run, not what they compute.
    scaled = SETTINGS.override(ray__max_replicas=7, ray__max_batch_size=2, batch__size=3)
    assert serving.model_app_name(scaled) == name


@pytest.mark.parametrize(
    ("requested", "running", "gpus", "problem"),
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"], 0.0, None),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider"], 1.0, None),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], 1.0,
         "asked for CUDAExecutionProvider, running on CPUExecutionProvider"),
        (["CPUExecutionProvider"], ["CPUExecutionProvider"], 0.25,
         "given 0.25 GPU(s) by Ray, running on CPUExecutionProvider"),
    ],
)  # fmt: skip
def test_a_replica_asked_for_a_gpu_that_runs_on_the_cpu_is_unhealthy(
    requested: list[str], running: list[str], gpus: float, problem: str | None
) -> None:
    assert serving.provider_problem(requested, running, gpus) == problem


@pytest.mark.parametrize(
    ("changes", "total", "named"),
    [
        ({"ray__min_replicas": 3}, {"CPU": 2.0},
         "MIN_REPLICAS=3 model replicas of FACESTREAM_RAY__MODEL_NUM_CPUS=1 each need 3 CPUs;"
         " this worker's own Ray has 2"),
        ({"ray__model_num_gpus": 1}, {"CPU": 8.0},
         "MODEL_NUM_GPUS=1 each need 1 GPUs; this worker's own Ray has 0"),
        ({"ray__model_num_gpus": 0.5, "ray__min_replicas": 2}, {"CPU": 8.0, "GPU": 1.0}, None),
        ({"ray__model_num_cpus": 0, "ray__min_replicas": 5}, {"CPU": 2.0}, None),
        ({}, {"CPU": 1.0}, None),
    ],
)  # fmt: skip
def test_replicas_that_cannot_be_placed_on_the_workers_own_ray_are_named(
    changes: dict[str, Any], total: dict[str, float], named: str | None
) -> None:
    """Serve waits for unplaceable replicas for ever: the worker hung at start, silent."""
    problem = serving.unplaceable(SETTINGS.override(**changes), total)
    assert (problem is None) if named is None else (named in (problem or "")), problem


class Embedder:
    """A SelfCheck's view of a model: the known photo's embeddings, as set."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings

    def analyze_bytes(self, blobs: list[bytes], limits: Any) -> list[Any]:
        return [type("Faces", (), {"embeddings": self.embeddings})() for _ in blobs]


def unit_rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_self_check_fails_when_the_known_photo_no_longer_embeds_as_at_start() -> None:
    model = Embedder(unit_rows(6, seed=1))
    check = serving.SelfCheck(model, SETTINGS.limits)  # type: ignore[arg-type]
    assert check.problem() is None
    model.embeddings = model.embeddings + 1e-4  # a device's rounding: within tolerance
    assert check.problem() is None
    model.embeddings = unit_rows(6, seed=2)  # another model, or a broken one
    assert "cosine" in (check.problem() or "")
    model.embeddings = unit_rows(5, seed=1)
    assert "5 faces in the known photo, 6 at start" in (check.problem() or "")
    model.embeddings = np.full((6, 512), np.nan, np.float32)
    assert check.problem() is not None


class Replica(serving.FaceModelReplica):
    """The replica's merging, with a model that fails on ``poison``."""

    def __init__(self) -> None:
        self.runs: list[list[bytes]] = []

    def _analyze(self, blobs: list[bytes]) -> list[Any]:
        self.runs.append(blobs)
        if b"poison" in blobs:
            raise RuntimeError("the model crashed on an image")
        return [blob.decode() for blob in blobs]


def test_merged_batches_come_back_to_their_callers_and_a_poison_fails_only_its_own() -> None:
    replica = Replica()

    async def merge(calls: list[list[bytes]]) -> list[Any]:
        # The method under @serve.batch: what one merged run does with its callers' batches.
        unbatched = serving.FaceModelReplica._merge.__wrapped__  # type: ignore[attr-defined]
        return await unbatched(replica, calls)

    out = asyncio.run(merge([[b"a", b"b"], [b"c"]]))
    assert out == [["a", "b"], ["c"]] and replica.runs == [[b"a", b"b", b"c"]]
    replica.runs.clear()
    out = asyncio.run(merge([[b"a"], [b"poison", b"d"], [b"e"]]))
    assert out[0] == ["a"] and out[2] == ["e"] and isinstance(out[1], RuntimeError)
    assert replica.runs == [[b"a", b"poison", b"d", b"e"], [b"a"], [b"poison", b"d"], [b"e"]]
