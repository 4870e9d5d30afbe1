"""Delivery latency through Tansu against the consumer's ``fetch_max_wait_ms``.

    python -m bench.tansu_fetch [--messages 25] [--waits 1500,1000,500,100,20]

One broker, one producer, one consumer, one small message at a time at random intervals:
latency = message sent (acknowledged) -> the consumer has it. Apache Kafka answers a waiting
fetch as soon as data arrives, so there the wait setting hardly matters; this shows what it
costs on Tansu, where Faust's consumer (which hard-codes 1500 ms) feeds the pipeline.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import bench_parser, describe_machine, emit_json, percentiles, print_table
from facestream.embedded import TansuBroker, free_port

TOPIC, PARTITIONS = "fetch-wait", 4


async def trial(bootstrap: str, wait_ms: int, messages: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
    )
    await consumer.start()
    parts = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=1)
    await producer.start()
    latencies = []
    try:
        for i in range(messages):
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            sent = time.monotonic()
            await producer.send_and_wait(TOPIC, b"x" * 1000, partition=i % PARTITIONS)
            while not await consumer.getmany(timeout_ms=5000):
                pass
            latencies.append((time.monotonic() - sent) * 1000)
    finally:
        await producer.stop()
        await consumer.stop()
    return latencies


async def create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--waits", default="1500,1000,500,100,20")
    args = parser.parse_args(argv)
    info = describe_machine()

    run_dir = Path(tempfile.mkdtemp(prefix="fsbench-tansu-"))
    port = free_port()
    broker = TansuBroker(port, run_dir / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    results: dict[int, dict[str, float]] = {}
    try:
        asyncio.run(create_topic(bootstrap))
        for wait_ms in (int(w) for w in args.waits.split(",")):
            results[wait_ms] = percentiles(asyncio.run(trial(bootstrap, wait_ms, args.messages, 0)))
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print_table(
        f"Tansu: send -> consumed, {args.messages} messages at random 0.05-1 s intervals",
        ["fetch_max_wait_ms", "p50 ms", "p95 ms", "max ms"],
        [[w, r["p50"], r["p95"], r["max"]] for w, r in results.items()],
    )
    emit_json("tansu_fetch", {"machine": info, "latency_ms": results})


if __name__ == "__main__":
    main()
