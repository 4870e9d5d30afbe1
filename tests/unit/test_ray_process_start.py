"""``ray start`` exits when its raylet does not register with the GCS within Ray's fixed 30 s
(a loaded CI machine; CI failed once so). The embedded stack starts such a node again, and a
worker starts its own local Ray again when ``ray.init`` fails so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from actors import cluster
from core.settings import Settings
from facestream.embedded import RayProcess, start_ray_process

# Exits 1 (as ray start does on a registration timeout) until it has been started `fails`
# times; then prints ray's startup line and stays up, as `ray start --block` does.
SCRIPT = """
n=$(cat "$1" 2>/dev/null || echo 0); echo $((n + 1)) > "$1"
if [ "$n" -lt "$2" ]; then echo "The current node timed out during startup."; exit 1; fi
echo "Ray runtime started."; exec sleep 60
"""


class FakeRayStart(RayProcess):
    def __init__(self, tmp: Path, fails: int) -> None:
        cmd = ["sh", "-c", SCRIPT, "fake-ray", str(tmp / "starts"), str(fails)]
        super().__init__(cmd, tmp / "ray.log")
        self.wait_for_runtime(60.0)  # only a failure waits it out


def starts(tmp: Path) -> int:
    return int((tmp / "starts").read_text())


def test_a_ray_node_that_exits_before_registering_is_started_again(tmp_path: Path) -> None:
    node = start_ray_process(lambda: FakeRayStart(tmp_path, fails=2))
    try:
        assert node.alive()
        assert starts(tmp_path) == 3
        assert node.log_path.read_text().count("timed out during startup") == 2
    finally:
        node.stop()


def test_a_ray_node_that_never_registers_fails_after_three_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="registering its node with the GCS"):
        start_ray_process(lambda: FakeRayStart(tmp_path, fails=10))
    assert starts(tmp_path) == 3


class FakeRay:
    """``ray.init`` failing as a local start does when its raylet never registers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, []

    def init(self, **kwargs: object) -> None:
        self.calls.append(("init", kwargs.get("address")))
        if sum(c[0] == "init" for c in self.calls) <= self.failures:
            raise Exception("The current node timed out during startup.")

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], FakeRay]:
    def make(failures: int) -> FakeRay:
        fake = FakeRay(failures)
        monkeypatch.setattr(cluster.ray, "init", fake.init)
        monkeypatch.setattr(cluster.ray, "shutdown", fake.shutdown)
        monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
        return fake

    return make


def test_a_worker_whose_local_ray_does_not_start_starts_it_again(
    fake_ray: Callable[[int], FakeRay],
) -> None:
    """Once a worker's own Ray did not come up (an agent's port taken meanwhile) and the
    worker exited: with `facestream up`, the whole stack stops."""
    ray = fake_ray(2)
    cluster.connect_ray(Settings())
    assert [c[0] for c in ray.calls] == ["init", "shutdown", "init", "shutdown", "init"]


def test_a_local_ray_that_never_starts_fails_after_three_starts(
    fake_ray: Callable[[int], FakeRay],
) -> None:
    ray = fake_ray(10)
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.connect_ray(Settings())
    assert [c[0] for c in ray.calls].count("init") == cluster.LOCAL_RAY_STARTS == 3


def test_joining_a_configured_cluster_is_tried_once(fake_ray: Callable[[int], FakeRay]) -> None:
    ray = fake_ray(1)
    with pytest.raises(Exception, match="timed out"):
        cluster.connect_ray(Settings().override(ray__address="10.0.0.1:6379"))
    assert ray.calls == [("init", "10.0.0.1:6379")]
