"""Retries with exponential backoff and jitter (tenacity), one policy for every call."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from core.errors import PermanentError

T = TypeVar("T")
log = logging.getLogger(__name__)


def _not_permanent(exc: BaseException) -> bool:
    return not isinstance(exc, PermanentError)


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int | None,
    backoff_s: float,
    max_backoff_s: float = 10.0,
    on_failure: Callable[[Exception], None] | None = None,
    retry_if: Callable[[BaseException], bool] = _not_permanent,
) -> T:
    """Await ``call()`` until it succeeds; ``attempts=None`` retries for ever. An exception
    for which ``retry_if`` is false is raised at once."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (%s: %s); retry %d in %.1fs",
            what,
            type(exc).__name__,
            exc,
            state.attempt_number,
            state.upcoming_sleep,
        )

    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts) if attempts else stop_never,
        wait=wait_exponential_jitter(initial=backoff_s, max=max_backoff_s, jitter=backoff_s),
        retry=retry_if_exception(retry_if),
        before_sleep=log_retry,
        reraise=True,
    ):
        with attempt:
            try:
                return await call()
            except Exception as exc:
                if on_failure is not None:
                    on_failure(exc)
                raise
    raise AssertionError("unreachable: tenacity either returns or re-raises")
