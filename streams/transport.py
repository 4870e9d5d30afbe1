"""Faust's aiokafka transport with the consumer settings Faust does not expose.

Faust 0.15 creates its worker consumer with ``fetch_max_wait_ms=1500`` hard-coded. On
Apache Kafka that only bounds an idle fetch (the broker answers as soon as data arrives);
Tansu holds every fetch for the whole wait, which put ~1.5 s into each image's latency. This
transport sets the profile's ``kafka.tuning.fetch_max_wait_ms`` on the consumer Faust
builds, before it starts. It is installed through Faust's public ``app.transport`` setter.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts: still in time here.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class TunedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TunedTransport(faust_aiokafka.Transport):
    Consumer = TunedConsumer

    def __init__(self, url: Any, app: faust.App, *, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    app.transport = TunedTransport(
        app.conf.broker_consumer, app, fetch_max_wait_ms=fetch_max_wait_ms
    )
