"""The Ray side: actors that own the face models and the gallery, and how workers reach them.

Model actors are a pool of named replicas (each holds its own onnxruntime sessions); the
gallery actor is a singleton because the embedded engine may be opened by one process only.
Names are derived from the app id, so every worker of one deployment finds the same actors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from actors.gallery import Candidate, gallery_folder, model_slug, open_gallery
from actors.gallery.edge import OWNER_FILE
from actors.gallery.sightings import Sightings
from actors.models import ImageFaces, load_face_model
from facestream.imaging import ImageRejected
from facestream.settings import Settings

log = logging.getLogger(__name__)


STAGE_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]


def _stage_histogram() -> Any:
    """Actor-side stage timings, exported by the Ray node as ray_facestream_actor_stage_seconds."""
    from ray.util.metrics import Histogram

    return Histogram(
        "facestream_actor_stage_seconds",
        "Time per batch in each actor stage",
        boundaries=STAGE_BOUNDARIES,
        tag_keys=("stage",),
    )


@ray.remote
class ModelActor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = load_face_model(settings)
        self.stage = _stage_histogram()

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model.model_id,
            "embedding_dim": self.model.embedding_dim,
            "providers": self.model.providers,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        results = self.model.analyze_bytes(blobs, self.settings.limits)
        for stage, seconds in self.model.last_timings.items():
            self.stage.observe(seconds, tags={"stage": stage})
        return results


@ray.remote
class GalleryActor:
    def __init__(self, settings: Settings, model_id: str, dim: int) -> None:
        self.gallery = open_gallery(settings, model_id, dim, must_be_current=True)
        self.sightings = Sightings(settings, model_id, dim) if settings.sightings.enabled else None
        self.stage = _stage_histogram()
        if settings.gallery.backend == "edge":
            # Tells CLI processes, which may not open the shard, where its owner runs.
            owner = {
                "ray_address": ray.get_runtime_context().gcs_address,
                "ray_auth_token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
                "pid": os.getpid(),
            }
            (gallery_folder(settings, model_id) / OWNER_FILE).write_text(json.dumps(owner))

    def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        if len(embeddings) == 0:
            return []
        started = time.perf_counter()
        found = self.gallery.search(embeddings, top_k)
        self.stage.observe(time.perf_counter() - started, tags={"stage": "gallery_search"})
        return found

    def add(
        self,
        identity: str,
        name: str | None,
        embeddings: np.ndarray,
        photos: list[dict[str, str]],
        basis: str | None = None,
    ) -> list[str]:
        return self.gallery.add(identity, name, embeddings, photos, basis)

    def show(self, identity: str) -> list[dict[str, Any]]:
        return self.gallery.show(identity)

    def record_sightings(self, embeddings: np.ndarray, metas: list[dict[str, Any]]) -> int:
        return self.sightings.record(embeddings, metas) if self.sightings else 0

    def search_sightings(self, embedding: np.ndarray, limit: int) -> list[dict[str, Any]]:
        return self.sightings.search(embedding, limit) if self.sightings else []

    def purge_sightings(self) -> int:
        return self.sightings.purge() if self.sightings else 0

    def delete(self, identity: str) -> int:
        return self.gallery.delete(identity)

    def identities(self) -> list[dict[str, Any]]:
        return self.gallery.identities()

    def size(self) -> int:
        return self.gallery.size()

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.gallery.backend,
            "model_id": self.gallery.model_id,
            "size": self.gallery.size(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }


@dataclass
class Actors:
    models: list[Any]  # ModelActor handles
    gallery: Any  # GalleryActor handle
    model_id: str
    embedding_dim: int
    providers: list[str]


def connect_ray(settings: Settings) -> None:
    """Join the configured cluster, or start a local one. Call before Faust takes over stdio."""
    if ray.is_initialized():
        return
    # mode (Faust) replaces sys.stdout/stderr with proxies that lack fileno(), which Ray's
    # faulthandler needs: use the real streams while Ray starts.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        ray.init(
            address=settings.ray.address,
            namespace=settings.ray.namespace,
            num_cpus=settings.ray.num_cpus if settings.ray.address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            **(
                {"_metrics_export_port": settings.ray.metrics_export_port}
                if settings.ray.address is None and settings.ray.metrics_export_port
                else {}
            ),
        )
    finally:
        sys.stdout, sys.stderr = saved


def model_actor_names(settings: Settings) -> list[str]:
    return [f"{settings.kafka.app_id}-model-{i}" for i in range(settings.ray.model_replicas)]


def gallery_actor_name(settings: Settings, model_id: str) -> str:
    """One gallery actor per model: during a model change both generations run side by side."""
    return f"{settings.kafka.app_id}-gallery-{model_slug(model_id)}"


def ensure_actors(settings: Settings) -> Actors:
    """Find the deployment's actors, creating any that do not exist yet (idempotent)."""
    models = [
        ModelActor.options(
            name=name,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=settings.ray.model_num_cpus,
            num_gpus=settings.ray.model_num_gpus,
            max_restarts=-1,
            max_task_retries=2,
            scheduling_strategy="SPREAD",
        ).remote(settings)
        for name in model_actor_names(settings)
    ]
    info = ray.get(models[0].info.remote())
    gallery = GalleryActor.options(
        name=gallery_actor_name(settings, info["model_id"]),
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=2,
    ).remote(settings, info["model_id"], info["embedding_dim"])
    ray.get(gallery.size.remote())  # surfaces a model mismatch or lock error now, not later
    log.info("model %s on %s; gallery ready", info["model_id"], info["providers"][0])
    return Actors(models, gallery, info["model_id"], info["embedding_dim"], info["providers"])


def find_gallery(settings: Settings, model_id: str) -> Any:
    """The running deployment's gallery actor (raises ValueError when there is none)."""
    return ray.get_actor(gallery_actor_name(settings, model_id), namespace=settings.ray.namespace)
