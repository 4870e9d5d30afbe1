"""Which process owns an edge gallery: commands read through a running owner's Ray, and open
the gallery themselves when none runs. A stopped or crashed owner leaves its owner.json
behind; taking it for a running one made ``identities list`` try to join a dead Ray for
minutes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.gallery import OWNER, gallery_folder, set_current_model
from core.settings import Settings
from facestream.gallery_reads import live_owner, owner_ray_address, running_owner

MODEL = "test/model@0"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings().override(gallery__path=tmp_path)
    set_current_model(settings, MODEL)
    gallery_folder(settings, MODEL).mkdir(parents=True)
    return settings


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (a running owner's Ray)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def write_owner(settings: Settings, pid: int, port: int) -> dict:
    owner = {"ray_address": f"127.0.0.1:{port}", "ray_auth_token_path": None, "pid": pid}
    (gallery_folder(settings, MODEL) / OWNER).write_text(json.dumps(owner))
    return owner


def gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_running_owner_is_found_with_its_ray_address(settings: Settings, listening: int) -> None:
    owner = write_owner(settings, os.getpid(), listening)
    assert live_owner(settings, MODEL) == owner == running_owner(settings)
    assert owner_ray_address(settings, MODEL) == f"127.0.0.1:{listening}"


def test_a_stopped_owners_record_is_not_an_owner(settings: Settings, listening: int) -> None:
    write_owner(settings, gone_pid(), listening)  # its process is gone
    assert live_owner(settings, MODEL) is None and running_owner(settings) is None
    assert owner_ray_address(settings, MODEL) is None


def test_an_owner_whose_ray_is_gone_is_not_an_owner(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # bound, never listened on
        write_owner(settings, os.getpid(), nobody)
        assert owner_ray_address(settings, MODEL) is None


def test_no_record_or_a_configured_cluster(settings: Settings) -> None:
    assert owner_ray_address(settings, MODEL) is None
    configured = settings.override(ray__address="10.0.0.1:6379")
    assert owner_ray_address(configured, MODEL) == "10.0.0.1:6379"
