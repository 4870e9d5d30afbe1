"""Reading the current gallery from a command: through the running deployment's gallery actor
when one owns it, else opened here. Light on purpose (no models, no OpenCV; listing a closed
edge gallery loads neither numpy nor the engine): `identities list` is a command people run
in loops."""

from __future__ import annotations

import json
import os
import sys
from types import TracebackType
from typing import Any

from actors.gallery import (
    OWNER,
    current_generation,
    current_model,
    gallery_folder,
    open_gallery,
)
from actors.gallery.records import RECORDS_FILE, IdentityRecords
from core.settings import Settings


class GalleryReader:
    """The current gallery, for reads: through the running deployment's gallery actor when
    there is one, else opened directly.

    The embedded engine may be opened by one process only, so while a worker runs, its
    gallery actor answers (``facestream identify`` and ``identities`` work while the stack
    is up); with no deployment running, the gallery is opened here.
    """

    def __init__(self, settings: Settings, model_id: str | None = None, dim: int | None = None):
        self.actor = _owner_actor(settings, model_id or current_model(settings))
        self.gallery = None if self.actor is not None else open_gallery(settings, model_id, dim)

    def call(self, method: str, *args: Any) -> Any:
        if self.actor is not None:
            import ray

            return ray.get(self.actor.call.remote(method, *args))
        return getattr(self.gallery, method)(*args)

    def close(self) -> None:
        if self.actor is not None:
            import ray

            ray.shutdown()
        elif self.gallery is not None:
            self.gallery.close()

    def __enter__(self) -> GalleryReader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def ask_gallery(settings: Settings, method: str, *args: Any) -> Any:
    """One read from the current gallery (``identities``, ``show``)."""
    with GalleryReader(settings) as reader:
        return reader.call(method, *args)


def identity_page(
    settings: Settings, limit: int, after: str | None
) -> tuple[list[dict[str, Any]], int]:
    """A page of the current gallery's identities (``limit`` rows after ``after``) and how
    many there are."""
    records = _closed_records(settings)
    if records is None:
        with GalleryReader(settings) as reader:
            return reader.call("identities", limit, after), reader.call("identity_count")
    try:
        return records.page(after, limit), records.count()
    finally:
        records.close()


def _closed_records(settings: Settings) -> IdentityRecords | None:
    """The current edge gallery's identity records, read here when no deployment owns the
    gallery. None when they must be read through the gallery itself: an owner serves it, the
    cluster is configured, or there are no records yet (opening a gallery made before them
    writes them; opening a missing one says so)."""
    if settings.gallery.backend != "edge" or settings.ray.address:
        return None
    current = current_generation(settings)
    if current is None or live_owner(settings, current.model_id, current.number) is not None:
        return None
    path = gallery_folder(settings, current.model_id, current.number) / RECORDS_FILE
    return IdentityRecords(path) if path.is_file() else None


def live_owner(settings: Settings, model_id: str, number: int | None = None) -> dict | None:
    """The record (owner.json, written by the gallery actor) of the process that owns
    ``model_id``'s edge gallery (generation ``number``; None: the current one), if that
    process still runs and its Ray answers. A stopped or crashed owner leaves its record
    behind, and joining its Ray address would hang for minutes: such an owner is none."""
    if settings.gallery.backend != "edge":
        return None
    from facestream.ports import in_use

    try:
        owner = json.loads((gallery_folder(settings, model_id, number) / OWNER).read_text())
    except (OSError, ValueError):
        return None
    host, _, port = str(owner.get("ray_address", "")).rpartition(":")
    alive = _process_exists(int(owner.get("pid", -1)))
    return owner if alive and port.isdigit() and in_use(host, int(port)) else None


def _process_exists(pid: int) -> bool:
    """Signal 0 checks a pid without psutil (~7 ms of import in a command run in loops)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def running_owner(settings: Settings) -> dict[str, Any] | None:
    """The live owner of the current edge gallery, if any: a second deployment must not open
    it too (an owner whose Ray is gone is exiting: its worker just crashed, and the restarted
    worker must not be refused)."""
    from actors.gallery import current_generation

    current = None if settings.gallery.backend != "edge" else current_generation(settings)
    return None if current is None else live_owner(settings, current.model_id, current.number)


def owner_ray_address(settings: Settings, model_id: str, number: int | None = None) -> str | None:
    """The Ray cluster to reach ``model_id``'s gallery owner through: the configured one,
    else the live owner's local Ray (None: no owner runs; the gallery can be opened here).
    Sets Ray's token-auth variables from the owner's record, which Ray reads when it is
    first imported: call it before that."""
    if settings.ray.address:
        return settings.ray.address
    owner = live_owner(settings, model_id, number)
    if owner is None:
        return None
    # Ray token auth (on by default): the owner's token file, else Ray's default one.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if owner.get("ray_auth_token_path"):
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", owner["ray_auth_token_path"])
    return owner["ray_address"]


def join_deployment_ray(settings: Settings, model_id: str | None) -> bool:
    """Connect to the deployment's Ray cluster: the configured one, else the local Ray of the
    worker that owns ``model_id``'s edge gallery. False when none answers."""
    if model_id is None and not settings.ray.address:
        return False
    address = owner_ray_address(settings, model_id or "")  # before importing ray
    if address is None:
        return False
    from actors.cluster import join_ray

    return join_ray(settings, address)


def _owner_actor(settings: Settings, model_id: str | None) -> Any:
    """The running deployment's gallery actor, connected to; None when there is none."""
    if model_id is None or not join_deployment_ray(settings, model_id):
        return None  # no owner, or it is gone: the gallery can be opened directly
    import ray

    from actors.cluster import find_gallery

    try:
        return find_gallery(settings, model_id)
    except ValueError:
        print("no running deployment found in Ray; reading the gallery directly", file=sys.stderr)
        ray.shutdown()
        return None
