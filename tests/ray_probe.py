"""What runs on a stack's Ray cluster, asked from a child process (``probe``).

A Ray driver in the test process would keep the first auth token it loaded (Ray caches it)
for good, so each question is a short ``python -m tests.ray_probe COMMAND`` with the stack's
Ray environment; it prints one JSON line.

- ``replicas``: this app id's model applications: Serve's status, replicas by state, and the
  live replica processes (node, pid);
- ``view [LOST_NODE_ID...]``: once every model replica and the gallery actor answer from a
  live node (and the lost nodes are known dead): where each runs;
- ``nodes [LOST_NODE_ID...]``: the alive nodes (id -> node manager port), once the lost
  nodes are known dead;
- ``gallery-gone LOST_NODE_ID...``: once Ray has given up on the gallery actor (dead for
  good, its name free: neither restarting nor placed on another node);
- ``galleries MODEL_ID...``: what the gallery actor of each model serves;
- ``watch``: ``replicas`` once a second, one line each, until stopped (``ReplicaWatch``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def probe(env: dict[str, str], command: str, *args: str, timeout_s: float = 300.0) -> Any:
    """Run ``command`` in a child Ray driver with ``env`` (FACESTREAM_ settings and the Ray
    cluster's RAY_ variables); its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.ray_probe", command, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def live_replicas(app: str) -> list[dict[str, Any]]:
    """The live replica processes of a model application (Ray's actor table: Serve's status
    counts replicas but does not say where they run)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#"
    return [
        {"actor": a["Name"], "node_id": a["Address"]["NodeID"], "pid": a["Pid"]}
        for a in ray._private.state.actors().values()
        if a.get("State") == "ALIVE" and (a.get("Name") or "").startswith(prefix)
    ]


def replicas(settings: Settings) -> dict[str, Any]:
    from actors.serving import model_apps

    return {
        name: {**app, "live": live_replicas(name)} for name, app in model_apps(settings).items()
    }


def galleries(settings: Settings, model_ids: list[str]) -> dict[str, Any]:
    import ray

    from actors.cluster import find_gallery

    return {m: ray.get(find_gallery(settings, m).info.remote(), timeout=60) for m in model_ids}


def alive_nodes(lost: set[str]) -> dict[str, int] | None:
    """Alive node id -> its node manager port; None while a ``lost`` node is still alive."""
    import ray

    nodes = {n["NodeID"]: n["NodeManagerPort"] for n in ray.nodes() if n["Alive"]}
    return None if lost & nodes.keys() else nodes


def nodes(lost: set[str]) -> dict[str, int]:
    return wait_until(lambda: alive_nodes(lost), timeout_s=240, what="nodes", interval_s=1)


def gallery_gone(settings: Settings, lost: set[str]) -> dict[str, Any]:
    import ray

    from actors.cluster import gallery_actor_name
    from actors.serving import model_app_name

    model_id = model_info(model_app_name(settings))["model_id"]

    def gone() -> dict[str, Any] | None:
        if (alive := alive_nodes(lost)) is None:
            return None
        try:
            ray.get_actor(gallery_actor_name(settings, model_id))
        except ValueError:
            return {"nodes": alive}
        return None

    return wait_until(gone, timeout_s=240, what="the gallery actor gone", interval_s=1)


def ask_model(app: str) -> dict[str, Any] | None:
    """The model application's ``info``; None while no replica answers (starting, restarted)."""
    from ray import serve
    from ray.exceptions import RayError

    try:
        return serve.get_app_handle(app).info.remote().result(timeout_s=30)  # type: ignore[no-any-return]
    except (RayError, ValueError, TimeoutError):
        return None


def model_info(app: str) -> dict[str, Any]:
    """The model application's ``info``, asked until a replica answers."""
    return wait_until(lambda: ask_model(app), timeout_s=240, what=f"{app} answering", interval_s=1)


def view(settings: Settings, lost: set[str]) -> dict[str, Any]:
    import ray
    from ray.exceptions import RayError

    from actors.cluster import gallery_actor_name
    from actors.serving import model_app_name, model_apps

    app = model_app_name(settings)

    def settled() -> dict[str, Any] | None:
        if (nodes := alive_nodes(lost)) is None:
            return None
        # A restarted replica or actor answers once Ray has brought it back.
        if (model := ask_model(app)) is None:
            return None
        try:
            gallery = ray.get_actor(gallery_actor_name(settings, model["model_id"]))
            gallery_info = ray.get(gallery.info.remote(), timeout=30)
        except (RayError, ValueError):
            return None
        models = {r["actor"]: r for r in live_replicas(app)}
        if len(models) != model_apps(settings)[app]["replicas"].get("RUNNING", 0):
            return None  # a replica starting or stopping: ask again
        if not {i["node_id"] for i in [*models.values(), gallery_info]} <= nodes.keys():
            return None  # an answer from before a node was lost: ask again
        return {"models": models, "gallery": gallery_info, "nodes": nodes}

    return wait_until(settled, timeout_s=240, what="the cluster settled", interval_s=1)


Replicas = dict[str, dict[str, Any]]  # model application -> what ``replicas`` says of it


class ReplicaWatch:
    """``watch`` in a child process: the model applications as seen each second, kept for
    ``wait`` (one Ray driver for the whole test, not one per question)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_probe", "watch"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.seen: list[tuple[float, Replicas]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.seen.append((time.monotonic(), json.loads(line)))

    def wait(self, ready: Callable[[Replicas], bool], what: str, timeout_s: float) -> Replicas:
        """The first answer, from now on, for which ``ready`` holds."""
        start = len(self.seen)

        def answered() -> Replicas | None:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise RuntimeError(f"the watch ended: {self.proc.stderr.read()[-2000:]}")
            return next((a for _, a in self.seen[start:] if ready(a)), None)

        return wait_until(answered, timeout_s=timeout_s, what=what, interval_s=0.2)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def running(apps: Replicas) -> int:
    """Running model replicas, summed over the applications."""
    return sum(app["replicas"].get("RUNNING", 0) for app in apps.values())


def main(argv: list[str]) -> None:
    import ray

    settings = Settings()
    ray.init(
        address=settings.ray.address or os.environ["RAY_ADDRESS"],
        namespace=settings.ray.namespace,
        log_to_driver=False,
        logging_level="ERROR",
    )
    command, *args = argv
    if command == "replicas":
        answer: Any = replicas(settings)
    elif command == "view":
        answer = view(settings, set(args))
    elif command == "nodes":
        answer = nodes(set(args))
    elif command == "gallery-gone":
        answer = gallery_gone(settings, set(args))
    elif command == "galleries":
        answer = galleries(settings, args)
    elif command == "watch":
        while True:
            print(json.dumps(replicas(settings)), flush=True)
            time.sleep(1.0)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main(sys.argv[1:])
