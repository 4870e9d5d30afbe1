"""Prometheus for a local facestream: its config, its process, queries, and a status summary.

The docker-compose stack runs Prometheus from ``infra/prometheus/prometheus.yml``. On one
machine (``facestream up --with-prometheus``, the dashboard test) ``write_local_config``
writes the equivalent for given targets and loads the same rule files, so the recording
rules and alerts checked locally are the ones production runs. The job names are part of
the rules' contract: ``facestream-worker`` for workers, ``ray`` for Ray metrics agents.

Only the standard library talks to Prometheus's HTTP API: nothing to install but the
``prometheus`` binary (Debian: ``apt-get install prometheus``; it ships ``promtool`` too).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facestream.embedded import ChildProcess

INFRA = Path(__file__).resolve().parents[1] / "infra" / "prometheus"
RULE_FILES = ("rules/recording.yml", "rules/alerts.yml")
WORKER_JOB = "facestream-worker"
RAY_JOB = "ray"
INSTALL_HINT = (
    "install Prometheus and promtool (Debian 12 ships 2.42): "
    "apt-get install -y --no-install-recommends prometheus"
)

# What `facestream status` reports, as PromQL over the last {w} (its window argument). Raw
# series rather than the recording rules, so that the figures are right on a Prometheus that
# was just started (the rules' 5-minute windows would still be filling).
STATUS_QUERIES = {
    "throughput_per_s": "sum(rate(facestream_images_total[{w}]))",
    "consumer_lag": "sum(max by (topic, partition) (facestream_consumer_lag_messages))",
    "latency_p50_s": (
        "histogram_quantile(0.5, sum by (le) "
        "(rate(facestream_end_to_end_latency_seconds_bucket[{w}])))"
    ),
    "latency_p99_s": (
        "histogram_quantile(0.99, sum by (le) "
        "(rate(facestream_end_to_end_latency_seconds_bucket[{w}])))"
    ),
    "dlq_per_s": "sum(rate(facestream_dlq_events_total[{w}]))",
    "retries_per_s": "sum(rate(facestream_retries_total[{w}]))",
    "workers_up": f'sum(up{{job="{WORKER_JOB}"}})',
    "workers": f'count(up{{job="{WORKER_JOB}"}})',
}
DLQ_BY_REASON = "sum by (reason) (rate(facestream_dlq_events_total[{w}]))"


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a query."""


class PrometheusNotInstalled(PrometheusError):
    pass


# -- configuration ---------------------------------------------------------------------------


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

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise PrometheusError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass  # not listening yet, or 503 while it replays its write-ahead log
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout_s}s:\n{self.log_tail()}")


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


# -- the HTTP API ----------------------------------------------------------------------------


def _api(url: str, path: str, params: dict[str, str] | None = None, timeout_s: float = 10.0) -> Any:
    full = f"{url.rstrip('/')}/api/v1/{path}"
    if params:
        full += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(full, timeout=timeout_s) as reply:
            body = json.load(reply)
    except urllib.error.HTTPError as exc:  # a bad query: 400/422 with Prometheus's reason
        try:
            body = json.load(exc)
        except ValueError:
            raise PrometheusError(f"{full}: HTTP {exc.code}") from exc
    except OSError as exc:
        raise PrometheusError(f"Prometheus unreachable at {url}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"{params or path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query: ``[{"metric": {labels}, "value": [ts, "str"]}, ...]``. A scalar
    result (e.g. ``vector(1)`` folded by Prometheus) comes back as one unlabelled sample."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = _api(url, "query", params)
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def query_range(
    url: str, promql: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """Range query: ``[{"metric": {labels}, "values": [[ts, "str"], ...]}, ...]``."""
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
    return _api(url, "query_range", params)["result"]


def active_targets(url: str) -> list[dict[str, Any]]:
    return _api(url, "targets", {"state": "active"})["activeTargets"]


def wait_for_targets(url: str, expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Wait until ``expected`` targets have been scraped successfully (a new target shows
    up only after its first scrape)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = active_targets(url)
        if sum(t["health"] == "up" for t in found) >= expected:
            return found
        if time.monotonic() > deadline:
            states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in found]
            raise PrometheusError(f"{expected} targets not up after {timeout_s}s: {states}")
        time.sleep(0.5)


def loaded_rules(url: str) -> list[dict[str, Any]]:
    """Every loaded rule, with its ``health`` and ``lastError`` from its last evaluation."""
    return [rule for group in _api(url, "rules")["groups"] for rule in group["rules"]]


def firing_alerts(url: str) -> list[dict[str, Any]]:
    return [a for a in _api(url, "alerts")["alerts"] if a["state"] == "firing"]


def _number(sample: dict[str, Any]) -> float | None:
    value = float(sample["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def status_summary(url: str, window: str = "1m") -> dict[str, Any]:
    """The pipeline at a glance: throughput, lag, latency p50/p99, DLQ and retry rates,
    workers up and firing alerts. A figure is None when Prometheus has no data for it (no
    traffic in ``window``, or no such series yet)."""
    summary: dict[str, Any] = {"prometheus": url, "window": window}
    for name, promql in STATUS_QUERIES.items():
        result = query(url, promql.replace("{w}", window))
        summary[name] = _number(result[0]) if result else None
    for name in ("workers_up", "workers"):
        summary[name] = int(summary[name] or 0)
    summary["dlq_by_reason"] = {
        s["metric"].get("reason", ""): _number(s)
        for s in query(url, DLQ_BY_REASON.replace("{w}", window))
    }
    summary["alerts_firing"] = sorted({a["labels"]["alertname"] for a in firing_alerts(url)})
    return summary


def _per_s(value: float | None, what: str = "/s") -> str:
    return "no data" if value is None else f"{value:.2f}{what}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def status_rows(summary: dict[str, Any]) -> dict[str, str]:
    """``status_summary`` as the lines `facestream status` prints."""
    reasons = ", ".join(
        f"{reason} {_per_s(rate)}" for reason, rate in sorted(summary["dlq_by_reason"].items())
    )
    lag = summary["consumer_lag"]
    return {
        "workers up": f"{summary['workers_up']} / {summary['workers']}",
        f"throughput ({summary['window']})": _per_s(summary["throughput_per_s"], " img/s"),
        "consumer lag": "no data" if lag is None else f"{lag:.0f} records",
        "latency p50 / p99": (
            f"{_seconds(summary['latency_p50_s'])} / {_seconds(summary['latency_p99_s'])}"
        ),
        "DLQ": _per_s(summary["dlq_per_s"], " img/s") + (f" ({reasons})" if reasons else ""),
        "retries": _per_s(summary["retries_per_s"]),
        "alerts firing": ", ".join(summary["alerts_firing"]) or "none",
    }
