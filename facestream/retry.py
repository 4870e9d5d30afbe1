"""Retry with exponential backoff: one helper for every call that may fail transiently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int | None,
    backoff_s: float,
    max_backoff_s: float = 10.0,
    on_failure: Callable[[Exception], None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds; ``attempts=None`` retries for ever."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Ray and Kafka surface transient failures as many types
            if on_failure is not None:
                on_failure(exc)
            if attempts is not None and attempt >= attempts:
                raise
            delay = min(backoff_s * 2 ** (attempt - 1), max_backoff_s)
            log.warning(
                "%s failed (%s: %s); retry %d in %.1fs",
                what,
                type(exc).__name__,
                exc,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)
