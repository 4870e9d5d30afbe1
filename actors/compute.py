"""``core.compute.Compute`` implemented: on Ray (workers) or in this process (tools).

Both share the typed gallery methods; they differ in how a call reaches the model and the
gallery (``_analyze`` / ``_gallery``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from ray.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    RayActorError,
    RayError,
    RayTaskError,
)
from ray.serve.exceptions import RayServeException

from actors.cluster import Actors, ensure_gallery
from actors.gallery import Gallery
from actors.models import FaceModel
from core.errors import PermanentError, TransientError, is_transient, one_line
from core.faces import Candidate, ImageFaces
from core.imaging import ImageRejected
from core.retry import retry
from core.settings import Settings


class GalleryCalls(ABC):
    """The typed gallery half of ``Compute``, over one untyped ``_gallery(method, *args)``."""

    model_id: str
    embedding_dim: int
    providers: list[str]

    @abstractmethod
    async def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]: ...

    @abstractmethod
    async def _gallery(self, method: str, *args: Any) -> Any: ...

    async def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        if len(embeddings) == 0:
            return []
        return await self._gallery("search", embeddings, top_k)

    async def add(
        self,
        identity: str,
        name: str | None,
        embeddings: np.ndarray,
        photos: list[dict[str, str]],
        basis: str | None,
    ) -> list[str]:
        return await self._gallery("add", identity, name, embeddings, photos, basis)

    async def show(self, identity: str) -> list[dict[str, Any]]:
        return await self._gallery("show", identity)

    async def delete(self, identity: str) -> int:
        return await self._gallery("delete", identity)

    async def size(self) -> int:
        return await self._gallery("size")

    async def record_sightings(self, embeddings: np.ndarray, metas: list[dict[str, Any]]) -> int:
        return await self._gallery("sightings.record", embeddings, metas)

    async def purge_sightings(self) -> int:
        return await self._gallery("sightings.purge")


def classified(exc: RayError | RayServeException) -> Exception:
    """Ray's failures in the taxonomy: an exception raised by the actor's (or replica's) own
    code is permanent (the same input would raise it again) unless it is a lost connection or
    a timeout (e.g. the gallery's server away); the actor, replica or node dying, being
    unreachable or restarting, an object lost, a timeout, Serve's own refusals (no replica
    for the call, its queue full), are transient."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause or exc
        lost_connection = isinstance(cause, ConnectionError | TimeoutError | TransientError)
        return (TransientError if lost_connection else PermanentError)(one_line(cause))
    return TransientError(one_line(exc))


async def _awaited(response: Any) -> Any:
    try:
        return await response
    except (RayError, RayServeException) as exc:
        raise classified(exc) from exc


def _actor_restarting(exc: BaseException) -> bool:
    return isinstance(exc.__cause__, RayActorError)


class RayCompute(GalleryCalls):
    """Calls into the model application (through its Serve handle) and the gallery actor,
    retried with backoff.

    ``on_failure(call, actor_restarting)`` hears of every failed attempt (for metrics).

    Only transient failures are retried; Serve routes each try to a replica with room (or
    waits for one). Model calls give up after ``retry.attempts`` (an image may be killing
    the model). Gallery calls never give up on a transient failure: an unreachable gallery
    makes the worker wait, and nothing is acknowledged meanwhile. A permanent failure (or
    one nobody classified) is raised at once.
    """

    def __init__(
        self,
        settings: Settings,
        actors: Actors,
        on_failure: Callable[[str, bool], None] = lambda call, actor_restarting: None,
    ) -> None:
        self.settings = settings
        self.actors = actors
        self.model_id = actors.model_id
        self.embedding_dim = actors.embedding_dim
        self.providers = actors.providers
        self._on_failure = on_failure

    async def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        return await retry(
            lambda: _awaited(self.actors.model.analyze.remote(blobs)),
            on_failure=lambda exc: self._on_failure("model", _actor_restarting(exc)),
            what="model call",
            attempts=self.settings.retry.attempts,
            backoff_s=self.settings.retry.backoff_s,
            retry_if=is_transient,
        )

    def _gallery_failed(self, exc: Exception) -> None:
        self._on_failure("gallery", _actor_restarting(exc))
        if isinstance(exc.__cause__, ActorDiedError | ActorUnschedulableError):
            # Ray gave up on it (its pinned node was gone): ask for it again, so that it comes
            # back when the node does, instead of calling a dead handle for ever.
            self.actors.gallery = ensure_gallery(self.settings, self.model_id, self.embedding_dim)

    async def _gallery(self, method: str, *args: Any) -> Any:
        return await retry(
            lambda: _awaited(self.actors.gallery.call.remote(method, *args)),
            on_failure=self._gallery_failed,
            what=f"gallery {method}",
            attempts=None,
            backoff_s=self.settings.retry.backoff_s,
            retry_if=is_transient,
        )


class LocalCompute(GalleryCalls):
    """The same interface served in this process (no Ray, no worker): reindex, scripts."""

    def __init__(self, settings: Settings, model: FaceModel, gallery: Gallery) -> None:
        self.settings, self.model, self.gallery = settings, model, gallery
        self.model_id, self.embedding_dim = model.model_id, model.embedding_dim
        self.providers = model.providers

    async def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        return self.model.analyze_bytes(blobs, self.settings.limits)

    async def _gallery(self, method: str, *args: Any) -> Any:
        return getattr(self.gallery, method)(*args)
