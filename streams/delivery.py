"""Publishing: every record of a batch reaches the broker before its inputs are acknowledged.

Transient failures (the broker away, a leader moving, a timeout) are retried for ever: the
agent waits and acknowledges nothing meanwhile, and a resend after a partial failure only
duplicates outcomes (keyed by image id). A record that can never be published (a permanent
error: too large for the broker, not encodable) is replaced by a small DLQ event under the
same key, so that its input still has exactly one outcome and the partition goes on.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed
from faust.exceptions import ProducerSendError

from core.errors import one_line
from core.events import ImageMeta, dlq_event, encode
from core.imaging import Reason
from core.retry import retry
from core.settings import Settings

log = logging.getLogger(__name__)

Send = tuple[faust.TopicT, str, bytes | None]  # topic, key, value (None: a tombstone)
MAX_KEY_CHARS = 256


def is_transient(exc: BaseException) -> bool:
    """Worth resending: what Kafka marks retriable, timeouts, lost connections."""
    while isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Faust wraps the client's error
    if isinstance(exc, KafkaTimeoutError | ProducerClosed):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    return isinstance(exc, ConnectionError | TimeoutError)


class Delivery:
    def __init__(self, settings: Settings, dlq: faust.TopicT) -> None:
        self.backoff_s = settings.retry.backoff_s
        self.dlq = dlq

    async def __call__(self, sends: list[Send]) -> None:
        try:
            await self._send(sends)
        except Exception as exc:  # permanent: find the records that cannot go, send the rest
            log.error("publishing a batch failed permanently: %s", one_line(exc))
            for send in sends:
                try:
                    await self._send([send])
                except Exception as failed:
                    await self._send([self._replacement(send, failed)])

    async def _send(self, sends: list[Send]) -> None:
        async def send_all() -> None:
            futures = [
                await topic.send(key=key.encode(errors="backslashreplace"), value=value)
                for topic, key, value in sends
            ]
            await asyncio.gather(*futures)

        await retry(
            send_all,
            what="publishing outcomes",
            attempts=None,
            backoff_s=self.backoff_s,
            retry_if=is_transient,
        )

    def _replacement(self, send: Send, exc: Exception) -> Send:
        topic, key, _ = send
        key = key[:MAX_KEY_CHARS]
        log.error("a record for %s can never be published: %s", topic, one_line(exc))
        message = f"the outcome for this input could not be published to {topic}: {one_line(exc)}"
        event = dlq_event(ImageMeta(image_id=key or "unknown"), Reason.PUBLISH_FAILED, message)
        return self.dlq, key, encode(event)
