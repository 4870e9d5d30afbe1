"""Run the ``facestream`` CLI as a user does: a child process with the stack's settings."""

from __future__ import annotations

import os
import subprocess
import sys

from core.settings import Settings


def run_cli(
    settings: Settings, *args: str, extra_env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facestream.cli", *args],
        env={**os.environ, **settings.env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
