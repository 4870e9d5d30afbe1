"""The ports a local stack chooses for its own listeners (broker, metrics, Ray's metrics)
are free when chosen and bound by their process only seconds later. A bind to port 0 takes
its port from the kernel's ephemeral range, and Ray's agents bind so: once, the agent of a
worker's own Ray took that worker's Ray metrics port in between, and the worker's Ray never
started (a stress test then waited 300 s for its first enrolment)."""

from __future__ import annotations

import contextlib
import socket

from facestream.embedded import _ephemeral_ports, free_ports

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default min/max worker ports


def test_a_stacks_ports_are_never_ones_a_bind_to_port_0_could_take() -> None:
    ephemeral = _ephemeral_ports()
    assert ephemeral.start > 20000  # else there is no range of our own: the kernel chooses
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8
        assert not [p for p in ports if p in ephemeral or p in RAY_WORKER_PORTS], ports


def test_a_stacks_ports_are_free() -> None:
    ports = free_ports(4)
    with contextlib.ExitStack() as held:
        for port in ports:
            held.enter_context(socket.socket()).bind(("127.0.0.1", port))
