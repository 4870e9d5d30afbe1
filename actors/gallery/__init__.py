"""The gallery of enrolled faces: one interface, two Qdrant backends, galleries by generation.

Embeddings of different models are not comparable, so each model id has its own physical
galleries, and each rebuild (``facestream reindex``, also with the same model) makes a new
*generation* beside the live one instead of touching it. A generation is named
``<model slug>`` (generation 0) or ``<model slug>--g<N>``: an engine folder
``<gallery.path>/<name>`` or a server collection ``<gallery.collection>-<name>``. A pointer
names the *current* generation: a folder's ``current.json`` (model id and generation), or the
server alias ``<gallery.collection>``. Reindex moves it in one atomic step (rename, alias
swap); a worker's gallery actor then follows it to the new generation of its model, while
workers still running an older model keep searching their gallery until they are restarted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.gallery.errors import GalleryError, ModelMismatch

if TYPE_CHECKING:
    from actors.gallery.base import Candidate, Gallery

__all__ = [
    "Candidate",
    "Gallery",
    "GalleryError",
    "Generation",
    "ModelMismatch",
    "current_generation",
    "current_model",
    "drop_gallery",
    "gallery_exists",
    "gallery_folder",
    "generations",
    "holder",
    "mark_building",
    "model_slug",
    "open_gallery",
    "open_model_gallery",
    "set_current",
    "set_current_model",
]

POINTER = "current.json"
META = "gallery.json"  # written by the edge engine in every gallery folder
OWNER = "owner.json"  # the gallery actor serving a folder (actors.deployment)
BUILDER = "reindex.json"  # the reindex building a folder (facestream.reindex)
_SEP = "--g"  # a slug never holds two hyphens in a row, so the suffix cannot be ambiguous
SIGHTINGS_PREFIX = "sightings-"


def __getattr__(name: str) -> Any:
    """The interface (``Gallery``, ``Candidate``) loads on first use: it brings numpy, which
    reading a closed gallery's identity records needs not (``facestream.gallery_reads``)."""
    if name in ("Candidate", "Gallery"):
        from actors.gallery import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", model_id).strip("-").lower()


@dataclass(frozen=True, order=True)
class Generation:
    model_id: str
    number: int = 0

    @property
    def name(self) -> str:
        slug = model_slug(self.model_id)
        return slug if self.number == 0 else f"{slug}{_SEP}{self.number}"

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "generation": self.number, "name": self.name}


def _number(name: str) -> int:
    """The generation number in a gallery's name (0: none)."""
    _, sep, tail = name.rpartition(_SEP)
    return int(tail) if sep and tail.isdigit() else 0


def _server_client(settings: Any) -> Any:
    from actors.gallery.server import make_client

    return make_client(settings.gallery.url, settings.gallery.api_key)


def _collection(settings: Any, generation: Generation) -> str:
    return f"{settings.gallery.collection}-{generation.name}"


def current_generation(settings: Any, client: Any = None) -> Generation | None:
    """The generation the pointer names (None before the first enrolment). ``client``: an
    open server client to reuse (qdrant-client's local mode allows one per folder)."""
    g = settings.gallery
    if g.backend == "edge":
        pointer = g.path / POINTER
        if not pointer.exists():
            return None
        doc = json.loads(pointer.read_text())
        return Generation(doc["model_id"], int(doc.get("generation", 0)))
    own = client is None
    client = _server_client(settings) if own else client
    try:
        for alias in client.get_aliases().aliases:
            if alias.alias_name == g.collection:
                meta = client.get_collection(alias.collection_name).config.metadata or {}
                model_id = meta.get("model_id")
                return (
                    None
                    if model_id is None
                    else Generation(model_id, _number(alias.collection_name))
                )
        return None
    finally:
        if own:
            client.close()


def current_model(settings: Any) -> str | None:
    """The model id of the current gallery (None before the first enrolment)."""
    current = current_generation(settings)
    return None if current is None else current.model_id


def set_current(settings: Any, generation: Generation, client: Any = None) -> None:
    """Point the deployment at ``generation``, atomically."""
    g = settings.gallery
    if g.backend == "edge":
        g.path.mkdir(parents=True, exist_ok=True)
        tmp = g.path / f".{POINTER}.tmp"
        doc = {"model_id": generation.model_id, "generation": generation.number,
               "folder": generation.name}  # fmt: skip
        tmp.write_text(json.dumps(doc))
        tmp.replace(g.path / POINTER)  # rename: readers see the old or the new pointer
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
                    collection_name=_collection(settings, generation), alias_name=g.collection
                )
            )
        )
        client.update_collection_aliases(change_aliases_operations=ops)  # one atomic request
    finally:
        if own:
            client.close()


def set_current_model(
    settings: Any, model_id: str, client: Any = None, generation: int = 0
) -> None:
    """Point the deployment at ``model_id``'s gallery (its generation ``generation``)."""
    set_current(settings, Generation(model_id, generation), client)


def gallery_exists(settings: Any, generation: Generation) -> bool:
    """Whether ``generation``'s gallery exists here (its folder on this node's disk, or its
    server collection)."""
    if settings.gallery.backend == "edge":
        return (settings.gallery.path / generation.name / META).exists()
    client = _server_client(settings)
    try:
        return bool(client.collection_exists(_collection(settings, generation)))
    finally:
        client.close()


def generations(settings: Any) -> list[Generation]:
    """Every generation of every model whose gallery exists (on this node, for the edge
    engine), in name order."""
    g = settings.gallery
    found: list[Generation] = []
    if g.backend == "edge":
        if not g.path.is_dir():
            return []
        for child in sorted(g.path.iterdir()):
            meta = child / META
            if child.name.startswith(SIGHTINGS_PREFIX) or not meta.is_file():
                continue
            model_id = json.loads(meta.read_text()).get("model_id")
            if model_id and Generation(model_id, _number(child.name)).name == child.name:
                found.append(Generation(model_id, _number(child.name)))
        return found
    from actors.gallery.server import RECORDS_SUFFIX

    prefix = f"{g.collection}-"
    client = _server_client(settings)
    try:
        for c in sorted(client.get_collections().collections, key=lambda c: c.name):
            name = c.name.removeprefix(prefix)
            if (
                not c.name.startswith(prefix)
                or name.startswith(SIGHTINGS_PREFIX)
                or c.name.endswith(RECORDS_SUFFIX)
            ):
                continue
            model_id = (client.get_collection(c.name).config.metadata or {}).get("model_id")
            if model_id and Generation(model_id, _number(name)).name == name:
                found.append(Generation(model_id, _number(name)))
        return found
    finally:
        client.close()


def holder(settings: Any, generation: Generation) -> dict[str, Any] | None:
    """The live process on this host that holds ``generation``'s edge folder open (a
    reindex building it, or its gallery actor), if any. Another process must not open it:
    the engine allows one, and opening it tidies folders the holder may be writing."""
    if settings.gallery.backend != "edge":
        return None
    import os
    import socket

    folder = settings.gallery.path / generation.name
    for name in (BUILDER, OWNER):
        file = folder / name
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("hostname", socket.gethostname()) != socket.gethostname():
            return doc  # another machine's process: assume it is alive
        try:
            os.kill(int(doc["pid"]), 0)
        except (KeyError, ValueError, ProcessLookupError):
            continue
        except PermissionError:
            return doc
        if doc.get("pid") != os.getpid():
            return {**doc, "role": "reindex" if name == BUILDER else "owner"}
    return None


def mark_building(settings: Any, generation: Generation, building: bool) -> None:
    """Record (or clear) that this process builds ``generation`` (see ``holder``)."""
    if settings.gallery.backend != "edge":
        return
    import os
    import socket

    file = settings.gallery.path / generation.name / BUILDER
    if building:
        file.write_text(json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}))
    else:
        file.unlink(missing_ok=True)


def open_gallery(
    settings: Any, model_id: str | None, dim: int | None, must_be_current: bool = False
) -> Gallery:
    """The current generation of ``model_id``'s gallery (None: the current gallery, for reads
    and deletions); generation 0 of a model that is not the current one.

    ``must_be_current``: refuse when the deployment points at another model's gallery, which
    is what a worker started with a new model, but before ``facestream reindex``, must do.

    Never creates an empty gallery in place of the current one: when the pointer names a
    generation that is not here (the edge engine's folder is on another node's disk, or was
    removed), ``GalleryError``. Only the very first gallery is created here (and pointed at).
    """
    current = current_generation(settings)
    if model_id is None:
        if current is None:
            raise GalleryError("no gallery yet (nothing has been enrolled)")
        model_id = current.model_id
    elif must_be_current and current is not None and current.model_id != model_id:
        raise ModelMismatch(
            f"the gallery holds embeddings of model {current.model_id!r}; this worker runs "
            f"{model_id!r}. Run `facestream reindex` with the new model first."
        )
    if current is not None and current.model_id == model_id:
        generation = current
        if not gallery_exists(settings, generation):
            where = (
                settings.gallery.path / generation.name
                if settings.gallery.backend == "edge"
                else _collection(settings, generation)
            )
            raise GalleryError(
                f"the current gallery {where} does not exist here (the edge engine's folder "
                "is on the disk of the node that created it): refusing to serve an empty "
                "gallery in its place"
            )
    else:
        generation = Generation(model_id, 0)
    gallery = open_model_gallery(settings, model_id, dim, generation=generation.number)
    if current is None:
        set_current(settings, generation, getattr(gallery, "client", None))
    return gallery


def open_model_gallery(
    settings: Any, model_id: str, dim: int | None, kind: str = "faces", generation: int = 0
) -> Gallery:
    """Generation ``generation`` of ``model_id``'s physical gallery, whether or not it is the
    current one (created when missing). ``kind`` "sightings" is the separate, opt-in store
    of unknown faces (one per model, never rebuilt)."""
    g = settings.gallery
    gen = Generation(model_id, generation)
    name = gen.name if kind == "faces" else f"{kind}-{model_slug(model_id)}"
    if g.backend == "server":
        from actors.gallery.server import ServerGallery

        return ServerGallery(
            g.url, f"{g.collection}-{name}", model_id, dim, api_key=g.api_key, options=g
        )
    from actors.gallery.edge import EdgeGallery

    return EdgeGallery(g.path / name, model_id, dim, hnsw_ef=g.hnsw_ef, options=g)


def gallery_folder(settings: Any, model_id: str, generation: int | None = None) -> Path:
    """Where the embedded engine keeps ``model_id``'s gallery: generation ``generation``, or
    (None) the current generation when the pointer names this model, else generation 0."""
    if generation is None:
        current = current_generation(settings)
        generation = current.number if current and current.model_id == model_id else 0
    return settings.gallery.path / Generation(model_id, generation).name


def drop_gallery(settings: Any, generation: Generation) -> None:
    """Remove ``generation``'s gallery; refused for the current one."""
    if generation == current_generation(settings):
        raise GalleryError(f"{generation.name} is the current gallery: never dropped")
    if settings.gallery.backend == "edge":
        import shutil

        shutil.rmtree(settings.gallery.path / generation.name, ignore_errors=True)
        return
    from actors.gallery.server import records_collection

    client = _server_client(settings)
    try:
        name = _collection(settings, generation)
        for collection in (name, records_collection(name)):
            if client.collection_exists(collection):
                client.delete_collection(collection)
    finally:
        client.close()
