"""Working without Kafka: offline identification and direct gallery reads."""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

from actors.gallery import Gallery, open_gallery
from actors.models import load_face_model
from facestream.events import Decision, ImageMeta, dlq_event, match_event
from facestream.imaging import ImageRejected
from facestream.settings import Settings

log = logging.getLogger(__name__)


class OfflineIdentifier:
    """The worker's detection, embedding and search in this process, for scripts and eval."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = load_face_model(settings)
        self.gallery: Gallery | None = None
        if settings.gallery.backend == "server" or settings.gallery.path.exists():
            self.gallery = open_gallery(settings, self.model.model_id, self.model.embedding_dim)
        else:
            log.warning("no gallery at %s: every face will be unknown", settings.gallery.path)
        self.decision = Decision(self.model.model_id, settings.matching.threshold)

    def identify(self, image_id: str, data: bytes) -> dict[str, Any]:
        meta = ImageMeta(image_id=image_id, source="offline")
        (result,) = self.model.analyze_bytes([data], self.settings.limits)
        if isinstance(result, ImageRejected):
            return dlq_event(meta, result.reason, result.message)
        if self.gallery is not None and result.faces:
            candidates = self.gallery.search(result.embeddings, self.settings.matching.top_k)
        else:
            candidates = [[] for _ in result.faces]
        return match_event(meta, result, candidates, self.decision)

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()

    def __enter__(self) -> OfflineIdentifier:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def gallery_rows(settings: Settings) -> list[dict[str, Any]]:
    """Enrolled identities, from the running deployment's gallery actor when there is one.

    The embedded engine may be opened by one process only, so while a worker runs, its
    gallery actor answers; with no deployment running, the gallery is opened directly.
    """
    rows = _rows_from_ray(settings)
    if rows is not None:
        return rows
    gallery = open_gallery(settings, model_id=None, dim=None)
    try:
        return gallery.identities()
    finally:
        gallery.close()


def _rows_from_ray(settings: Settings) -> list[dict[str, Any]] | None:
    import ray

    from actors.remote import find_gallery

    try:
        ray.init(
            address=settings.ray.address or "auto",
            namespace=settings.ray.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError:
        return None
    try:
        return ray.get(find_gallery(settings).identities.remote())
    except ValueError:
        print("no running deployment found in Ray; reading the gallery directly", file=sys.stderr)
        return None
    finally:
        ray.shutdown()
