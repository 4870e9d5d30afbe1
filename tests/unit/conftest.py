"""Unit tests run on defaults: no FACESTREAM_ variable of the caller's shell leaks in."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_facestream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FACESTREAM_"):
            monkeypatch.delenv(name)
