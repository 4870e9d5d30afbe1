"""The failure taxonomy: transient failures are retried (bounded, with backoff); permanent
ones become an outcome now (a DLQ event, a refused acknowledgement).

Each layer knows its own infrastructure's exceptions and maps them onto these two classes;
an exception nobody classified counts as permanent, so a bug never loops for ever.
"""

from __future__ import annotations

import re


class TransientError(Exception):
    """Worth another try: a connection dropped, an actor restarting, a timeout."""


class PermanentError(Exception):
    """Retrying cannot help: a bad request, a model mismatch, a bug."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_MESSAGE_CHARS = 200


def one_line(exc: BaseException) -> str:
    """An exception as one readable line for events people read: its type and the first
    line of its message, colour codes removed, bounded (no traceback, no process ids)."""
    text = _ANSI.sub("", str(exc)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."
