"""Test-only faults, loaded by every Python process whose PYTHONPATH names this folder; they act
only when ``FSTEST_FAULT`` names one and ``FSTEST_FAULT_DIR`` a folder, and only in a model
replica.

Once the test creates ``<folder>/trigger``, the first model replica to reach the fault claims
it (``<folder>/claimed`` holds its pid, created exclusively: exactly one replica):

- ``self-check``: it fails every self-check from then on, as a model whose output drifted;
- ``die-in-call``: it dies in the middle of its next model run (a call it has accepted), as
  a replica whose process is killed.

Every other replica, the replacement included, stays healthy.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_FAULT, _FOLDER = os.environ.get("FSTEST_FAULT"), os.environ.get("FSTEST_FAULT_DIR")
TARGET = "actors.serving"


def _claimed(folder: Path) -> bool:
    """Whether this process is (or now becomes) the faulty replica."""
    claim = folder / "claimed"
    if not (folder / "trigger").exists():
        return False
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return claim.read_text().strip() == str(os.getpid())
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    return True


def _patch(module: ModuleType, folder: Path) -> None:
    if _FAULT == "self-check":
        original = module.SelfCheck.problem

        def problem(self: Any) -> str | None:
            if _claimed(folder):
                return "self-check: injected by the test (the model's output drifted)"
            return original(self)

        module.SelfCheck.problem = problem
    elif _FAULT == "die-in-call":
        analyze = module.FaceModelReplica._analyze

        def dying(self: Any, blobs: list[bytes]) -> Any:
            if _claimed(folder):
                os._exit(1)
            return analyze(self, blobs)

        module.FaceModelReplica._analyze = dying


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``actors.serving`` right after it is first imported (importing it here, in every
    process Ray starts, would load Ray Serve and the models everywhere)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        folder = self.folder

        def exec_module(module: ModuleType) -> None:
            run(module)
            _patch(module, folder)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _FAULT and _FOLDER:
    sys.meta_path.insert(0, _PatchOnImport(Path(_FOLDER)))
