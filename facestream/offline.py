"""Working without Kafka: the worker's identification of an image, in this process."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from actors.gallery import current_model
from actors.models import load_face_model
from core.decisions import Decision, SearchPlan
from core.events import ImageMeta, dlq_event, match_event
from core.imaging import ImageRejected
from core.settings import Settings
from facestream.gallery_reads import GalleryReader

log = logging.getLogger(__name__)


class OfflineIdentifier:
    """The worker's detection, embedding and search in this process, for scripts and eval."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = load_face_model(settings)
        self.gallery: GalleryReader | None = None
        current = current_model(settings)
        if current == self.model.model_id:
            self.gallery = GalleryReader(settings, current, self.model.embedding_dim)
        else:  # never create or switch a gallery from here
            log.warning(
                "no gallery of model %s (current: %s): every face will be unknown",
                self.model.model_id,
                current,
            )
        self.decision = Decision.configured(self.model.model_id, settings.matching)

    def identify(self, image_id: str, data: bytes) -> dict[str, Any]:
        meta = ImageMeta(image_id=image_id, source="offline")
        (result,) = self.model.analyze_bytes([data], self.settings.limits)
        if isinstance(result, ImageRejected):
            return dlq_event(meta, result.reason, result.message)
        plan = SearchPlan.of([result], self.settings.quality.search, self.model.embedding_dim)
        found = (
            self.gallery.call("search", plan.embeddings, self.settings.matching.top_k)
            if self.gallery is not None and len(plan.embeddings)
            else [[] for _ in plan.embeddings]
        )
        (candidates,) = plan.candidates(found)
        return match_event(meta, result, candidates, self.decision, plan.reasons[0])

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()

    def __enter__(self) -> OfflineIdentifier:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
