"""One typed settings object for every process (env prefix ``FACESTREAM_``).

Nested groups use ``__``: ``FACESTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``,
``FACESTREAM_MATCHING__THRESHOLD=0.45``. Defaults run the embedded stack out of the box;
``FACESTREAM_PROFILE=production`` switches broker tuning to Apache Kafka values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["embedded", "production"]


def _data_home() -> Path:
    return Path.home() / ".local" / "share" / "facestream"


def _cache_home() -> Path:
    return Path.home() / ".cache" / "facestream"


class Group(BaseModel):
    """A settings group: a misspelt field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class BrokerTuning(Group):
    """Client tuning that depends on the broker. ``None`` means: the profile's value.

    The embedded profile runs on Tansu, whose quirks (see README, "Embedded broker") need a
    short session timeout and one record per producer batch. Production (Apache Kafka) keeps
    the Faust/aiokafka defaults.
    """

    session_timeout_s: float | None = None
    heartbeat_interval_s: float | None = None
    producer_max_batch_size: int | None = None

    def resolved(self, profile: Profile) -> BrokerTuning:
        base = PROFILE_TUNING[profile]
        return BrokerTuning(
            **{k: v if v is not None else getattr(base, k) for k, v in self.model_dump().items()}
        )


PROFILE_TUNING: dict[Profile, BrokerTuning] = {
    # Tansu holds JoinGroup ~half the session timeout; its ListOffsets(latest) is wrong when
    # a batch holds several records, so batches carry one record.
    "embedded": BrokerTuning(
        session_timeout_s=4.0, heartbeat_interval_s=0.5, producer_max_batch_size=1
    ),
    "production": BrokerTuning(
        session_timeout_s=60.0, heartbeat_interval_s=3.0, producer_max_batch_size=16384
    ),
}


class KafkaSecurity(Group):
    """Passed to every Kafka client (Faust, aiokafka producers, consumers and admin)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"kafka.security.protocol={self.protocol} needs sasl_username/password"
            )
        return self


class KafkaSettings(Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "facestream"
    max_message_bytes: int = 8 * 1024 * 1024
    tuning: BrokerTuning = BrokerTuning()
    security: KafkaSecurity = KafkaSecurity()

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class TopicSettings(Group):
    images: str = "images"
    matches: str = "matches"
    dlq: str = "images.dlq"
    enrollments: str = "enrollments"
    enrollment_acks: str = "enrollments.acks"
    audit: str = "audit"
    images_partitions: int = 4
    replication_factor: int = 1


class ModelSettings(Group):
    # None: the bundled default pack (SCRFD-500M + w600k_mbf) copied into cache_dir/models.
    # Any insightface-format folder (one detection and one recognition .onnx) replaces it.
    folder: Path | None = None
    # "auto": CUDAExecutionProvider when onnxruntime offers it, else CPU.
    providers: list[str] | Literal["auto"] = "auto"
    det_size: int = 640
    det_threshold: float = 0.5
    intra_op_threads: int = 1
    # Faces beyond this many per image (largest first) are not embedded: bounds memory.
    max_faces_per_image: int = 64


class ImageLimits(Group):
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16


class BatchSettings(Group):
    size: int = 8
    wait_ms: int = 50
    # Concurrent batches per worker: bounds in-flight images to size * in_flight_batches.
    in_flight_batches: int = 2


class MatchingSettings(Group):
    # Cosine similarity of L2-normalised embeddings, in [-1, 1]. See README "Thresholds".
    threshold: float = 0.4
    top_k: int = 3


class QualityGates(Group):
    """A face failing any gate is reported as rejected, with reasons, and never searched."""

    min_face_px: float = 24.0
    min_det_score: float = 0.5
    min_sharpness: float = 40.0
    max_abs_yaw: float = 0.7


class QualitySettings(Group):
    search: QualityGates = QualityGates()
    # Enrolment photos define a person: stricter than search.
    enrol: QualityGates = QualityGates(
        min_face_px=64.0, min_det_score=0.6, min_sharpness=80.0, max_abs_yaw=0.4
    )


class RetrySettings(Group):
    # Compute-side failures (a dead actor, an unreachable gallery) are retried this many
    # times with exponential backoff before the images go to the DLQ as processing_failed.
    attempts: int = Field(default=3, ge=1)
    backoff_s: float = 0.5


class GallerySettings(Group):
    backend: Literal["edge", "server"] = "edge"
    path: Path = Field(default_factory=lambda: _data_home() / "gallery")
    url: str | None = None  # server backend, e.g. http://qdrant:6333
    api_key: str | None = None
    collection: str = "faces"
    hnsw_ef: int = 128


class PrivacySettings(Group):
    # Enrolment must name its legal basis (a consent reference or a legal ground, e.g.
    # "consent:form-2026-118" or "GDPR art. 6(1)(e)"). Waiving it is an explicit decision.
    require_basis: bool = True


class SightingsSettings(Group):
    """Opt-in: keep unknown faces, to search them later. Off by default (nothing is stored
    about people who are not enrolled); when on, every sighting expires after ``ttl_s``."""

    enabled: bool = False
    ttl_s: float | None = None  # mandatory when enabled
    purge_interval_s: float = 60.0

    @model_validator(mode="after")
    def _check(self) -> SightingsSettings:
        if self.enabled and not (self.ttl_s and self.ttl_s > 0):
            raise ValueError("sightings.enabled needs a positive sightings.ttl_s (retention)")
        return self


class MetricsSettings(Group):
    enabled: bool = True
    # Bound to localhost unless configured: metrics reveal traffic patterns.
    host: str = "127.0.0.1"
    port: int = 9464
    max_sources: int = 100  # distinct ``source`` label values; the rest count as "other"
    # Where `facestream status` and `up --with-prometheus` find Prometheus.
    prometheus_url: str = "http://127.0.0.1:9090"


class RaySettings(Group):
    address: str | None = None  # None: start a local Ray inside the worker
    namespace: str = "facestream"
    num_cpus: int | None = None
    model_replicas: int = 1
    model_num_cpus: float = 1.0
    model_num_gpus: float = 0.0
    # The local Ray's metrics agent (actor stage timings), when the worker starts Ray itself.
    metrics_export_port: int | None = 9465


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACESTREAM_", env_nested_delimiter="__", extra="ignore"
    )

    profile: Profile = "embedded"
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    model: ModelSettings = ModelSettings()
    limits: ImageLimits = ImageLimits()
    batch: BatchSettings = BatchSettings()
    matching: MatchingSettings = MatchingSettings()
    quality: QualitySettings = QualitySettings()
    retry: RetrySettings = RetrySettings()
    gallery: GallerySettings = GallerySettings()
    ray: RaySettings = RaySettings()
    privacy: PrivacySettings = PrivacySettings()
    sightings: SightingsSettings = SightingsSettings()
    metrics: MetricsSettings = MetricsSettings()
    cache_dir: Path = Field(default_factory=_cache_home)
    log_level: str = "info"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.gallery.backend == "server" and not self.gallery.url:
            raise ValueError("gallery.backend=server needs gallery.url (FACESTREAM_GALLERY__URL)")
        if not 0 < self.batch.size <= 1024:
            raise ValueError("batch.size must be in 1..1024")
        return self

    def override(self, **changes: object) -> Settings:
        """A copy with ``group__field=value`` changes, validated like the environment."""
        data = self.model_dump()
        for path, value in changes.items():
            *groups, leaf = path.split("__")
            node = data
            for g in groups:
                node = node[g]
            node[leaf] = value
        return type(self)(**data)

    @property
    def tuning(self) -> BrokerTuning:
        return self.kafka.tuning.resolved(self.profile)

    def env(self) -> dict[str, str]:
        """These settings as FACESTREAM_ variables, to hand to a child process."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}__{k.upper()}" if prefix else k.upper(), v)
            elif isinstance(value, SecretStr):  # the child needs the secret itself
                out[f"FACESTREAM_{prefix}"] = value.get_secret_value()
            elif isinstance(value, str | Path):
                out[f"FACESTREAM_{prefix}"] = str(value)
            elif value is not None:
                out[f"FACESTREAM_{prefix}"] = json.dumps(value)

        walk("", self.model_dump())
        return out
