"""The topics a deployment needs, and their creation (idempotent)."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from facestream.settings import Settings

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
    }


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_list)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, partitions, settings.topics.replication_factor)
            for name, partitions in topic_specs(settings).items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(new)
            log.info("created topics %s", [n.name for n in new])
    finally:
        await admin.close()
