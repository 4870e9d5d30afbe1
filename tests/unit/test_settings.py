from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from pydantic import SecretStr

from core.settings import MESSAGE_HEADROOM_BYTES, PROFILE_TUNING, Settings, SettingsError

SECRET = "k3y-that-must-not-leak"


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


def one_line_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The error Settings() raises with these variables set; it must be one line."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings()
    message = str(info.value)
    assert "\n" not in message
    return message


# -- 1. an unknown FACESTREAM_ variable is an error, at any level ------------------------------


def test_misspelt_group_variable_is_an_error_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    assert one_line_error(monkeypatch, FACESTREAM_GALERY__PATH="/srv/gallery") == (
        "FACESTREAM_GALERY__PATH: no such setting (nearest valid one: FACESTREAM_GALLERY__PATH)"
    )


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("FACESTREAM_GALLERY__PAHT", "FACESTREAM_GALLERY__PATH"),
        ("FACESTREAM_QUALITY__ENROL__MIN_FACE", "FACESTREAM_QUALITY__ENROL__MIN_FACE_PX"),
        ("FACESTREAM_LOGLEVEL", "FACESTREAM_LOG_LEVEL"),
        ("facestream_matching__treshold", "FACESTREAM_MATCHING__THRESHOLD"),
    ],
)
def test_unknown_variable_names_the_nearest_valid_one(
    monkeypatch: pytest.MonkeyPatch, name: str, nearest: str
) -> None:
    message = one_line_error(monkeypatch, **{name: "1"})
    assert message.startswith(f"{name}: ") and message.endswith(f"{nearest})")


def test_every_unknown_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = one_line_error(monkeypatch, FACESTREAM_GALERY__PATH="x", FACESTREAM_BATCH__SIZ="2")
    assert "FACESTREAM_GALERY__PATH" in message and "FACESTREAM_BATCH__SIZ" in message


def test_variables_without_the_prefix_stay_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["GALERY__PATH", "XFACESTREAM_GALERY", "FACESTREAMING", "RAY_ADDRESS"]:
        monkeypatch.setenv(name, "1")
    assert Settings().matching.threshold == 0.4


def test_a_group_as_json_is_a_valid_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MATCHING", '{"threshold": 0.5}')
    assert Settings().matching.threshold == 0.5


def test_misspelt_override_is_an_error_not_ignored() -> None:
    with pytest.raises(SettingsError, match=r"FACESTREAM_RETRY__BACKOF_S: .*RETRY__BACKOFF_S\)"):
        Settings().override(retry__backof_s=0.0)
    with pytest.raises(SettingsError, match=r"FACESTREAM_LOG_LEVLE: .*FACESTREAM_LOG_LEVEL\)"):
        Settings().override(log_levle="debug")  # top level: was silently ignored


def test_cli_shows_a_settings_error_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from facestream.cli import _settings

    monkeypatch.setenv("FACESTREAM_GALERY__PATH", "x")
    with pytest.raises(click.ClickException) as info:
        _settings()
    assert info.value.message.startswith("invalid settings: FACESTREAM_GALERY__PATH: ")
    assert "\n" not in info.value.message


# -- 2. secrets are never shown -------------------------------------------------------------


def with_secrets() -> Settings:
    return Settings().override(
        gallery__backend="server",
        gallery__url="https://qdrant:6333",
        gallery__api_key=SECRET,
        kafka__security__protocol="SASL_SSL",
        kafka__security__sasl_username="facestream",
        kafka__security__sasl_password=SECRET,
    )


def test_api_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = with_secrets()
    assert isinstance(settings.gallery.api_key, SecretStr)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in repr(settings.gallery) and SECRET not in str(settings.gallery)
    assert settings.gallery.api_key.get_secret_value() == SECRET
    monkeypatch.setenv("FACESTREAM_GALLERY__BACKEND", "server")
    monkeypatch.setenv("FACESTREAM_GALLERY__URL", "https://qdrant:6333")
    monkeypatch.setenv("FACESTREAM_GALLERY__API_KEY", SECRET)
    assert SECRET not in repr(Settings())


def test_child_processes_still_get_the_secrets() -> None:
    env = with_secrets().env()
    assert env["FACESTREAM_GALLERY__API_KEY"] == SECRET
    assert env["FACESTREAM_KAFKA__SECURITY__SASL_PASSWORD"] == SECRET


def test_a_wrong_secret_is_not_echoed_in_the_error() -> None:
    with pytest.raises(SettingsError, match="FACESTREAM_GALLERY__API_KEY") as info:
        Settings().override(gallery__api_key=[SECRET])
    assert SECRET not in str(info.value)


def test_qdrant_client_gets_the_revealed_key() -> None:
    from actors.gallery.server import make_client

    client = make_client("https://qdrant.example:6333", with_secrets().gallery.api_key)
    assert client._client._api_key == SECRET


# -- 3. secrets never travel to actors ------------------------------------------------------


def test_without_secrets_removes_every_secret_and_nothing_else() -> None:
    settings = with_secrets()
    shipped = settings.without_secrets()
    assert SECRET.encode() in pickle.dumps(settings)  # what the test would catch
    assert SECRET.encode() not in pickle.dumps(shipped)
    assert shipped.gallery.api_key is None and shipped.kafka.security.sasl_password is None
    assert settings.gallery.api_key is not None  # the original keeps them
    expected = settings.model_dump()
    expected["gallery"]["api_key"] = expected["kafka"]["security"]["sasl_password"] = None
    assert shipped.model_dump() == expected


def test_settings_sent_to_actors_hold_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import cluster, serving

    sent: list[tuple[Any, ...]] = []

    class FakeActorClass:
        def options(self, **_: Any) -> FakeActorClass:
            return self

        def remote(self, *args: Any) -> Any:
            sent.append(args)
            return SimpleNamespace(info=SimpleNamespace(remote=lambda: None))

    app = serving.ModelApp("app", None, "m@1", 512, ["CPUExecutionProvider"], None)  # type: ignore[arg-type]
    monkeypatch.setattr(cluster, "ensure_model_app", lambda settings: app)
    monkeypatch.setattr(cluster, "GalleryActor", FakeActorClass())
    monkeypatch.setattr(cluster.ray, "get", lambda _: None)
    settings = with_secrets().override(ray__max_replicas=2)
    cluster.ensure_actors(settings)
    # What Serve keeps to start the model replicas: the application's bound arguments.
    bound = serving.model_application(settings)._bound_deployment.init_args
    sent.append(bound)
    assert len(sent) == 2  # the gallery actor and the model application
    assert all(isinstance(args[0], Settings) for args in sent)
    assert SECRET.encode() not in pickle.dumps(sent)


def test_an_actor_reads_the_secrets_from_its_own_environment() -> None:
    shipped = with_secrets().without_secrets()
    restored = shipped.with_env_secrets({"FACESTREAM_GALLERY__API_KEY": "from-the-node"})
    assert restored.gallery.api_key is not None
    assert restored.gallery.api_key.get_secret_value() == "from-the-node"
    assert restored.kafka.security.sasl_password is None  # not in that environment
    assert shipped.with_env_secrets({}).gallery.api_key is None


# -- 4. settings that contradict each other -------------------------------------------------


def test_default_byte_limit_fits_in_a_kafka_message() -> None:
    settings = Settings()
    assert settings.limits.max_bytes <= settings.kafka.max_message_bytes - MESSAGE_HEADROOM_BYTES


@pytest.mark.parametrize(
    "changes",
    [
        {"limits__max_bytes": 20 * 1024 * 1024},  # the old default: too_many_bytes never fired
        {"kafka__max_message_bytes": 4 * 1024 * 1024},
        {"limits__max_bytes": 1_000_000, "kafka__max_message_bytes": 1_000_000},
    ],
)
def test_byte_limit_beyond_the_message_size_is_refused(changes: dict[str, int]) -> None:
    with pytest.raises(SettingsError) as info:
        Settings().override(**changes)
    message = str(info.value)
    assert "FACESTREAM_LIMITS__MAX_BYTES" in message
    assert "FACESTREAM_KAFKA__MAX_MESSAGE_BYTES" in message


def test_byte_limit_with_headroom_to_spare_is_accepted() -> None:
    size = 1_000_000
    settings = Settings().override(
        limits__max_bytes=size - MESSAGE_HEADROOM_BYTES, kafka__max_message_bytes=size
    )
    assert settings.limits.max_bytes == size - MESSAGE_HEADROOM_BYTES


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FACESTREAM_TOPICS__DLQ": "images"}, ("TOPICS__DLQ=images", "TOPICS__IMAGES")),
        ({"FACESTREAM_TOPICS__MATCHES": "images"}, ("TOPICS__MATCHES=images", "TOPICS__IMAGES")),
        ({"FACESTREAM_TOPICS__ENROLLMENT_ACKS": "enrollments"},
         ("TOPICS__ENROLLMENT_ACKS=enrollments", "TOPICS__ENROLLMENTS")),
        ({"FACESTREAM_TOPICS__AUDIT": "enrollments.state"},
         ("TOPICS__AUDIT=enrollments.state", "TOPICS__ENROLLMENTS (its .state topic)")),
    ],
)  # fmt: skip
def test_one_topic_in_two_roles_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: tuple[str, str]
) -> None:
    """A DLQ on the images topic read its own DLQ events back as bad images, for ever; acks
    on the requests topic answered themselves; audit records on the state topic would sit in
    the gallery's compacted source of truth."""
    message = one_line_error(monkeypatch, **env)
    assert all(name in message for name in named), message


def test_a_producer_batch_larger_than_a_message_is_refused() -> None:
    """Two large images in one batch: a batch over message.max.bytes, refused by Kafka."""
    with pytest.raises(SettingsError) as info:
        Settings(profile="production").override(
            kafka__max_message_bytes=1_000_000,
            limits__max_bytes=900_000,
            kafka__tuning__producer_max_batch_size=2_000_000,
        )
    assert "PRODUCER_MAX_BATCH_SIZE=2000000" in str(info.value)
    assert "MAX_MESSAGE_BYTES=1000000" in str(info.value)


def test_heartbeat_must_be_shorter_than_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    message = one_line_error(monkeypatch, FACESTREAM_KAFKA__TUNING__HEARTBEAT_INTERVAL_S="5")
    assert "HEARTBEAT_INTERVAL_S=5.0" in message and "SESSION_TIMEOUT_S=4.0" in message
    # Kafka's rule, a third of the session: 1.5 s of the embedded profile's 4 s is too much.
    message = one_line_error(monkeypatch, FACESTREAM_KAFKA__TUNING__HEARTBEAT_INTERVAL_S="1.5")
    assert "at most a third of FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S=4.0" in message
    assert Settings(profile="production").override(
        kafka__tuning__heartbeat_interval_s=5
    ).tuning == PROFILE_TUNING["production"].model_copy(update={"heartbeat_interval_s": 5.0})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FACESTREAM_RAY__MIN_REPLICAS": "3", "FACESTREAM_RAY__MAX_REPLICAS": "2"},
         ("MAX_REPLICAS=2", "MIN_REPLICAS=3")),
        ({"FACESTREAM_RAY__MAX_BATCH_SIZE": "8"}, ("MAX_BATCH_SIZE=8", "MAX_ONGOING_REQUESTS=4")),
    ],
)  # fmt: skip
def test_autoscaling_settings_that_contradict_each_other_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: tuple[str, str]
) -> None:
    message = one_line_error(monkeypatch, **env)
    assert all(name in message for name in named), message


# -- 5. dangerous values are refused, naming the variable -----------------------------------

COUNTS = [
    "MATCHING__TOP_K",
    "BATCH__SIZE",
    "BATCH__IN_FLIGHT_BATCHES",
    "TOPICS__IMAGES_PARTITIONS",
    "TOPICS__REPLICATION_FACTOR",
    "RAY__MIN_REPLICAS",
    "MODEL__MAX_FACES_PER_IMAGE",
    "RETRY__ATTEMPTS",
    "METRICS__MAX_SOURCES",
    "MODEL__INTRA_OP_THREADS",
    "GALLERY__HNSW_EF",
]
REFUSED = [
    *[("MATCHING__THRESHOLD", v) for v in ["nan", "inf", "-inf", "1.01", "-1.5"]],
    *[("MODEL__DET_THRESHOLD", v) for v in ["nan", "1.5", "-0.1"]],
    ("QUALITY__SEARCH__MIN_DET_SCORE", "1.1"),
    ("QUALITY__ENROL__MIN_DET_SCORE", "-0.1"),
    ("QUALITY__SEARCH__MIN_FACE_PX", "-1"),
    *[(name, "0") for name in COUNTS],
    ("BATCH__SIZE", "1025"),
    *[("METRICS__PORT", v) for v in ["0", "65536"]],
    ("RAY__METRICS_EXPORT_PORT", "70000"),
    *[("KAFKA__TUNING__SESSION_TIMEOUT_S", v) for v in ["0", "inf"]],
    ("SIGHTINGS__PURGE_INTERVAL_S", "0"),
    ("SIGHTINGS__TTL_S", "-1"),
    *[("RETRY__BACKOFF_S", v) for v in ["-0.1", "nan"]],
    # 0 would make Faust hold a partial batch until it fills: a lone image never answered.
    *[("BATCH__WAIT_MS", v) for v in ["-1", "0", "60001"]],
    *[(name, "0") for name in ["KAFKA__MAX_MESSAGE_BYTES", "LIMITS__MAX_BYTES"]],
    *[(name, "0") for name in ["LIMITS__MAX_PIXELS", "LIMITS__MIN_SIDE"]],
    *[("MODEL__DET_SIZE", v) for v in ["0", "-32", "650"]],
    ("MODEL__PROVIDERS", "[]"),
    *[("TOPICS__IMAGES", v) for v in ["", "images/raw"]],
    ("LOG_LEVEL", "loud"),
    # Accepted once, and each broke something only later:
    ("KAFKA__TUNING__SESSION_TIMEOUT_S", "91"),  # Faust refused it as the consumer started
    ("KAFKA__MAX_MESSAGE_BYTES", str(2**31)),  # every fetch failed (int32 in the protocol)
    ("RAY__BATCH_WAIT_S", "2"),  # every lone batch waited it out
    *[(name, "0.5") for name in ["RAY__LOOK_BACK_S", "RAY__HEALTH_CHECK_PERIOD_S"]],
    ("SIGHTINGS__PURGE_INTERVAL_S", "0.5"),
    ("GALLERY__HNSW_EF_CONSTRUCT", "3"),  # the Qdrant server refused the collection
    ("MATCHING__TOP_K", "101"),
    ("RETRY__BACKOFF_S", "11"),  # cut to the policy's 10 s, silently
    # A build stopped for searches nearly all the time would never end.
    *[("GALLERY__BUILD_PAUSE_SHARE", v) for v in ["-0.1", "0.95"]],
]


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_dangerous_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    variable = f"FACESTREAM_{name}"
    message = one_line_error(monkeypatch, **{variable: value})
    assert message.startswith(f"{variable}: ")
    assert message.endswith((f"got {value!r}", f"got {value}"))  # the text, or parsed JSON


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MATCHING__THRESHOLD", "-1", -1.0),
        ("MATCHING__THRESHOLD", "1", 1.0),
        ("MODEL__DET_THRESHOLD", "0", 0.0),
        ("RETRY__BACKOFF_S", "0", 0.0),  # what the unit tests use
        ("BATCH__WAIT_MS", "1", 1),
        ("BATCH__SIZE", "1024", 1024),
        ("MODEL__DET_SIZE", "32", 32),
        ("METRICS__PORT", "65535", 65535),
        ("LOG_LEVEL", "DEBUG", "debug"),
    ],
)
def test_values_at_the_bounds_are_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: object
) -> None:
    monkeypatch.setenv(f"FACESTREAM_{name}", value)
    if name == "MATCHING__THRESHOLD":  # the review band may not lie above the threshold
        monkeypatch.setenv("FACESTREAM_MATCHING__REVIEW_THRESHOLD", value)
    group, _, leaf = name.lower().rpartition("__")
    assert getattr(getattr(Settings(), group) if group else Settings(), leaf) == expected


def test_a_review_band_above_the_match_threshold_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACESTREAM_MATCHING__REVIEW_THRESHOLD", "0.5")
    with pytest.raises(SettingsError, match="FACESTREAM_MATCHING__REVIEW_THRESHOLD"):
        Settings()


def test_override_reports_the_variable_too() -> None:
    with pytest.raises(SettingsError, match=r"^FACESTREAM_RETRY__ATTEMPTS: .*got 0$"):
        Settings().override(retry__attempts=0)


def test_a_tilde_or_relative_path_is_made_absolute_for_every_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From an env file or compose, "~/gallery" arrives unexpanded: it was a folder named "~"
    under the working directory, and a relative one moved with each process's directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_GALLERY__PATH", "~/faces/gallery")
    monkeypatch.setenv("FACESTREAM_CACHE_DIR", "cache")
    monkeypatch.setenv("FACESTREAM_MODEL__FOLDER", "./models/buffalo_l")
    settings = Settings()
    assert settings.gallery.path == Path.home() / "faces" / "gallery"
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.model.folder == tmp_path / "models" / "buffalo_l"
    assert Settings().override(gallery__path="g").gallery.path == tmp_path / "g"
