"""``facestream reindex``: rebuild the gallery for the configured model from the enrolment log.

The enrolment log is the source of truth (photos included), so a model change never needs
the people again: every enrolment and erasure is replayed, in order, through the same
``EnrollmentProcessor`` the workers use (same gates, same all-or-nothing rule), into a fresh
gallery of the new model. Then the current-gallery pointer moves in one atomic step
(see ``actors.gallery``): workers of the old model keep searching the old gallery until they
are restarted with the new one, so searches never fail during the change.
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

from actors.compute import LocalCompute
from actors.gallery import (
    gallery_folder,
    model_slug,
    open_model_gallery,
    set_current_model,
)
from actors.models import load_face_model
from core.settings import Settings
from streams.clients import read_to_end
from streams.processor import EnrollmentProcessor


def _drop(settings: Settings, model_id: str) -> None:
    """Remove what an earlier (perhaps interrupted) reindex for this model left behind."""
    if settings.gallery.backend == "edge":
        shutil.rmtree(gallery_folder(settings, model_id), ignore_errors=True)
        return
    from actors.gallery.server import make_client

    client = make_client(settings.gallery.url, settings.gallery.api_key)
    try:
        client.delete_collection(f"{settings.gallery.collection}-{model_slug(model_id)}")
    finally:
        client.close()


async def reindex(settings: Settings) -> dict[str, Any]:
    model = load_face_model(settings)
    _drop(settings, model.model_id)
    gallery = open_model_gallery(settings, model.model_id, model.embedding_dim)
    processor = EnrollmentProcessor(settings, LocalCompute(settings, model, gallery))
    counts: Counter[str] = Counter()
    try:
        async for record in read_to_end(settings, settings.topics.enrollments):
            if record.value is None:  # an erasure's tombstone
                counts["erased"] += gallery.delete(record.key.decode()) > 0
                continue
            result = await processor.process(record.value)
            counts[f"{result.ack['op']}{'' if result.ack['ok'] else ' refused'}"] += 1
        size, identities = gallery.size(), len(gallery.identities())
    finally:
        gallery.close()
    set_current_model(settings, model.model_id)
    return {
        "model": model.model_id,
        "identities": identities,
        "embeddings": size,
        **dict(sorted(counts.items())),
    }
