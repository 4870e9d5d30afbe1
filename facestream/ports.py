"""Ports a command is about to listen on: taken ones are a clear error before anything starts."""

from __future__ import annotations

import socket


def in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def taken(wanted: dict[str, tuple[str, int | None]]) -> list[str]:
    """``what -> (host, port)``; the ones already in use, as ``what host:port`` lines."""
    return [
        f"{what} {host}:{port}"
        for what, (host, port) in wanted.items()
        if port is not None and in_use(host, port)
    ]
