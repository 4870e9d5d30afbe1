"""``facestream demo`` as a user sees it: its wall time and how soon the first match shows.

    python -m bench.demo_timing [--runs 2] [--facestream COMMAND] [--cwd DIR]

Runs ``COMMAND demo`` in ``DIR`` (default: this venv's ``facestream``, here; e.g. another
checkout's ``/tmp/before/.venv/bin/facestream`` in ``/tmp/before`` to compare with an older
commit: the demo's worker runs ``python -m``, which imports from its working directory
first) and stamps each line of its output as it arrives.
The first match's latency is from the "produced N images" line (printed once the broker
acknowledged the last image) to the first event line that names an enrolled identity with
its similarity, e.g. ``obama2  1 face(s): obama 0.71``.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ForeignLoad, bench_parser, describe_machine, emit_json, log, print_table
from facestream.demo import ENROLMENTS

PRODUCED = re.compile(r"^produced \d+ images")
MATCH = re.compile(r"(?<!review: )\b(" + "|".join(map(re.escape, ENROLMENTS)) + r") \d\.\d\d")
OWN_WALL = re.compile(r"wall time \(s\)\s*[│|]?\s*([\d.]+)")


def stamped_lines(proc: subprocess.Popen[str], started: float) -> list[tuple[float, str]]:
    """The lines the process prints, each with its arrival (seconds from ``started``), read
    in a thread: processes the demo leaves behind (an older commit's Ray daemons) keep the
    pipe open after it exits, so reading to the end of the pipe would wait for them."""
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.strip()))

    threading.Thread(target=read, daemon=True).start()
    return lines


def run_demo(facestream: str, cwd: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """One ``facestream demo`` run: seconds from its start to each milestone."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [*shlex.split(facestream), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    )
    lines = stamped_lines(proc, started)
    try:
        code = proc.wait(timeout_s)
    except BaseException:  # too slow, or this benchmark interrupted: no stack left behind
        # Ctrl-C, as a user would: the demo stops its broker, worker and Ray on the way out
        # (each runs in its own process group, so killing the demo alone would orphan them).
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    wall = time.monotonic() - started  # when the user gets the prompt back
    time.sleep(0.5)  # the reader's last lines
    marks: dict[str, float | None] = {"produced": None, "first_outcome": None, "first_match": None}
    own_wall = None
    for at, text in list(lines):
        if marks["produced"] is None:
            if PRODUCED.match(text):
                marks["produced"] = at
        elif found := OWN_WALL.search(text):
            own_wall = float(found.group(1))
        elif text.startswith(("┌", "╭", "┏", "│", "├", "└", "summary")):
            continue  # the summary table
        elif text:
            marks["first_outcome"] = marks["first_outcome"] or at
            if marks["first_match"] is None and MATCH.search(text):
                marks["first_match"] = at
    produced = marks["produced"]

    def since_produced(key: str) -> float | None:
        at = marks[key]
        return None if at is None or produced is None else at - produced

    return {
        "exit_code": code,
        "wall_s": wall,
        "demo_own_wall_s": own_wall,
        "produced_at_s": produced,
        "first_outcome_after_produce_s": since_produced("first_outcome"),
        "first_match_after_produce_s": since_produced("first_match"),
    }


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=2, help="demo runs, one after the other")
    default = str(Path(sys.executable).parent / "facestream")
    parser.add_argument("--facestream", default=default, help="the facestream command")
    parser.add_argument("--cwd", default=os.getcwd(), help="where to run it")
    args = parser.parse_args(argv)

    info = describe_machine()
    runs = []
    for i in range(1, args.runs + 1):
        log(f"demo run {i} ({args.facestream})...")
        load, before = ForeignLoad(), children_cpu_s()
        result = run_demo(args.facestream, args.cwd)
        # The demo's CPU as far as its processes were waited for (Ray daemons that outlive
        # their parent are not): an upper bound of the foreign load.
        runs.append({**result, "foreign_load_cores": load.cores(children_cpu_s() - before)})
    rows = [
        [i, r["exit_code"], r["wall_s"], r["demo_own_wall_s"], r["produced_at_s"],
         r["first_outcome_after_produce_s"], r["first_match_after_produce_s"],
         r["foreign_load_cores"]]
        for i, r in enumerate(runs, 1)
    ]  # fmt: skip
    print_table(
        f"facestream demo ({args.facestream} in {args.cwd}), seconds",
        ["run", "exit", "wall", "demo's own wall", "images produced at", "first outcome after",
         "first match after", "foreign load (cores)"],
        rows,
    )  # fmt: skip
    walls = [r["wall_s"] for r in runs]
    emit_json(
        "demo_timing",
        {"machine": info, "facestream": args.facestream, "cwd": args.cwd, "runs": runs,
         "wall_s_median": statistics.median(walls)},
    )  # fmt: skip


if __name__ == "__main__":
    main()
