"""Waiting on a condition with a deadline: one helper instead of hand-rolled loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """A point in monotonic time, ``timeout_s`` from now."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    @property
    def remaining_s(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


def wait_until(
    condition: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> T:
    """Poll ``condition()`` until it returns something truthy, and return that; raise
    ``TimeoutError`` naming ``what`` when ``timeout_s`` passes first."""
    deadline = Deadline(timeout_s)
    while not (result := condition()):
        if deadline.expired:
            raise TimeoutError(f"{what}: not after {timeout_s:g}s")
        time.sleep(interval_s)
    return result


async def wait_until_async(
    condition: Callable[[], Awaitable[T]], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> T:
    """``wait_until`` for an awaitable condition."""
    deadline = Deadline(timeout_s)
    while not (result := await condition()):
        if deadline.expired:
            raise TimeoutError(f"{what}: not after {timeout_s:g}s")
        await asyncio.sleep(interval_s)
    return result
