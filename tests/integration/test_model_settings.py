"""The model settings reach the runtime: batched detection (auto: off on CPU), the decode
pool's threads and its memory budget, the model calls run at once, the recogniser's runtime
(auto: OpenVINO on CPU), through load_face_model as the actors load it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.models import load_face_model
from core.settings import Settings, SettingsError

pytestmark = pytest.mark.integration


def test_the_defaults_are_todays_behaviour_on_cpu() -> None:
    model = load_face_model(Settings().override(model__providers=["CPUExecutionProvider"]))
    assert not model.detects_in_batches  # auto: slower on CPU (BENCHMARKS.md)
    assert model.decode_threads == 2
    assert model.decode_budget_bytes == 256 * 2**20
    assert model.compute_threads == 2
    assert model.recognizer_runtime == "openvino"
    assert model.recognizer.session.get_providers() == ["OpenVINO-CPU"]
    assert model.detector.session.get_providers() == ["CPUExecutionProvider"]


def test_each_setting_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MODEL__BATCHED_DETECTION", "on")
    monkeypatch.setenv("FACESTREAM_MODEL__DECODE_THREADS", "0")
    monkeypatch.setenv("FACESTREAM_MODEL__DECODE_BUDGET_MIB", "64")
    monkeypatch.setenv("FACESTREAM_MODEL__COMPUTE_THREADS", "1")
    monkeypatch.setenv("FACESTREAM_MODEL__RECOGNIZER_RUNTIME", "onnxruntime")
    model = load_face_model(Settings())
    assert model.detects_in_batches
    assert model.decode_threads == 0
    assert model.decode_budget_bytes == 64 * 2**20
    assert model.compute_threads == 1
    assert model.recognizer.session.get_providers() == ["CPUExecutionProvider"]


def test_the_openvino_recogniser_embeds_as_onnxruntime_does(samples: Path) -> None:
    """The recogniser on OpenVINO (the CPU default) gives onnxruntime's embeddings: fp32 on
    every CPU (the plugin's default is bf16 where the CPU has it, which would not), real
    photos, crowds and a batch of several crops per call among them."""
    photos = ["t1.jpg", "obama2.jpg", "players.jpg", "biden2.jpg", "gdp.jpg", "obama3.jpg"]
    blobs = [(samples / name).read_bytes() for name in photos]
    results = {}
    for runtime in ("onnxruntime", "openvino"):
        settings = Settings().override(
            model__providers=["CPUExecutionProvider"],
            model__recognizer_runtime=runtime,
            model__intra_op_threads=2,  # 8 crops a call
        )
        results[runtime] = load_face_model(settings).analyze_bytes(blobs, settings.limits)
    for name, ort, ov in zip(photos, results["onnxruntime"], results["openvino"], strict=True):
        assert [f.bbox for f in ort.faces] == [f.bbox for f in ov.faces], name
        assert len(ov.embeddings) > 0
        cosines = np.sum(ort.embeddings * ov.embeddings, axis=1)
        assert float(cosines.min()) >= 0.9999, f"{name}: {cosines.min():.6f}"


LOAD_AND_COUNT_FORKS = """
import os
forks = []
os.register_at_fork(before=lambda: forks.append(1))
from actors.models import load_face_model
from core.settings import Settings
settings = Settings().override(model__providers=["CPUExecutionProvider"])
model = load_face_model(settings)
assert model.recognizer_runtime == "openvino", model.recognizer_runtime
print(len(forks))
"""


def test_loading_the_models_keeps_no_telemetry_id_and_forks_nothing(tmp_path: Path) -> None:
    """onnxruntime and openvino send usage telemetry and keep an id in the home folder unless
    told not to, openvino from a child it forks (unsafe in a Ray replica's gRPC-threaded
    process), and facestream stores and sends nothing it was not asked to. A fresh
    interpreter (a runtime initialises once per process), a home folder of its own to look
    into afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "FACESTREAM_CACHE_DIR": str(Settings().cache_dir),  # the models, not under HOME
    }
    for ci in ("CI", "GITHUB_ACTIONS", "TF_BUILD", "JENKINS_URL"):
        env.pop(ci, None)  # both stay quiet in CI jobs: test what users run
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_COUNT_FORKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", f"forks while loading: {done.stdout}"
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


def test_concurrent_model_calls_find_the_same_faces_and_embeddings(samples: Path) -> None:
    """compute_threads runs the detector and the recogniser on several images and faces at
    once, in one onnxruntime session: a batch of real photos (crowds among them) and a lone
    crowd photo come out as one call at a time makes them."""
    settings = Settings().override(model__providers=["CPUExecutionProvider"])
    photos = ["t1.jpg", "obama2.jpg", "players.jpg", "biden2.jpg", "gdp.jpg", "obama3.jpg"]
    blobs = [(samples / name).read_bytes() for name in photos]
    model = load_face_model(settings)
    for batch in (blobs, blobs[:1]):
        results = {}
        for threads in (1, 4):
            model.compute_threads = threads
            results[threads] = model.analyze_bytes(batch, settings.limits)
        for one, many in zip(results[1], results[4], strict=True):
            assert [f.bbox for f in one.faces] == [f.bbox for f in many.faces]
            assert len(one.embeddings) > 0
            np.testing.assert_array_equal(one.embeddings, many.embeddings)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FACESTREAM_MODEL__BATCHED_DETECTION", "yes", "'auto', 'on' or 'off'"),
        ("FACESTREAM_MODEL__DECODE_THREADS", "-1", "greater than or equal to 0"),
        ("FACESTREAM_MODEL__DECODE_BUDGET_MIB", "8", "greater than or equal to 16"),
        ("FACESTREAM_MODEL__COMPUTE_THREADS", "0", "greater than or equal to 1"),
        ("FACESTREAM_MODEL__RECOGNIZER_RUNTIME", "openvno", "'auto', 'openvino' or 'onnxruntime'"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}: .*{says}"):
        Settings()


def test_a_replica_starts_under_image_limits_its_self_check_photo_exceeds() -> None:
    """The self-check photo (t1.jpg, 1.13 Mpx, 129 KB) was checked under the deployment's own
    limits: a 1-megapixel max_pixels failed every replica at start, and no worker came up."""
    from actors.serving import FaceModelReplica

    strict = Settings().override(limits__max_pixels=1_000_000, limits__max_bytes=100_000)
    replica = FaceModelReplica(strict)
    assert len(replica.self_check.reference) == 6 and replica.self_check.problem() is None
