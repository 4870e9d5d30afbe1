"""The topics a deployment needs, and their creation (idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from core.settings import Settings
from core.waiting import Deadline
from streams.security import aiokafka_kwargs

log = logging.getLogger(__name__)


def topic_specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. Enrolments stay on one partition: one ordered log."""
    t = settings.topics
    return {
        t.images: t.images_partitions,
        t.matches: t.images_partitions,
        t.dlq: 1,
        t.enrollments: 1,
        t.enrollment_acks: 1,
        t.audit: 1,
    }


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Enrolment records are keyed by identity and the log is compacted: an erasure's
    tombstone makes the broker drop every earlier record (photos included) of that person."""
    return {settings.topics.enrollments: {"cleanup.policy": "compact"}}


async def ensure_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create missing topics and wait until the broker lists every one of them."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_list,
        **aiokafka_kwargs(settings.kafka.security),
    )
    await admin.start()
    try:
        deadline = Deadline(timeout_s)
        while missing := _missing(topic_specs(settings), set(await admin.list_topics())):
            if deadline.expired:
                raise TimeoutError(f"topics still missing after {timeout_s:.0f}s: {missing}")
            configs = topic_configs(settings)
            new = [
                NewTopic(
                    name, n, settings.topics.replication_factor, topic_configs=configs.get(name)
                )
                for name, n in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(new)
            log.info("creating topics %s", [name for name, _ in missing])
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


def _missing(specs: dict[str, int], existing: set[str]) -> list[tuple[str, int]]:
    return [(name, n) for name, n in specs.items() if name not in existing]
