"""Bench-only experiment, loaded by every Python process of a bench stack whose PYTHONPATH
names this folder; it acts only in the facestream worker and only when asked to.

``FSBENCH_FETCH_MAX_WAIT_MS=N`` caps the Kafka fetch wait of the worker's consumers. Faust
hard-codes ``fetch_max_wait_ms=1500`` for its consumer; Apache Kafka answers a waiting fetch
as soon as data arrives, but Tansu lets it run on, which adds that wait to the latency.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

_CAP = os.environ.get("FSBENCH_FETCH_MAX_WAIT_MS")

if _CAP and sys.argv[-1:] == ["worker"]:  # ``python -m facestream.cli worker``
    import aiokafka

    _original_init = aiokafka.AIOKafkaConsumer.__init__

    @functools.wraps(_original_init)
    def _capped_init(self: aiokafka.AIOKafkaConsumer, *args: Any, **kwargs: Any) -> None:
        kwargs["fetch_max_wait_ms"] = min(int(_CAP), kwargs.get("fetch_max_wait_ms", 500))
        _original_init(self, *args, **kwargs)

    aiokafka.AIOKafkaConsumer.__init__ = _capped_init
