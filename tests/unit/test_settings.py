from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import PROFILE_TUNING, Settings


def test_env_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MATCHING__THRESHOLD", "0.45")
    monkeypatch.setenv("FACESTREAM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9092,")
    monkeypatch.setenv("FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S", "9")
    monkeypatch.setenv("FACESTREAM_LOG_LEVEL", "debug")
    monkeypatch.setenv("MATCHING__THRESHOLD", "0.99")  # no prefix: ignored
    s = Settings()
    assert s.matching.threshold == 0.45
    assert s.matching.top_k == 3  # siblings keep their defaults
    assert s.kafka.bootstrap_list == ["k1:9092", "k2:9092"]
    assert s.kafka.tuning.session_timeout_s == 9.0
    assert s.log_level == "debug"


def test_list_field_from_env_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MODEL__PROVIDERS", '["CPUExecutionProvider"]')
    assert Settings().model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_profile_supplies_unset_tuning(profile: str) -> None:
    assert Settings(profile=profile).tuning == PROFILE_TUNING[profile]


def test_profile_defaults_differ() -> None:
    embedded, production = Settings().tuning, Settings(profile="production").tuning
    assert (embedded.session_timeout_s, embedded.producer_max_batch_size) == (4.0, 1)
    assert (production.session_timeout_s, production.producer_max_batch_size) == (60.0, 16384)


def test_profile_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_PROFILE", "production")
    assert Settings().tuning.heartbeat_interval_s == 3.0


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_explicit_tuning_wins_over_profile(profile: str) -> None:
    s = Settings(profile=profile).override(kafka__tuning__producer_max_batch_size=7)
    assert s.tuning.producer_max_batch_size == 7
    assert s.tuning.session_timeout_s == PROFILE_TUNING[profile].session_timeout_s


def test_override_returns_a_changed_copy() -> None:
    base = Settings()
    changed = base.override(retry__backoff_s=0.0, profile="production", batch__size=2)
    assert (changed.retry.backoff_s, changed.profile, changed.batch.size) == (0.0, "production", 2)
    assert (base.retry.backoff_s, base.profile, base.batch.size) == (0.5, "embedded", 8)


def test_override_validates() -> None:
    with pytest.raises(ValueError):
        Settings().override(batch__size=0)
    with pytest.raises(ValueError):
        Settings().override(matching__threshold="high")
    with pytest.raises(KeyError):
        Settings().override(no_such_group__x=1)


def test_override_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MATCHING__TOP_K", "9")
    assert Settings().override(matching__top_k=1).matching.top_k == 1


def test_env_round_trip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parent = Settings().override(
        profile="production",
        kafka__bootstrap_servers="a:1,b:2",
        kafka__tuning__session_timeout_s=12.5,
        model__providers=["CPUExecutionProvider"],
        model__folder=tmp_path / "pack",
        gallery__backend="server",
        gallery__url="http://qdrant:6333",
        ray__address="ray://head:10001",
        cache_dir=tmp_path / "cache",
    )
    env = parent.env()
    assert all(k.startswith("FACESTREAM_") and isinstance(v, str) for k, v in env.items())
    assert env["FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S"] == "12.5"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump() == parent.model_dump()
    assert child.tuning == parent.tuning


def test_env_round_trip_of_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings()
    for name, value in parent.env().items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == parent.model_dump()


def test_server_gallery_needs_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"gallery\.url"):
        Settings(gallery={"backend": "server"})
    monkeypatch.setenv("FACESTREAM_GALLERY__BACKEND", "server")
    with pytest.raises(ValueError, match=r"gallery\.url"):
        Settings()
    monkeypatch.setenv("FACESTREAM_GALLERY__URL", "http://qdrant:6333")
    assert Settings().gallery.url == "http://qdrant:6333"


def test_misspelt_setting_is_an_error_not_ignored() -> None:
    with pytest.raises(ValueError, match="backof_s"):
        Settings().override(retry__backof_s=0.0)


def test_retry_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        Settings().override(retry__attempts=0)
