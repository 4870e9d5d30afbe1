"""`facestream status` from a fake Prometheus: the figures it reads, per stage included, and
the rows it prints."""

from __future__ import annotations

import re
from typing import Any

import pytest

from facestream import status

# (histogram, stage label) -> (p50, p99) in seconds: what the fake Prometheus holds.
STAGE_DATA = {
    ("facestream_stage_seconds", "broker_queue"): (0.004, 0.021),
    ("facestream_stage_seconds", "batching"): (0.031, 0.049),
    ("facestream_stage_seconds", "model_call"): (0.080, 0.190),
    ("facestream_stage_seconds", "gallery_call"): (0.0015, 0.004),
    ("facestream_stage_seconds", "publish"): (0.006, 0.012),
    ("ray_facestream_actor_stage_seconds", "decode"): (0.009, 0.030),
    ("ray_facestream_actor_stage_seconds", "detect"): (0.024, 0.060),
    # no embed: a stage without data reads "no data"
    ("ray_facestream_actor_stage_seconds", "gallery_search"): (0.001, 0.002),
}
STAGE_QUERY = re.compile(
    r"histogram_quantile\((?P<q>[\d.]+), sum by \(stage, le\) "
    r"\(rate\((?P<metric>\w+)_bucket\[2m\]\)\)\)"
)


def sample(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [0, repr(value)]}


def fake_query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    if found := STAGE_QUERY.fullmatch(promql):
        index = {"0.5": 0, "0.99": 1}[found["q"]]
        return [
            sample(values[index], stage=stage)
            for (metric, stage), values in STAGE_DATA.items()
            if metric == found["metric"]
        ]
    if "dlq_events_total" in promql and "by (reason)" in promql:
        return [sample(0.5, reason="empty")]
    if promql.startswith("count(up"):
        return [sample(2)]
    if promql.startswith("sum(up"):
        return [sample(1)]
    if "end_to_end" in promql:
        return [sample(0.12 if "0.5," in promql else 0.25)]
    if "consumer_lag" in promql:
        return []  # no such series yet
    return [sample(float("nan") if "retries" in promql else 3.0)]


@pytest.fixture
def summary(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(status, "query", fake_query)
    monkeypatch.setattr(status, "firing_alerts", lambda url: [{"labels": {"alertname": "X"}}])
    return status.status_summary("http://prom", window="2m")


def test_the_summary_has_p50_and_p99_of_every_stage(summary: dict[str, Any]) -> None:
    assert list(summary["stages"]) == [key for key, *_ in status.STAGES]
    assert summary["stages"]["broker_queue"] == {"p50_s": 0.004, "p99_s": 0.021}
    # The worker's gallery call is the search the image waits for (the actor's own
    # gallery_search is inside it).
    assert summary["stages"]["search"] == {"p50_s": 0.0015, "p99_s": 0.004}
    assert summary["stages"]["decode"] == {"p50_s": 0.009, "p99_s": 0.030}
    assert summary["stages"]["embed"] == {"p50_s": None, "p99_s": None}
    assert summary["consumer_lag"] is None and summary["retries_per_s"] is None
    assert summary["workers_up"] == 1 and summary["workers"] == 2


def test_the_rows_list_the_stages_in_pipeline_order(summary: dict[str, Any]) -> None:
    rows = status.status_rows(summary)
    stage_rows = [(k, v) for k, v in rows.items() if k.endswith(": p50 / p99")]
    assert stage_rows == [
        ("queue in the broker (per image): p50 / p99", "4.0 ms / 21 ms"),
        ("batching wait (per image): p50 / p99", "31 ms / 49 ms"),
        ("model call (per batch): p50 / p99", "80 ms / 190 ms"),
        ("model call: decode: p50 / p99", "9.0 ms / 30 ms"),
        ("model call: detect: p50 / p99", "24 ms / 60 ms"),
        ("model call: embed: p50 / p99", "no data / no data"),
        ("search (per batch): p50 / p99", "1.5 ms / 4.0 ms"),
        ("publish (per batch): p50 / p99", "6.0 ms / 12 ms"),
    ]
    assert rows["latency p50 / p99"] == "120 ms / 250 ms"
    assert rows["workers up"] == "1 / 2"
    assert rows["consumer lag"] == "no data"
    assert rows["DLQ"] == "3.00 img/s (empty 0.50/s)"
    assert rows["alerts firing"] == "X"


def test_every_figure_of_a_summary_is_read_at_one_instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """A p50 and a p99 read a scrape apart could disagree while traffic flows."""
    instants: list[float | None] = []

    def recording(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        instants.append(at)
        return fake_query(url, promql, at)

    monkeypatch.setattr(status, "query", recording)
    monkeypatch.setattr(status, "firing_alerts", lambda url: [])
    status.status_summary("http://prom", window="2m")
    assert len(instants) > 10 and None not in instants and len(set(instants)) == 1
