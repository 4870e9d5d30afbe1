"""Joining Ray, and finding (or creating) a deployment's actors by name.

Names are derived from the app id, so every worker of one deployment finds the same actors.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import ray

from actors.deployment import GalleryActor, ModelActor
from actors.gallery import model_slug
from core.settings import Settings

log = logging.getLogger(__name__)


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
    # Ray pickles constructor arguments and keeps them (to restart actors): send no secrets.
    shipped = settings.without_secrets()
    models = [
        ModelActor.options(
            name=name,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=settings.ray.model_num_cpus,
            num_gpus=settings.ray.model_num_gpus,
            max_restarts=-1,
            # No retries by Ray itself: RayCompute retries on another replica, and an image
            # that kills its replica must not kill it again for each of Ray's retries.
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(shipped)
        for name in model_actor_names(settings)
    ]
    info = ray.get(models[0].info.remote())
    gallery = GalleryActor.options(
        name=gallery_actor_name(settings, info["model_id"]),
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=0,  # RayCompute retries transient failures itself
    ).remote(shipped, info["model_id"], info["embedding_dim"])
    ray.get(gallery.info.remote())  # surfaces a model mismatch or lock error now, not later
    log.info("model %s on %s; gallery ready", info["model_id"], info["providers"][0])
    return Actors(models, gallery, info["model_id"], info["embedding_dim"], info["providers"])


def find_gallery(settings: Settings, model_id: str) -> Any:
    """The running deployment's gallery actor (raises ValueError when there is none)."""
    return ray.get_actor(gallery_actor_name(settings, model_id), namespace=settings.ray.namespace)
