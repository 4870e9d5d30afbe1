"""``facestream status``: the pipeline at a glance, from Prometheus, as figures and rows."""

from __future__ import annotations

import math
import time
from typing import Any

from facestream.prometheus_api import firing_alerts, query
from facestream.prometheus_server import WORKER_JOB

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

# Where an image's time goes, in pipeline order: (key, what the row says, histogram, its
# stage label). The waits are per image; the rest per batch, so a batch's model call is
# shared by its images. The actors' decode + detect + embed run inside the worker's model
# call (decode summed over the decode threads, which overlap the model); search is the
# worker's gallery call, Ray round trip included, as the image waits for it.
WORKER_STAGES = "facestream_stage_seconds"
ACTOR_STAGES = "ray_facestream_actor_stage_seconds"
STAGES = (
    ("broker_queue", "queue in the broker (per image)", WORKER_STAGES, "broker_queue"),
    ("batching", "batching wait (per image)", WORKER_STAGES, "batching"),
    ("model_call", "model call (per batch)", WORKER_STAGES, "model_call"),
    ("decode", "model call: decode", ACTOR_STAGES, "decode"),
    ("detect", "model call: detect", ACTOR_STAGES, "detect"),
    ("embed", "model call: embed", ACTOR_STAGES, "embed"),
    ("search", "search (per batch)", WORKER_STAGES, "gallery_call"),
    ("publish", "publish (per batch)", WORKER_STAGES, "publish"),
)
STAGE_QUANTILES = {"p50_s": 0.5, "p99_s": 0.99}
STAGE_QUANTILE = "histogram_quantile({q}, sum by (stage, le) (rate({metric}_bucket[{w}])))"


def _number(sample: dict[str, Any]) -> float | None:
    value = float(sample["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def status_summary(url: str, window: str = "1m") -> dict[str, Any]:
    """The pipeline at a glance: throughput, lag, latency p50/p99, DLQ and retry rates,
    workers up, firing alerts, and p50/p99 per stage (``STAGES``). A figure is None when
    Prometheus has no data for it (no traffic in ``window``, or no such series yet).

    Every figure is evaluated at one instant: a p50 and a p99 read a scrape apart could
    disagree (p50 above p99) while traffic flows."""
    at = time.time()
    summary: dict[str, Any] = {"prometheus": url, "window": window}
    for name, promql in STATUS_QUERIES.items():
        result = query(url, promql.replace("{w}", window), at)
        summary[name] = _number(result[0]) if result else None
    for name in ("workers_up", "workers"):
        summary[name] = int(summary[name] or 0)
    summary["dlq_by_reason"] = {
        s["metric"].get("reason", ""): _number(s)
        for s in query(url, DLQ_BY_REASON.replace("{w}", window), at)
    }
    summary["alerts_firing"] = sorted({a["labels"]["alertname"] for a in firing_alerts(url)})
    summary["stages"] = stage_latencies(url, window, at)
    return summary


def stage_latencies(
    url: str, window: str, at: float | None = None
) -> dict[str, dict[str, float | None]]:
    """p50 and p99 of each of ``STAGES`` over ``window`` ending ``at`` (now by default; None:
    no data)."""
    found: dict[tuple[str, str, str], float | None] = {}  # (metric, stage, quantile) -> s
    for metric in dict.fromkeys(metric for *_, metric, _ in STAGES):
        for name, q in STAGE_QUANTILES.items():
            promql = STAGE_QUANTILE.format(q=q, metric=metric, w=window)
            for sample in query(url, promql, at):
                found[metric, sample["metric"].get("stage", ""), name] = _number(sample)
    return {
        key: {name: found.get((metric, stage, name)) for name in STAGE_QUANTILES}
        for key, _, metric, stage in STAGES
    }


def _per_s(value: float | None, what: str = "/s") -> str:
    return "no data" if value is None else f"{value:.2f}{what}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "no data"
    if value < 0.01:  # stages of a few ms: a decimal, so that 0.4 ms does not read "0 ms"
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _p50_p99(p50_s: float | None, p99_s: float | None) -> str:
    return f"{_seconds(p50_s)} / {_seconds(p99_s)}"


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
        "latency p50 / p99": _p50_p99(summary["latency_p50_s"], summary["latency_p99_s"]),
        "DLQ": _per_s(summary["dlq_per_s"], " img/s") + (f" ({reasons})" if reasons else ""),
        "retries": _per_s(summary["retries_per_s"]),
        "alerts firing": ", ".join(summary["alerts_firing"]) or "none",
        **{f"{label}: p50 / p99": _p50_p99(**summary["stages"][key]) for key, label, *_ in STAGES},
    }
