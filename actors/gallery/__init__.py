"""The gallery of enrolled faces: one interface, two Qdrant backends, one gallery per model.

Embeddings of different models are not comparable, so each model id has its own physical
gallery (an engine folder ``<gallery.path>/<model>`` or a server collection
``<gallery.collection>-<model>``), and a pointer names the *current* one: a folder's
``current.json``, or the server alias ``<gallery.collection>``. ``facestream reindex`` builds
the gallery of a new model from the enrolment log, then moves the pointer in one atomic step;
workers still running the old model keep searching the old gallery until they are restarted.
"""

from __future__ import annotations

import json
import re
from typing import Any

from actors.gallery.base import Candidate, Gallery, GalleryError, ModelMismatch

__all__ = [
    "Candidate",
    "Gallery",
    "GalleryError",
    "ModelMismatch",
    "current_model",
    "gallery_folder",
    "model_slug",
    "open_gallery",
    "open_model_gallery",
    "set_current_model",
]


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", model_id).strip("-").lower()


def _server_client(settings: Any) -> Any:
    from actors.gallery.server import make_client

    return make_client(settings.gallery.url, settings.gallery.api_key)


def current_model(settings: Any) -> str | None:
    """The model id of the current gallery (None before the first enrolment)."""
    g = settings.gallery
    if g.backend == "edge":
        pointer = g.path / "current.json"
        return json.loads(pointer.read_text())["model_id"] if pointer.exists() else None
    client = _server_client(settings)
    try:
        for alias in client.get_aliases().aliases:
            if alias.alias_name == g.collection:
                meta = client.get_collection(alias.collection_name).config.metadata or {}
                return meta.get("model_id")
        return None
    finally:
        client.close()


def set_current_model(settings: Any, model_id: str, client: Any = None) -> None:
    """Point the deployment at ``model_id``'s gallery, atomically."""
    g = settings.gallery
    if g.backend == "edge":
        g.path.mkdir(parents=True, exist_ok=True)
        tmp = g.path / ".current.json.tmp"
        tmp.write_text(json.dumps({"model_id": model_id, "folder": model_slug(model_id)}))
        tmp.replace(g.path / "current.json")  # rename: readers see the old or the new pointer
        return
    from qdrant_client import models as qm

    # Reuse an open client when given: qdrant-client's local mode allows one per folder.
    own = client is None
    client = _server_client(settings) if own else client
    try:
        ops: list[Any] = []
        if any(a.alias_name == g.collection for a in client.get_aliases().aliases):
            ops.append(
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=g.collection))
            )
        ops.append(
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(
                    collection_name=f"{g.collection}-{model_slug(model_id)}",
                    alias_name=g.collection,
                )
            )
        )
        client.update_collection_aliases(change_aliases_operations=ops)  # one atomic request
    finally:
        if own:
            client.close()


def open_gallery(
    settings: Any, model_id: str | None, dim: int | None, must_be_current: bool = False
) -> Gallery:
    """``model_id``'s gallery (None: the current one, for reads and deletions).

    ``must_be_current``: refuse when the deployment points at another model's gallery, which
    is what a worker started with a new model, but before ``facestream reindex``, must do.
    """
    current = current_model(settings)
    if model_id is None:
        if current is None:
            raise GalleryError("no gallery yet (nothing has been enrolled)")
        model_id = current
    elif must_be_current and current not in (None, model_id):
        raise ModelMismatch(
            f"the gallery holds embeddings of model {current!r}; this worker runs "
            f"{model_id!r}. Run `facestream reindex` with the new model first."
        )
    gallery = open_model_gallery(settings, model_id, dim)
    if current is None:
        set_current_model(settings, model_id, getattr(gallery, "client", None))
    return gallery


def open_model_gallery(
    settings: Any, model_id: str, dim: int | None, kind: str = "faces"
) -> Gallery:
    """``model_id``'s physical gallery, whether or not it is the current one. ``kind``
    "sightings" is the separate, opt-in store of unknown faces."""
    g = settings.gallery
    name = model_slug(model_id) if kind == "faces" else f"{kind}-{model_slug(model_id)}"
    if g.backend == "server":
        from actors.gallery.server import ServerGallery

        return ServerGallery(g.url, f"{g.collection}-{name}", model_id, dim, api_key=g.api_key)
    from actors.gallery.edge import EdgeGallery

    return EdgeGallery(g.path / name, model_id, dim, hnsw_ef=g.hnsw_ef)


def gallery_folder(settings: Any, model_id: str) -> Any:
    """Where the embedded engine keeps ``model_id``'s gallery."""
    return settings.gallery.path / model_slug(model_id)
