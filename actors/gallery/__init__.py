"""The gallery of enrolled faces: one interface, two Qdrant backends."""

from actors.gallery.base import Candidate, Gallery, GalleryError, ModelMismatch


def open_gallery(settings, model_id: str | None, dim: int | None) -> Gallery:
    """The configured backend, bound to ``model_id`` (None: adopt the stored model)."""
    g = settings.gallery
    if g.backend == "server":
        from actors.gallery.server import ServerGallery

        return ServerGallery(g.url, g.collection, model_id, dim, api_key=g.api_key)
    from actors.gallery.edge import EdgeGallery

    return EdgeGallery(g.path, model_id, dim, hnsw_ef=g.hnsw_ef)


__all__ = ["Candidate", "Gallery", "GalleryError", "ModelMismatch", "open_gallery"]
