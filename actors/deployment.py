"""The Ray actors: a pool of model replicas, and the gallery's owner.

Each model replica holds its own onnxruntime sessions; the gallery actor is a singleton
because the embedded engine may be opened by one process only. How workers find them:
``actors.cluster``; how they call them: ``actors.compute``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ray

from actors.gallery import gallery_folder, open_gallery
from actors.gallery.edge import OWNER_FILE
from actors.gallery.sightings import Sightings
from actors.models import load_face_model
from core.buckets import STAGE_BUCKETS
from core.faces import ImageFaces
from core.imaging import ImageRejected
from core.settings import Settings

# What workers may call on the gallery owner: the Gallery's public methods, and the
# sightings store's under a "sightings." prefix.
GALLERY_METHODS = frozenset({"search", "add", "show", "delete", "identities", "size"})
SIGHTINGS_METHODS = frozenset({"record", "search", "purge", "size"})


def _stage_histogram() -> Any:
    """Actor-side stage timings, exported by the Ray node as ray_facestream_actor_stage_seconds."""
    from ray.util.metrics import Histogram

    return Histogram(
        "facestream_actor_stage_seconds",
        "Time per batch in each actor stage",
        boundaries=list(STAGE_BUCKETS),
        tag_keys=("stage",),
    )


def _placement() -> dict[str, Any]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


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
            **_placement(),
        }

    def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        results = self.model.analyze_bytes(blobs, self.settings.limits)
        for stage, seconds in self.model.last_timings.items():
            self.stage.observe(seconds, tags={"stage": stage})
        return results


@ray.remote
class GalleryActor:
    """The gallery's owner (and the sightings store's, when that is on).

    Its settings arrive without secrets (``Settings.without_secrets()``): the Qdrant API key
    of the server backend is read from this process's environment,
    ``FACESTREAM_GALLERY__API_KEY``, so every Ray node that may host the actor must be started
    with it (a local Ray started by the worker inherits the worker's environment).
    """

    def __init__(self, settings: Settings, model_id: str, dim: int) -> None:
        settings = settings.with_env_secrets()
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

    def call(self, method: str, *args: Any) -> Any:
        """``method`` of the gallery (or ``sightings.<method>``); searches are timed."""
        store, _, name = method.rpartition(".")
        if store == "sightings":
            if name not in SIGHTINGS_METHODS:
                raise AttributeError(f"no sightings method {name!r}")
            if self.sightings is None:  # opt-in store switched off: nothing kept, nothing found
                return 0 if name != "search" else []
            target = self.sightings
        elif store or name not in GALLERY_METHODS:
            raise AttributeError(f"no gallery method {method!r}")
        else:
            target = self.gallery
        started = time.perf_counter()
        result = getattr(target, name)(*args)
        if target is self.gallery and name == "search":
            self.stage.observe(time.perf_counter() - started, tags={"stage": "gallery_search"})
        return result

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.gallery.backend,
            "model_id": self.gallery.model_id,
            "size": self.gallery.size(),
            **_placement(),
        }
