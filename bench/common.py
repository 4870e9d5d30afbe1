"""What every benchmark shares: the machine's description, tables, percentiles, the JSON line,
the sample photos, and CPU accounting per process."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from core.settings import Settings
from facestream.samples import ensure_samples

# Other photos of enrolled people (obama2/3, biden2), one person never enrolled (yaoming), and
# two groups of strangers (t1: 6 faces, gdp: 5 faces). 6 images, 15 faces.
WORKLOAD = ["obama2.jpg", "obama3.jpg", "biden2.jpg", "yaoming.jpg", "t1.jpg", "gdp.jpg"]
# identity -> enrolment photo (not part of the workload).
ENROLMENTS = {"obama": "obama.jpg", "biden": "biden.jpg"}


def machine() -> dict[str, Any]:
    """The facts a reader needs to judge the numbers."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from actors.models.telemetry import switch_off_runtime_telemetry

    switch_off_runtime_telemetry()  # before onnxruntime first initialises here
    import onnxruntime

    return {
        "code": _commit(),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "openvino (the recogniser on CPU)": importlib.metadata.version("openvino"),
        "OMP_NUM_THREADS (bench and stack)": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _commit() -> str:
    """The repository's commit, marked dirty when the working tree differs from it."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("log", "-1", "--format=%h %cI")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def describe_machine() -> dict[str, Any]:
    """``machine()``, printed as a table and returned (for the benchmark's JSON line)."""
    info = machine()
    print_table(
        "machine",
        ["what", "value"],
        [[k, ", ".join(v) if isinstance(v, list) else v] for k, v in info.items()],
    )
    return info


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A Markdown table (so that the output pastes into BENCHMARKS.md as is)."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(f"\n### {title}\n")
    print(line(list(columns)))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(line(row))
    print(flush=True)


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    arr = np.asarray(values_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(arr.max())}


def rounded(obj: Any, digits: int = 3) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def emit_json(bench: str, figures: dict[str, Any]) -> None:
    """The last line of every benchmark: its figures, machine-readable."""
    print(json.dumps({"bench": bench, **rounded(figures)}), flush=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sample_photos(names: Sequence[str] = WORKLOAD) -> list[tuple[str, bytes]]:
    folder = ensure_samples(Settings().cache_dir)
    return [(name, (folder / name).read_bytes()) for name in names]


# -- CPU accounting ---------------------------------------------------------------------------


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def machine_busy_seconds() -> float:
    """CPU seconds spent on anything but idle, summed over every core."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class ForeignLoad:
    """Cores kept busy by other processes (another user's work) from now on: ``cores(ours)``
    is the machine's busy time since, less ``ours`` CPU seconds, per second of wall time."""

    def __init__(self) -> None:
        self.at, self.busy = time.monotonic(), machine_busy_seconds()

    def cores(self, ours_s: float) -> float:
        others = machine_busy_seconds() - self.busy - ours_s
        return max(0.0, others / (time.monotonic() - self.at))


@dataclass
class CpuSnapshot:
    at: float
    machine_busy: float
    per_pid: dict[int, tuple[str, float]]  # pid -> (label, cpu seconds)


class CpuMeter:
    """CPU seconds per labelled group of processes.

    ``trees`` are counted with all their descendants, ``singles`` alone (e.g. this process,
    whose children are the stack's processes). ``classify(proc, root_label)`` names a
    process; processes that start between two snapshots count from zero.
    """

    def __init__(
        self,
        trees: dict[str, int],
        singles: dict[str, int],
        classify: Callable[[psutil.Process, str], str] | None = None,
    ) -> None:
        self.trees, self.singles = trees, singles
        self.classify = classify or (lambda _proc, label: label)

    def _processes(self) -> Iterator[tuple[str, psutil.Process]]:
        for label, pid in self.trees.items():
            try:
                root = psutil.Process(pid)
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for proc in [root, *children]:
                yield self.classify(proc, label), proc
        for label, pid in self.singles.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                yield label, psutil.Process(pid)

    def snapshot(self) -> CpuSnapshot:
        per_pid: dict[int, tuple[str, float]] = {}
        for label, proc in self._processes():
            seconds = _cpu_seconds(proc)
            if seconds is not None and proc.pid not in per_pid:
                per_pid[proc.pid] = (label, seconds)
        return CpuSnapshot(time.monotonic(), machine_busy_seconds(), per_pid)

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per label between two snapshots, plus ``other processes`` (the rest of
        the machine's busy time: another user's work shows up there)."""
        out: dict[str, float] = {}
        for pid, (label, seconds) in after.per_pid.items():
            start = before.per_pid.get(pid, (label, 0.0))[1]
            out[label] = out.get(label, 0.0) + max(0.0, seconds - start)
        ours = sum(out.values())
        out["other processes"] = max(0.0, after.machine_busy - before.machine_busy - ours)
        return out
