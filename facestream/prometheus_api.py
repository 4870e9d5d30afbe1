"""Prometheus's HTTP API, read with the standard library: queries, targets, rules, alerts."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from core.waiting import wait_until


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a query."""


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
    found: list[dict[str, Any]] = []

    def up() -> bool:
        found[:] = active_targets(url)
        return sum(t["health"] == "up" for t in found) >= expected

    try:
        wait_until(up, timeout_s=timeout_s, what=f"{expected} targets up", interval_s=0.5)
    except TimeoutError as exc:
        states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in found]
        raise PrometheusError(f"{exc}: {states}") from exc
    return found


def loaded_rules(url: str) -> list[dict[str, Any]]:
    """Every loaded rule, with its ``health`` and ``lastError`` from its last evaluation."""
    return [rule for group in _api(url, "rules")["groups"] for rule in group["rules"]]


def firing_alerts(url: str) -> list[dict[str, Any]]:
    return [a for a in _api(url, "alerts")["alerts"] if a["state"] == "firing"]
