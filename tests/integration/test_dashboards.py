"""The dashboards and alerts, checked against a real Prometheus that scraped a real run.

Grafana cannot run here, so a panel is checked the way it would break: its PromQL returns
nothing. A real embedded stack (Tansu, a facestream worker, its Ray with two model
replicas) is driven with matches, unknowns, a group photo, a rejected tiny face and bad
input; one model replica is then killed for good, so that the retry and actor-death panels
have something to show. A real Prometheus scrapes the worker and its Ray metrics agent every
second with the project's own rule files, and every expression of every panel of every
dashboard must return at least one series with a number in it.

``promtool`` checks the compose config and the rules, and unit-tests the alerts. Without the
``prometheus`` package these tests fail rather than skip: CI installs it (``.ci/run``).

``DASHBOARD_PNG=docs/dashboard.png`` runs the traffic for about three minutes
and renders the overview dashboard there (the picture in the README).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from core.waiting import wait_until
from devtools import render_dashboard as rd
from facestream.embedded import EmbeddedStack, free_port
from facestream.prometheus_api import active_targets, loaded_rules, query, wait_for_targets
from facestream.prometheus_server import (
    INSTALL_HINT,
    RULE_FILES,
    start_prometheus,
    write_local_config,
)
from facestream.status import status_rows, status_summary
from streams.clients import ImageToSend
from tests.conftest import Pipeline, embedded_settings, unique
from tests.fault_patches import fault_env
from tests.integration.test_quality import tiny

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
GRAFANA_DIR = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
RENDER_TO = os.environ.get("DASHBOARD_PNG")
# Rounds of traffic before and after a model replica is killed, ~3 s each. Longer when
# rendering the README's picture, so that its charts have a shape.
ROUNDS = (36, 18) if RENDER_TO else (4, 3)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found: the dashboards are checked against a real Prometheus; "
            + INSTALL_HINT,
            pytrace=False,
        )
    return path


def promtool(*args: str) -> None:
    done = subprocess.run(
        [binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


# -- files, without a stack -------------------------------------------------------------------


def test_promtool_accepts_the_config_and_rules_and_the_alerts_pass_their_unit_tests() -> None:
    promtool("check", "config", "prometheus.yml")  # also checks the rule files it names
    promtool("check", "rules", *RULE_FILES)
    promtool("test", "rules", "tests/rules_test.yml")


@pytest.mark.parametrize("file_sd", [False, True])
def test_the_local_config_uses_the_same_rules_and_passes_promtool(
    tmp_path: Path, file_sd: bool
) -> None:
    config = write_local_config(
        tmp_path, ["127.0.0.1:9464"], ["127.0.0.1:9465"], scrape_interval="1s", file_sd=file_sd
    )
    promtool("check", "config", str(config))
    loaded = yaml.safe_load(config.read_text())
    assert loaded["rule_files"] == [str(PROMETHEUS_DIR / name) for name in RULE_FILES]
    compose_jobs = {
        j["job_name"]
        for j in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert {j["job_name"] for j in loaded["scrape_configs"]} <= compose_jobs


def provisioned_datasource_uid() -> str:
    files = sorted((GRAFANA_DIR / "provisioning" / "datasources").glob("*.y*ml"))
    (source,) = [d for f in files for d in yaml.safe_load(f.read_text())["datasources"]]
    assert source["type"] == "prometheus"
    return source["uid"]


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_dashboards_are_valid_grafana_json() -> None:
    assert {p.stem for p in DASHBOARDS} == {"overview", "stages"}
    uid = provisioned_datasource_uid()
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40, path
        uids.add(board["uid"])
        assert board["title"] and isinstance(board["schemaVersion"], int), path
        assert board["schemaVersion"] >= 36, "datasources by uid need schemaVersion 36+"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["worker"]["definition"].endswith(", instance)")
        for v in variables.values():
            assert v["datasource"]["uid"] == uid and v["allValue"] == ".*", (path, v["name"])
        ids = [p["id"] for p in board["panels"]] + [
            c["id"] for p in board["panels"] for c in p.get("panels", [])
        ]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        placed = [p["gridPos"] for p in board["panels"]]
        for i, a in enumerate(placed):
            assert a["x"] + a["w"] <= 24, (path.name, a)
            assert not any(overlaps(a, b) for b in placed[i + 1 :]), (path.name, a)
        for panel in rd.panels(board):
            where = f"{path.name}: {panel['title']!r}"
            assert panel["datasource"]["uid"] == uid, where
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), where
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == uid, where
                unknown = rd.variables_in(t["expr"]) - variables.keys() - rd.BUILTINS.keys()
                assert not unknown, f"{where} uses undefined variables {unknown}"
    overview = json.loads((GRAFANA_DIR / "dashboards" / "overview.json").read_text())
    assert "source" in {v["name"] for v in overview["templating"]["list"]}


# -- a real run -------------------------------------------------------------------------------


def traffic(samples: Path, round_no: int) -> list[ImageToSend]:
    """One round: every outcome the overview shows, from three sources at different rates."""

    def photo(name: str) -> bytes:
        return (samples / name).read_bytes()

    images = [
        ImageToSend(unique("match"), photo("obama2.jpg"), "cam-entrance"),
        ImageToSend(unique("group"), photo("t1.jpg"), "cam-entrance"),  # six unknown faces
        ImageToSend(unique("tiny"), tiny(samples), "cam-entrance"),  # rejected: small_face
        ImageToSend(unique("match"), photo("obama3.jpg"), "cam-lobby"),
        ImageToSend(unique("unknown"), photo("biden.jpg"), "cam-lobby"),
        ImageToSend(unique("empty"), b"", "upload"),  # DLQ: empty
    ]
    if round_no % 2 == 0:
        images.append(ImageToSend(unique("pdf"), b"%PDF-1.4 not a photo", "upload"))
    if round_no % 3 == 0:
        whole = photo("obama2.jpg")
        cut = whole[: len(whole) // 2]  # DLQ: truncated
        images.append(ImageToSend(unique("cut"), cut, "upload"))
    return images


@contextlib.contextmanager
def keep_sending(pipeline: Pipeline, samples: Path, first_round: int) -> Iterator[None]:
    """Rounds of ``traffic``, 3 s apart, in a thread until the block ends; a round without
    every outcome fails the block."""
    stop, failed = threading.Event(), []

    def send() -> None:
        round_no = first_round
        while not stop.is_set():
            try:
                pipeline.run(traffic(samples, round_no))
            except Exception as exc:  # reported when the block ends
                failed.append(exc)
                return
            round_no += 1
            stop.wait(3.0)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=180)
    assert not failed, f"a round of traffic failed: {failed[0]!r}"


def panel_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every target of every panel of every dashboard, expanded."""
    for path in DASHBOARDS:
        for panel in rd.panels(json.loads(path.read_text())):
            for t in panel["targets"]:
                yield f"{path.stem}: {panel['title']} [{t['refId']}]", rd.expand(t["expr"])


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


def empty_panels(url: str) -> list[str]:
    return [
        f"{where}: {expr}" for where, expr in panel_queries() if not has_number(query(url, expr))
    ]


@dataclass
class Run:
    url: str  # the Prometheus that scraped the run
    started: float


@pytest.fixture(scope="module")
def run(samples: Path) -> Iterator[Run]:
    binary("prometheus")
    run_dir = Path(tempfile.mkdtemp(prefix="fsd-"))  # short: Ray puts sockets here
    settings = embedded_settings(run_dir)
    fault = run_dir / "fault"
    stack = EmbeddedStack(settings, run_dir)
    stack.worker_env.update(fault_env("die-in-call", fault))  # its local Ray's replicas
    with stack:
        worker = stack.workers[0]
        write_local_config(
            run_dir / "prometheus",
            [f"127.0.0.1:{worker.metrics_port}"],
            [f"127.0.0.1:{worker.ray_metrics_port}"],
            scrape_interval="1s",
        )
        prometheus = start_prometheus(run_dir / "prometheus", free_port())
        try:
            started = time.time()
            pipeline = Pipeline(settings, stack)
            pipeline.enroll_photos("obama", samples / "obama.jpg")  # waits for the worker
            wait_for_targets(prometheus.url, expected=2, timeout_s=180)
            before, after = ROUNDS
            for i in range(before + after):
                if i == before:
                    # The replica dies in its next model run: the worker's call fails and is
                    # retried, and waits in the handle for Serve's replacement: retries and an
                    # actor death, with every image still answered.
                    (fault / "trigger").touch()
                pipeline.run(traffic(samples, i))
                time.sleep(2)  # rate() wants samples spread over its window
            # Traffic goes on while the dashboards are read, as in production: a rate over a
            # window with no new sample is no data, and on a loaded machine the tests read
            # the panels minutes after the rounds above.
            with keep_sending(pipeline, samples, first_round=before + after):
                # Ray's agent exports actor metrics ~10 s after they are recorded; the lag
                # gauge and the gallery size are set every 5 s.
                with contextlib.suppress(TimeoutError):  # the test names the empty panels
                    wait_until(
                        lambda: not empty_panels(prometheus.url),
                        timeout_s=90,
                        what="every panel has data",
                        interval_s=2,
                    )
                yield Run(prometheus.url, started)
        finally:
            prometheus.stop()
    shutil.rmtree(run_dir, ignore_errors=True)  # Ray's session logs, Prometheus's data


def settled(failures: Callable[[], list[Any]], what: str, timeout_s: float = 60) -> list[Any]:
    """``failures()`` read again until it is empty, for up to ``timeout_s``: its last value.
    One read can land just after a scrape of a loaded machine missed its 1 s timeout, when
    every series of that target goes stale at once; a broken panel or rule stays broken."""
    last = failures()
    if last:

        def passed() -> bool:
            nonlocal last
            last = failures()
            return not last

        with contextlib.suppress(TimeoutError):  # the caller's assert names what failed
            wait_until(passed, timeout_s=timeout_s, what=what, interval_s=2)
    return last


def test_every_panel_of_every_dashboard_shows_data(run: Run) -> None:
    missing = settled(lambda: empty_panels(run.url), "every panel has data")
    assert not missing, "panels without data:\n" + "\n".join(missing)


# metric -> (label, the values the run must have given it)
SENT = {
    "facestream_faces_total": ("decision", {"match", "unknown", "rejected"}),
    "facestream_dlq_events_total": ("reason", {"empty", "not_an_image", "truncated"}),
    "facestream_images_total": ("source", {"cam-entrance", "cam-lobby", "upload"}),
    "ray_facestream_actor_stage_seconds_count": (
        "stage",
        {"decode", "detect", "embed", "gallery_search"},
    ),
    "facestream_retries_total": ("call", {"model"}),
}


def test_the_panels_show_what_was_sent(run: Run) -> None:
    def wrong() -> list[tuple[str, set[str]]]:
        out = []
        for metric, (label, expected) in SENT.items():
            # Label values with a non-zero value (known values are exported at 0 from the start).
            found = query(run.url, rd.expand(f"(sum by ({label}) ({metric})) > 0"))
            if (values := {s["metric"][label] for s in found}) != expected:
                out.append((metric, values))
        return out

    assert not settled(wrong, "every metric has the values sent")


def test_recording_rules_have_data_and_every_rule_is_healthy(run: Run) -> None:
    rules = loaded_rules(run.url)
    names = {r["name"] for r in rules}
    assert {"FacestreamWorkerDown", "FacestreamModelFellBackToCPU"} <= names
    broken = settled(
        lambda: [
            (r["name"], r.get("lastError")) for r in loaded_rules(run.url) if r["health"] != "ok"
        ],
        "every rule healthy",
    )
    assert not broken, broken
    empty = settled(
        lambda: [
            r["name"]
            for r in rules
            if r["type"] == "recording" and not has_number(query(run.url, r["name"]))
        ],
        "every recording rule has data",
    )
    assert not empty, f"recording rules without data: {empty}"


def missing_figures(summary: dict[str, Any]) -> list[str]:
    """The figures of ``status_summary`` that have no data."""
    top = [k for k, v in summary.items() if v is None]
    stages = [f"{s}.{q}" for s, f in summary["stages"].items() for q, v in f.items() if v is None]
    return top + stages


DLQ_SENT = SENT["facestream_dlq_events_total"][1]


def dlq_reasons(summary: dict[str, Any]) -> set[str]:
    """The DLQ reasons with a rate in the summary's window."""
    return {reason for reason, rate in (summary.get("dlq_by_reason") or {}).items() if rate}


def test_status_summary_reports_the_run(run: Run) -> None:
    # A stage's rate over a window in which its target was not scraped is no data, and
    # `facestream status` rightly says so. On a loaded machine Ray's metrics agent can miss
    # the 1 s scrapes for a while (CI once read no actor stage at all): with traffic going
    # on, the test waits for a window with every figure, then checks them.
    summary: dict[str, Any] = {}

    def incomplete() -> list[str]:
        summary.update(status_summary(run.url, window="2m"))
        up = summary["workers_up"] == summary["workers"]  # a missed scrape reads as down
        return [
            *missing_figures(summary),
            *([] if up else ["workers_up"]),
            *([] if dlq_reasons(summary) == DLQ_SENT else ["dlq_by_reason"]),
        ]

    settled(incomplete, "every status figure", timeout_s=90)  # the asserts below name it
    targets = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in active_targets(run.url)]
    assert not missing_figures(summary), (missing_figures(summary), targets)
    assert summary["workers_up"] == summary["workers"] == 1
    assert summary["throughput_per_s"] and summary["throughput_per_s"] > 0
    assert summary["consumer_lag"] is not None
    assert 0 < summary["latency_p50_s"] <= summary["latency_p99_s"]
    assert summary["dlq_per_s"] and summary["dlq_per_s"] > 0
    assert dlq_reasons(summary) == DLQ_SENT
    assert summary["retries_per_s"] is not None
    # Every stage of an image's way, from the broker's queue to publishing, has figures.
    for stage, figures in summary["stages"].items():
        assert figures["p99_s"] and 0 <= figures["p50_s"] <= figures["p99_s"], (stage, figures)
    rows = status_rows(summary)
    assert rows["workers up"] == "1 / 1" and "no data" not in " ".join(rows.values()), rows


@pytest.mark.parametrize("name", ["overview", "stages"])
def test_the_dashboards_render_from_prometheus(run: Run, tmp_path: Path, name: str) -> None:
    out = Path(RENDER_TO) if RENDER_TO and name == "overview" else tmp_path / f"{name}.png"
    minutes = (time.time() - run.started) / 60 + 0.5
    rd.render(run.url, rd.load(GRAFANA_DIR / "dashboards" / f"{name}.json"), out, minutes)
    with Image.open(out) as image:
        assert image.width == 1600 and image.height > 600
        # Drawn, not blank: the charts put many colours on the dark background.
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50
