"""The topics a deployment needs: their partitions and configs, declared here only; their
creation (idempotent); and the check of an existing topic's config against the declaration.

Why each config (README, "The enrolment log"):

- ``enrollments`` holds *requests* (photos of people who may later be erased, photos that
  were refused): deleted by time, never compacted. ``retention.ms`` + ``segment.ms`` bound
  how long a photo stays on the broker: 23 h + a 1 h segment = gone within 24 h.
- the *state* topic (``<enrollments>.state``) holds one record per ACCEPTED photo, keyed
  ``<identity>/<photo sha256>``, written by the worker: it is what ``facestream reindex``
  replays. Compacted (the last record per key is kept for ever; an erasure's tombstones
  remove the keys), with ``max.compaction.lag.ms`` and ``segment.ms`` bounding how long a
  tombstoned photo may survive (24 h), and ``delete.retention.ms`` how long the tombstones
  themselves (which carry no photo) stay.
- ``audit``: 400 days, explicitly (an accountability record must outlive a year of
  complaints); ``matches``, ``enrollments.acks``, the DLQ: 7 days (consumers' replay window);
  ``images``: 1 day (photos of everyone who passed a camera).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from core.settings import Settings
from core.waiting import Deadline
from streams.security import aiokafka_kwargs

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Upper bound of the time a photo stays on the broker once its request has been applied, or
# once its person has been erased: what the README promises. The configs below meet it.
PHOTO_DEADLINE_MS = DAY_MS
SEGMENT_MS = HOUR_MS  # the active segment is never deleted nor compacted: roll it hourly
AUDIT_RETENTION_MS = 400 * DAY_MS
OUTPUT_RETENTION_MS = 7 * DAY_MS
IMAGES_RETENTION_MS = DAY_MS


def state_topic(settings: Settings) -> str:
    """The compacted topic of accepted photos (the gallery's source of truth)."""
    return settings.topics.state


def topic_specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. The enrolment topics stay on one partition: one ordered log."""
    t = settings.topics
    return {
        t.images: t.images_partitions,
        t.matches: t.images_partitions,
        t.dlq: 1,
        t.enrollments: 1,
        state_topic(settings): 1,
        t.enrollment_acks: 1,
        t.audit: 1,
    }


def _deleted_after(ms: int) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(ms)}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name -> the configs it is created with and checked against (every topic)."""
    t = settings.topics
    return {
        t.images: _deleted_after(IMAGES_RETENTION_MS),
        t.matches: _deleted_after(OUTPUT_RETENTION_MS),
        t.dlq: _deleted_after(OUTPUT_RETENTION_MS),
        t.enrollments: {
            **_deleted_after(PHOTO_DEADLINE_MS - SEGMENT_MS),
            "segment.ms": str(SEGMENT_MS),
        },
        state_topic(settings): {
            "cleanup.policy": "compact",
            "max.compaction.lag.ms": str(PHOTO_DEADLINE_MS - SEGMENT_MS),
            "segment.ms": str(SEGMENT_MS),
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": str(PHOTO_DEADLINE_MS),
        },
        t.enrollment_acks: _deleted_after(OUTPUT_RETENTION_MS),
        t.audit: _deleted_after(AUDIT_RETENTION_MS),
    }


@dataclass(frozen=True)
class Mismatch:
    topic: str
    config: str
    wanted: str
    found: str | None  # None: not reported by the broker (Tansu: not set at creation)
    critical: bool = False  # breaks a promise (the gallery's truth, a retention deadline)

    def __str__(self) -> str:
        found = "unset (broker default)" if self.found is None else repr(self.found)
        return f"topic {self.topic}: {self.config} is {found}, declared {self.wanted!r}"


class TopicConfigError(RuntimeError):
    pass


def compare_configs(
    declared: dict[str, dict[str, str]],
    found: dict[str, dict[str, str]],
    critical: dict[str, set[str]] | None = None,
) -> list[Mismatch]:
    """Every declared config that the broker reports otherwise (or not at all). A differing
    value of a config in ``critical[topic]`` is critical; a config not reported is not (on
    Kafka every config is reported, defaults included, so there it is always a value)."""
    critical = critical or {}
    out = []
    for topic, wanted in declared.items():
        have = found.get(topic, {})
        for name, value in wanted.items():
            if have.get(name) != value:
                bad = have.get(name) is not None and name in critical.get(topic, set())
                out.append(Mismatch(topic, name, value, have.get(name), bad))
    return out


def critical_configs(settings: Settings) -> dict[str, set[str]]:
    """What a wrong value breaks: the enrolment topics' policies and deadlines (the truth
    replayed by reindex, the erasure deadline), the audit topic's policy and retention."""
    t = settings.topics
    return {
        t.enrollments: {"cleanup.policy", "retention.ms"},
        state_topic(settings): {"cleanup.policy", "max.compaction.lag.ms"},
        t.audit: {"cleanup.policy", "retention.ms"},
    }


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> dict[str, dict[str, str]]:
    """Topic -> {config: value} as the broker reports it (Kafka: every config, defaults
    included; Tansu 0.6: the configs the topic was created with)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code:
                continue
            out[name] = {e[0]: e[1] for e in entries if e[1] is not None}
    return out


async def check_topic_configs(
    settings: Settings, admin: AIOKafkaAdminClient, strict: bool = True
) -> list[Mismatch]:
    """Compare every existing topic's config with ``topic_configs``: each mismatch is logged
    as a warning; a critical one (``critical_configs``) raises ``TopicConfigError`` when ``strict``.
    Kafka: fix with ``kafka-configs --alter --entity-type topics --entity-name T
    --add-config K=V`` (the error names them)."""
    declared = topic_configs(settings)
    found = await describe_topic_configs(admin, list(declared))
    mismatches = compare_configs(declared, found, critical_configs(settings))
    for m in mismatches:
        log.warning("%s", m)
    critical = [m for m in mismatches if m.critical]
    if critical and strict:
        fixes = "; ".join(
            f"kafka-configs --alter --entity-type topics --entity-name {m.topic} "
            f"--add-config {m.config}={m.wanted}"
            for m in critical
        )
        raise TopicConfigError(
            "topic configs differ from the declaration (streams/topics.py): "
            + "; ".join(str(m) for m in critical)
            + f". Fix: {fixes}"
        )
    return mismatches


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_list,
        **aiokafka_kwargs(settings.kafka.security),
    )


async def ensure_topics(
    settings: Settings, timeout_s: float = 60.0, strict: bool = True
) -> list[Mismatch]:
    """Create missing topics (with their declared configs), wait until the broker lists
    every one of them, then check the configs of all (see ``check_topic_configs``)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        deadline = Deadline(timeout_s)
        configs = topic_configs(settings)
        while missing := _missing(topic_specs(settings), set(await admin.list_topics())):
            if deadline.expired:
                raise TimeoutError(f"topics still missing after {timeout_s:.0f}s: {missing}")
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
        return await check_topic_configs(settings, admin, strict)
    finally:
        await admin.close()


def _missing(specs: dict[str, int], existing: set[str]) -> list[tuple[str, int]]:
    return [(name, n) for name, n in specs.items() if name not in existing]
