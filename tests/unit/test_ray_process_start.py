"""``ray start`` exits when its raylet does not register with the GCS within Ray's fixed 30 s
(a loaded CI machine; CI failed once so). The embedded stack starts such a node again."""

from __future__ import annotations

from pathlib import Path

import pytest

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
