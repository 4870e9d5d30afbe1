"""The failure taxonomy: transient failures are retried (bounded, with backoff); permanent
ones become an outcome now (a DLQ event, a refused acknowledgement).

Each layer knows its own infrastructure's exceptions and maps them onto these two classes;
an exception nobody classified counts as permanent, so a bug never loops for ever.
"""

from __future__ import annotations


class TransientError(Exception):
    """Worth another try: a connection dropped, an actor restarting, a timeout."""


class PermanentError(Exception):
    """Retrying cannot help: a bad request, a model mismatch, a bug."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)
