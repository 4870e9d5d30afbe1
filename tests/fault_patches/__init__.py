"""Faults injected into a stack's model replicas (``sitecustomize.py`` here: what each does)."""

from __future__ import annotations

import os
from pathlib import Path

PATCHES = Path(__file__).resolve().parent


def fault_env(fault: str, folder: Path) -> dict[str, str]:
    """The environment that arms ``fault`` for the processes of a worker's local Ray: the
    test triggers it by creating ``folder / "trigger"``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(PATCHES), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FSTEST_FAULT": fault, "FSTEST_FAULT_DIR": str(folder)}
