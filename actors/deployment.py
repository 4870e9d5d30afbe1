"""The gallery's owner, a Ray actor (the model tier is a Serve application: ``actors.serving``).

The gallery actor is a singleton because the embedded engine may be opened by one process
only: a Serve deployment would add nothing that one pinned actor lacks. How workers find it:
``actors.cluster``; how they call it: ``actors.compute``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from actors.gallery import (
    OWNER,
    GalleryError,
    Generation,
    current_generation,
    gallery_exists,
    generations,
    holder,
    model_slug,
    open_gallery,
    open_model_gallery,
)
from actors.gallery.sightings import Sightings
from core.buckets import STAGE_BUCKETS
from core.concurrency import ReadWriteLock
from core.errors import TransientError, one_line
from core.settings import Settings

log = logging.getLogger(__name__)

# What workers may call on the gallery owner: the Gallery's public methods, and the
# sightings store's under a "sightings." prefix.
GALLERY_METHODS = frozenset(
    {
        "search",
        "add",
        "add_many",
        "show",
        "delete",
        "identities",
        "identity_count",
        "index_status",
        "size",
    }
)
SIGHTINGS_METHODS = frozenset({"record", "search", "purge", "size"})


def stage_histogram() -> Any:
    """Actor-side stage timings, exported by the Ray node as ray_facestream_actor_stage_seconds."""
    from ray.util.metrics import Histogram

    return Histogram(
        "facestream_actor_stage_seconds",
        "Time per batch in each actor stage",
        boundaries=list(STAGE_BUCKETS),
        tag_keys=("stage",),
    )


def placement() -> dict[str, Any]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# Gallery methods that write: refused (for a retry) while fenced, or while the pointer names
# another model's gallery.
WRITE_METHODS = frozenset({"add", "add_many", "delete"})
# How stale the actor's view of the pointer may be for reads (writes always read it afresh).
POINTER_CHECK_S = 1.0
# Where the edge gallery's owner runs, recorded in the gallery folder (all generations of a
# deployment share the folder, so they share the node) and in Ray's key-value store.
PLACEMENT_FILE = "placement.json"


def gallery_actor_name(settings: Settings, model_id: str) -> str:
    """One gallery actor per model: during a model change both models' actors run side by
    side; a rebuild of the same model (a new generation) is taken over by the same actor."""
    return f"{settings.kafka.app_id}-gallery-{model_slug(model_id)}"


def placement_key(settings: Settings) -> bytes:
    return f"facestream/{settings.kafka.app_id}/gallery-placement".encode()


@ray.remote
class GalleryActor:
    """The owner of the current generation of its model's gallery (and of the sightings
    store, when that is on).

    - It follows the pointer (``actors.gallery``): when ``facestream reindex`` points at a
      new generation of its model, it opens that one and closes the old (reads check the
      pointer at most every ``POINTER_CHECK_S``, writes at each call). When the pointer names
      another model, it keeps serving searches, but refuses writes with a ``TransientError``
      (the worker retries: enrolments wait for a worker of the new model).
    - ``fence(lease_s)``: writes are refused (transiently) until ``unfence`` or the lease
      ends, so a reindex can catch up with the state topic and move the pointer without a
      write slipping into the old generation. Searches go on.
    - ``show`` and ``delete`` reach every generation of every model (an erasure leaves no
      generation holding the person): the others through their owner actor when one runs,
      else opened here; one that another process holds (a reindex building it) applies the
      erasure itself, from the state topic's tombstones. ``delete`` also removes the
      sightings that match the person's photos (``_erase_sightings``).

    Its settings arrive without secrets (``Settings.without_secrets()``): the Qdrant API key
    of the server backend is read from this process's environment,
    ``FACESTREAM_GALLERY__API_KEY``, so every Ray node that may host the actor must be started
    with it (a local Ray started by the worker inherits the worker's environment).
    """

    def __init__(self, settings: Settings, model_id: str, dim: int) -> None:
        settings = settings.with_env_secrets()
        self.settings, self.model_id, self.dim = settings, model_id, dim
        self._rw = ReadWriteLock()
        self._writes = threading.RLock()  # one write (or fence, or switch) at a time
        self._fenced_until = 0.0
        self._fence_token: str | None = None
        self.gallery = open_gallery(settings, model_id, dim, must_be_current=True)
        client = getattr(self.gallery, "client", None)  # local mode: one client per folder
        self.generation = current_generation(settings, client) or Generation(model_id)
        self._checked_at = time.monotonic()
        self.sightings = Sightings(settings, model_id, dim) if settings.sightings.enabled else None
        self.stage = stage_histogram()
        self._record_owner()

    # -- where it runs ---------------------------------------------------------------------

    def _record_owner(self) -> None:
        if self.settings.gallery.backend != "edge":
            return
        node = _node()
        # Tells CLI processes, which may not open the shard, where its owner runs.
        owner = {
            "ray_address": ray.get_runtime_context().gcs_address,
            "ray_auth_token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
            "pid": os.getpid(),
            **node,
        }
        folder = self.settings.gallery.path / self.generation.name
        (folder / OWNER).write_text(json.dumps(owner))
        # The disk that holds the gallery is this node's: the actor is pinned here from now on
        # (actors.cluster), never restarted elsewhere on an empty folder.
        record = json.dumps({**node, "path": str(self.settings.gallery.path)})
        _write_atomic(self.settings.gallery.path / PLACEMENT_FILE, record)
        with contextlib.suppress(Exception):  # the file is the record; the store a shortcut
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(placement_key(self.settings), record.encode(), True)

    # -- generations -----------------------------------------------------------------------

    def _follow_pointer(self, max_age_s: float) -> Generation | None:
        """Re-read the pointer (when older than ``max_age_s``); switch to a new generation of
        this model. Returns the current generation (None: no pointer)."""
        now = time.monotonic()
        if now - self._checked_at < max_age_s:
            return self.generation
        self._checked_at = now
        try:
            current = current_generation(self.settings, getattr(self.gallery, "client", None))
        except Exception as exc:  # the pointer unreadable for a moment: keep serving
            log.error("reading the gallery pointer failed: %s", one_line(exc))
            return self.generation
        if current is None or current == self.generation or current.model_id != self.model_id:
            return current
        with self._writes:
            if current == self.generation:
                return current
            if not gallery_exists(self.settings, current):
                log.error("the pointer names %s, which is not here: still serving %s",
                          current.name, self.generation.name)  # fmt: skip
                return current
            new = open_model_gallery(
                self.settings, self.model_id, self.dim, generation=current.number
            )
            with self._rw.write():
                old, self.gallery, self.generation = self.gallery, new, current
            old.close()
            self._record_owner()
            log.info("serving gallery generation %s", current.name)
        return current

    def _check_writable(self) -> None:
        if time.monotonic() < self._fenced_until:
            raise TransientError("gallery writes are fenced: a reindex is switching generations")
        current = self._follow_pointer(0.0)
        if current is not None and current.model_id != self.model_id:
            raise TransientError(
                f"the current gallery is {current.name} (model {current.model_id}); this "
                f"worker's model is {self.model_id}: writes wait for a worker of that model"
            )

    def _others(self) -> list[Generation]:
        return [g for g in generations(self.settings) if g != self.generation]

    def _held_elsewhere(self, generation: Generation) -> bool:
        """Held open by a reindex (it applies erasures from the state topic itself)."""
        doc = holder(self.settings, generation)
        return doc is not None and doc.get("role") == "reindex"

    def _on_generation(self, generation: Generation, method: str, *args: Any) -> Any:
        """``method`` (``show`` or ``delete``) on another generation: through its owner actor
        when one serves it, else opened here. Raises GalleryError when neither can."""
        if generation.model_id != self.model_id:
            with contextlib.suppress(ValueError):  # no such actor
                owner = ray.get_actor(
                    gallery_actor_name(self.settings, generation.model_id),
                    namespace=self.settings.ray.namespace,
                )
                with contextlib.suppress(GalleryError):
                    return ray.get(owner.own.remote(generation.number, method, *args), timeout=60)
        if (doc := holder(self.settings, generation)) is not None:
            raise GalleryError(f"held by process {doc.get('pid')} ({doc.get('role')})")
        gallery = open_model_gallery(
            self.settings, generation.model_id, None, generation=generation.number
        )
        try:
            return getattr(gallery, method)(*args)
        finally:
            gallery.close()

    def _everywhere(self, method: str, identity: str) -> list[tuple[Generation, Any]]:
        out: list[tuple[Generation, Any]] = [
            (self.generation, getattr(self.gallery, method)(identity))
        ]
        for generation in self._others():
            if self._held_elsewhere(generation):
                log.info("gallery %s: a reindex builds it; it applies the change", generation.name)
                continue
            for attempt in range(2):  # a folder just released may take a moment to open
                try:
                    out.append((generation, self._on_generation(generation, method, identity)))
                    break
                except Exception as exc:  # a process holds it (a reindex: it applies it too)
                    if attempt:
                        log.error(
                            "gallery %s: %s skipped: %s", generation.name, method, one_line(exc)
                        )
                    time.sleep(0.5)
        return out

    def _show(self, identity: str) -> list[dict[str, Any]]:
        rows = []
        for generation, found in self._everywhere("show", identity):
            current = generation == self.generation
            rows += [{**p, "gallery": generation.name, "current": current} for p in found]
        return rows

    def _erase_sightings(self, identity: str) -> int:
        """The sightings that match one of ``identity``'s photos at the match threshold: they
        may be the person's face seen before the enrolment. Runs before the gallery deletes
        the person, since their vectors are the only way to find these (and a retried
        erasure then finds them again); until that deletion their face is matched, never
        kept as a sighting. Returns how many were removed."""
        if self.sightings is None:
            return 0
        removed = self.sightings.erase_near(
            self.gallery.vectors(identity), self.settings.matching.threshold
        )
        if removed:  # a count only: identities stay out of the logs
            log.info("erasure: %d sighting(s) removed with the person", removed)
        return removed

    def _delete(self, identity: str) -> int:
        self._erase_sightings(identity)
        return sum(removed for _, removed in self._everywhere("delete", identity))

    # -- what workers and tools call -------------------------------------------------------

    def call(self, method: str, *args: Any) -> Any:
        """``method`` of the gallery (or ``sightings.<method>``); searches are timed."""
        store, _, name = method.rpartition(".")
        if store == "sightings":
            if name not in SIGHTINGS_METHODS:
                raise AttributeError(f"no sightings method {name!r}")
            if self.sightings is None:  # opt-in store switched off: nothing kept, nothing found
                return 0 if name != "search" else []
            return getattr(self.sightings, name)(*args)
        if store or name not in GALLERY_METHODS:
            raise AttributeError(f"no gallery method {method!r}")
        if name in WRITE_METHODS:
            with self._writes:
                self._check_writable()
                with self._rw.read():
                    return (
                        self._delete(*args)
                        if name == "delete"
                        else getattr(self.gallery, name)(*args)
                    )
        self._follow_pointer(POINTER_CHECK_S)
        with self._rw.read():
            if name == "show":
                return self._show(*args)
            started = time.perf_counter()
            result = getattr(self.gallery, name)(*args)
            if name == "search":
                self.stage.observe(time.perf_counter() - started, tags={"stage": "gallery_search"})
            return result

    def own(self, generation: int, method: str, *args: Any) -> Any:
        """``show`` or ``delete`` on this actor's own gallery only, when it serves generation
        ``generation`` (another gallery actor's erasure reaching every generation)."""
        if method not in ("show", "delete"):
            raise AttributeError(f"no gallery method {method!r}")
        with self._writes if method == "delete" else contextlib.nullcontext():
            if generation != self.generation.number:
                raise GalleryError(f"this actor serves {self.generation.name}")
            with self._rw.read():
                if method == "delete":  # this model's sightings are this actor's
                    self._erase_sightings(*args)
                return getattr(self.gallery, method)(*args)

    def fence(self, lease_s: float, token: str) -> dict[str, Any]:
        """Refuse writes for ``lease_s`` (renewable with the same ``token``); returns once no
        write is in progress."""
        with self._writes:
            self._fenced_until = time.monotonic() + lease_s
            self._fence_token = token
        return self.info()

    def unfence(self, token: str) -> bool:
        with self._writes:
            if self._fence_token != token:
                return False
            self._fenced_until, self._fence_token = 0.0, None
            self._checked_at = 0.0  # the pointer may have moved: look at once
            return True

    def info(self) -> dict[str, Any]:
        with self._rw.read():
            return {
                "backend": self.gallery.backend,
                "model_id": self.gallery.model_id,
                "generation": self.generation.as_dict(),
                "size": self.gallery.size(),
                "fenced": time.monotonic() < self._fenced_until,
                **placement(),
            }


def _node() -> dict[str, Any]:
    """This node: its Ray id (changes when Ray restarts), address and host name (do not)."""
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
    }


def _write_atomic(path: Any, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
