"""Joining Ray, and finding (or creating) a deployment's model application and gallery actor.

Names are derived from the app id (and, for the model, from the model: ``actors.serving``),
so every worker of one deployment and one model finds the same ones.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import ray
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from actors.deployment import (
    PLACEMENT_FILE,
    GalleryActor,
    gallery_actor_name,
    placement_key,
)
from actors.serving import ModelApp, ensure_model_app
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Actors:
    model: Any  # DeploymentHandle of the model application (Serve routes among replicas)
    gallery: Any  # GalleryActor handle
    model_id: str
    embedding_dim: int
    providers: list[str]


def join_ray(settings: Settings, address: str, attempts: int = 1) -> bool:
    """Join the running cluster at ``address`` as a quiet client (a CLI beside a deployment),
    trying ``attempts`` times 2 s apart; False when it does not answer."""
    if ray.is_initialized():
        return True
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_fixed(2.0),
            retry=retry_if_exception_type((ConnectionError, RuntimeError)),
            reraise=True,
        ):
            with attempt:
                ray.init(
                    address=address,
                    namespace=settings.ray.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
    except (ConnectionError, RuntimeError) as exc:
        log.warning("the Ray cluster at %s is not reachable (%s)", address, exc)
        return False
    return True


# A local Ray that does not come up (its raylet not registered within Ray's fixed 30 s on a
# loaded machine, an agent's port taken meanwhile) is started again, this many times in all.
LOCAL_RAY_STARTS = 3


def connect_ray(settings: Settings) -> None:
    """Join the configured cluster, or start a local one. Call before Faust takes over stdio."""
    if ray.is_initialized():
        return
    local = settings.ray.address is None
    # mode (Faust) replaces sys.stdout/stderr with proxies that lack fileno(), which Ray's
    # faulthandler needs: use the real streams while Ray starts.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(LOCAL_RAY_STARTS if local else 1),
            retry=retry_if_exception_type(Exception),
            wait=wait_fixed(1.0),
            before_sleep=_start_again,
            reraise=True,
        ):
            with attempt:
                ray.init(
                    address=settings.ray.address,
                    namespace=settings.ray.namespace,
                    num_cpus=settings.ray.num_cpus if local else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    **(
                        {"_metrics_export_port": settings.ray.metrics_export_port}
                        if local and settings.ray.metrics_export_port
                        else {}
                    ),
                )
    finally:
        sys.stdout, sys.stderr = saved


def _start_again(state: RetryCallState) -> None:
    """Before another start of a local Ray: what the failed one left running goes."""
    exc = state.outcome.exception() if state.outcome else None
    log.warning("the local Ray did not start (%s); starting it again", exc)
    ray.shutdown()


__all__ = [
    "Actors",
    "connect_ray",
    "ensure_actors",
    "ensure_gallery",
    "find_gallery",
    "gallery_actor_name",
    "join_ray",
]


def recorded_placement(settings: Settings) -> dict[str, Any] | None:
    """Where the edge gallery's owner ran (its node), as it recorded it: in Ray's key-value
    store, else beside the gallery (``placement.json``, readable when this process runs on
    that node). None: no record (a new gallery, or the server backend)."""
    if settings.gallery.backend != "edge":
        return None
    raw = None
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(placement_key(settings))
    except Exception:  # an older or a client-mode Ray: fall back to the file
        raw = None
    if raw is None:
        file = settings.gallery.path / PLACEMENT_FILE
        raw = file.read_bytes() if file.is_file() else None
    return json.loads(raw) if raw else None


def gallery_node(settings: Settings, placement: dict[str, Any] | None) -> str | None:
    """The Ray node the gallery actor must run on: the recorded node while it is alive, else
    an alive node at the same address (that machine's Ray restarted: the disk is still
    there), else the recorded node anyway (dead: the actor cannot be scheduled, the workers
    wait and FacestreamGalleryUnavailable fires: never an empty gallery elsewhere). Not the
    host name: the nodes of one machine share it. A machine whose address changed: edit
    ``placement.json``. None: nothing recorded, so Ray places it (the worker's own node)."""
    if placement is None:
        return None
    alive = [n for n in ray.nodes() if n.get("Alive")]
    for key, field in (("node_id", "NodeID"), ("node_ip", "NodeManagerAddress")):
        for node in alive:
            if placement.get(key) and node.get(field) == placement[key]:
                return node["NodeID"]
    log.error(
        "the gallery's node %s (%s) is gone: searches wait until it is back",
        placement.get("node_id"),
        placement.get("node_ip"),
    )
    return placement.get("node_id")


def _gallery_strategy(settings: Settings) -> Any:
    """Pin the edge gallery's owner to the node whose disk holds the gallery (soft=False:
    never elsewhere). A new gallery is created on this process's node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if settings.gallery.backend != "edge":
        return "DEFAULT"
    node = gallery_node(settings, recorded_placement(settings))
    node = node or ray.get_runtime_context().get_node_id()
    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def ensure_actors(settings: Settings) -> Actors:
    """Deploy (or find) this worker's model application and the gallery actor (idempotent)."""
    model: ModelApp = ensure_model_app(settings)
    gallery = ensure_gallery(settings, model.model_id, model.embedding_dim)
    ray.get(gallery.info.remote())  # surfaces a model mismatch or lock error now, not later
    log.info("model %s on %s; gallery ready", model.model_id, model.providers[0])
    return Actors(model.handle, gallery, model.model_id, model.embedding_dim, model.providers)


def ensure_gallery(settings: Settings, model_id: str, embedding_dim: int) -> Any:
    """The gallery actor of ``model_id``, created (on its pinned node) when there is none:
    also after Ray gave up on it because its node was gone (it cannot be placed elsewhere),
    so that the node's return brings it back."""
    return GalleryActor.options(
        name=gallery_actor_name(settings, model_id),
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=0,  # RayCompute retries transient failures itself
        scheduling_strategy=_gallery_strategy(settings),
        # Ray pickles constructor arguments and keeps them (to restart actors): send no secrets.
    ).remote(settings.without_secrets(), model_id, embedding_dim)


def find_gallery(settings: Settings, model_id: str) -> Any:
    """The running deployment's gallery actor (raises ValueError when there is none)."""
    return ray.get_actor(gallery_actor_name(settings, model_id), namespace=settings.ray.namespace)
