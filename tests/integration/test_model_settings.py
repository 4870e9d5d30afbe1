"""The model settings reach the runtime: batched detection (auto: off on CPU), the decode
pool's threads and its memory budget, through load_face_model as the actors load it."""

from __future__ import annotations

import pytest

from actors.models import load_face_model
from core.settings import Settings, SettingsError

pytestmark = pytest.mark.integration


def test_the_defaults_are_todays_behaviour_on_cpu() -> None:
    model = load_face_model(Settings().override(model__providers=["CPUExecutionProvider"]))
    assert not model.detects_in_batches  # auto: slower on CPU (BENCHMARKS.md)
    assert model.decode_threads == 2
    assert model.decode_budget_bytes == 256 * 2**20


def test_each_setting_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MODEL__BATCHED_DETECTION", "on")
    monkeypatch.setenv("FACESTREAM_MODEL__DECODE_THREADS", "0")
    monkeypatch.setenv("FACESTREAM_MODEL__DECODE_BUDGET_MIB", "64")
    model = load_face_model(Settings())
    assert model.detects_in_batches
    assert model.decode_threads == 0
    assert model.decode_budget_bytes == 64 * 2**20


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FACESTREAM_MODEL__BATCHED_DETECTION", "yes", "'auto', 'on' or 'off'"),
        ("FACESTREAM_MODEL__DECODE_THREADS", "-1", "greater than or equal to 0"),
        ("FACESTREAM_MODEL__DECODE_BUDGET_MIB", "8", "greater than or equal to 16"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}: .*{says}"):
        Settings()
