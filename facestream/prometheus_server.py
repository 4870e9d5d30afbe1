"""A local Prometheus for one machine: its config and its process.

The docker-compose stack runs Prometheus from ``infra/prometheus/prometheus.yml``. On one
machine (``facestream up --with-prometheus``, the dashboard test) ``write_local_config``
writes the equivalent for given targets and loads the same rule files, so the recording
rules and alerts checked locally are the ones production runs. The job names are part of
the rules' contract: ``facestream-worker`` for workers, ``ray`` for Ray metrics agents.

Nothing to install but the ``prometheus`` binary (Debian: ``apt-get install prometheus``;
it ships ``promtool`` too).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facestream.embedded import ChildProcess
from facestream.prometheus_api import PrometheusError

INFRA = Path(__file__).resolve().parents[1] / "infra" / "prometheus"
RULE_FILES = ("rules/recording.yml", "rules/alerts.yml")
WORKER_JOB = "facestream-worker"
RAY_JOB = "ray"
INSTALL_HINT = (
    "install Prometheus and promtool (Debian 12 ships 2.42): "
    "apt-get install -y --no-install-recommends prometheus"
)


class PrometheusNotInstalled(PrometheusError):
    pass


def rule_files() -> list[Path]:
    """The project's rule files (absolute), as the compose config names them."""
    paths = [INFRA / name for name in RULE_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        # infra/ is not part of the wheel: a local Prometheus needs a source checkout.
        raise PrometheusError(f"rule files not found: {missing} (run from a facestream checkout)")
    return paths


def write_targets(directory: Path, job: str, targets: Sequence[str]) -> Path:
    """Write (or replace) the file_sd targets of ``job``; Prometheus rereads the file itself,
    so workers added later are scraped without a restart."""
    path = directory / "targets" / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": list(targets), "labels": {}}], indent=2))
    tmp.replace(path)  # atomic: Prometheus never reads a half-written file
    return path


def write_local_config(
    directory: Path,
    worker_targets: Sequence[str],
    ray_targets: Sequence[str],
    *,
    scrape_interval: str = "5s",
    evaluation_interval: str | None = None,
    file_sd: bool = False,
) -> Path:
    """Write ``directory/prometheus.yml``: the compose config's jobs and rule files, with
    ``host:port`` targets given here (static, or file_sd files that ``write_targets``
    updates). Returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)

    def job(name: str, targets: Sequence[str]) -> dict[str, Any]:
        if file_sd:
            sd = {"files": [str(write_targets(directory, name, targets))], "refresh_interval": "5s"}
            return {"job_name": name, "file_sd_configs": [sd]}
        return {"job_name": name, "static_configs": [{"targets": list(targets)}]}

    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "rule_files": [str(p) for p in rule_files()],
        "scrape_configs": [job(WORKER_JOB, worker_targets), job(RAY_JOB, ray_targets)],
    }
    path = directory / "prometheus.yml"
    # JSON is YAML: no YAML writer needed, and the file still reads as Prometheus config.
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# -- the process -----------------------------------------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotInstalled(f"no `prometheus` on PATH: {INSTALL_HINT}")
    return found


class PrometheusServer(ChildProcess):
    """A Prometheus server with its data in ``directory/data`` and its log beside it."""

    def __init__(self, config: Path, directory: Path, host: str, port: int) -> None:
        self.url = f"http://{host}:{port}"
        cmd = [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={host}:{port}",
        ]
        super().__init__(cmd, directory / "prometheus.log")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False  # not listening yet, or 503 while it replays its write-ahead log

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        try:
            self.wait_for(self.ready, "ready", timeout_s, interval_s=0.2)
        except (RuntimeError, TimeoutError) as exc:  # it exited, or it is not ready in time
            raise PrometheusError(str(exc)) from exc


def start_prometheus(
    directory: Path,
    port: int,
    *,
    config: Path | None = None,
    host: str = "127.0.0.1",
    ready_timeout_s: float = 30.0,
) -> PrometheusServer:
    """Start Prometheus on ``host:port`` with ``config`` (default: the one
    ``write_local_config`` wrote in ``directory``) and wait until it is ready."""
    server = PrometheusServer(config or directory / "prometheus.yml", directory, host, port)
    try:
        server.wait_ready(ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
