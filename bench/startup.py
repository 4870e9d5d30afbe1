"""Startup: from nothing to a stack that acknowledges an enrolment, and ``facestream demo``.

    python -m bench.startup [--runs 2] [--demo-runs 1]

1. ``EmbeddedStack`` start -> first enrolment acknowledged (ready), with the milestones the
   worker logs on the way (its Ray and actors up, Faust ready), and the time to stop;
2. ``python -m facestream.cli demo`` as a subprocess: wall time and exit code.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    ForeignLoad,
    bench_parser,
    describe_machine,
    emit_json,
    log,
    print_table,
)
from bench.flow import running_stack
from core.settings import Settings

# The worker's log lines that mark its way to ready (see actors/cluster.py and Faust).
MILESTONES = {
    "local Ray started (ray.init in the worker)": "Started a local Ray instance",
    "actors up (model loaded, gallery open)": "gallery ready",
    "Faust worker ready (joined the group)": "[^Worker]: Ready",
}
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def milestones(log_text: str, started_at: float) -> dict[str, float | None]:
    """Seconds from ``started_at`` (epoch) to the first log line holding each marker."""
    out: dict[str, float | None] = dict.fromkeys(MILESTONES)
    for line in log_text.splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        for label, marker in MILESTONES.items():
            if out[label] is None and marker in line:
                at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out[label] = at - started_at
    return out


def _own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def stack_startup(settings: Settings) -> dict[str, Any]:
    started_at, load, own0 = time.time(), ForeignLoad(), _own_cpu_s()
    with running_stack(settings) as running:
        log_text = running.stack.workers[0].log_path.read_text(errors="replace")
        times = running.startup
        # The stack's processes started after ``load``, so all their CPU time counts; of this
        # process (also in the snapshot), only what it spent since.
        snapshot = running.cpu_meter().snapshot()
        ours = sum(cpu for _, cpu in snapshot.per_pid.values()) - own0
        foreign = load.cores(ours)
        stopping = time.monotonic()
    return {
        "broker up + topics created": times.stack_started_s,
        **milestones(log_text, started_at),
        "first enrolment acknowledged (ready)": times.ready_s,
        "stop (SIGTERM worker, Ray, broker)": time.monotonic() - stopping,
        "foreign load during the start (cores)": foreign,
    }


def run_demo() -> dict[str, Any]:
    t = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "facestream.cli", "demo"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wall = time.monotonic() - t
    reported = re.search(r"wall time \(s\)\s*[│|]?\s*([\d.]+)", done.stdout)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return {
        "wall_s": wall,
        "reported_wall_s": float(reported.group(1)) if reported else None,
        "exit_code": done.returncode,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=2, help="stack starts")
    parser.add_argument("--demo-runs", type=int, default=1)
    args = parser.parse_args(argv)

    info = describe_machine()
    settings = Settings()
    starts = []
    for i in range(args.runs):
        log(f"stack start {i + 1}/{args.runs}...")
        starts.append(stack_startup(settings))
    demos = []
    for i in range(args.demo_runs):
        log(f"facestream demo {i + 1}/{args.demo_runs}...")
        demos.append(run_demo())

    labels = list(starts[0])
    print_table(
        "embedded stack: seconds from start (milestones from the worker's log)",
        ["step", *(f"run {i + 1}" for i in range(len(starts)))],
        [[label, *("" if s[label] is None else s[label] for s in starts)] for label in labels],
    )
    print_table(
        "python -m facestream.cli demo (subprocess)",
        ["run", "wall s (measured)", "wall s (demo's own summary)", "exit code"],
        [
            [i + 1, d["wall_s"], d["reported_wall_s"] or "", d["exit_code"]]
            for i, d in enumerate(demos)
        ],
    )
    ready = [s["first enrolment acknowledged (ready)"] for s in starts]
    emit_json(
        "startup",
        {
            "machine": info,
            "ready_s": ready,
            "ready_s_median": statistics.median(ready),
            "stack_runs": starts,
            "demo": demos,
        },
    )


if __name__ == "__main__":
    main()
