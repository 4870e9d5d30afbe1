"""One typed settings object for every process (env prefix ``FACESTREAM_``).

Nested groups use ``__``: ``FACESTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``,
``FACESTREAM_MATCHING__THRESHOLD=0.45``. Defaults run the embedded stack out of the box;
``FACESTREAM_PROFILE=production`` switches broker tuning to Apache Kafka values.

Settings are checked at start, and a problem is one line that names the variable: an unknown
``FACESTREAM_`` variable (with the nearest valid one), a value out of range, or settings that
contradict each other. The README's settings table is generated from the field descriptions
(``python -m devtools.settings_table``).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["embedded", "production"]

ENV_PREFIX = "FACESTREAM_"
# Room for a record's key, headers and framing next to an image of limits.max_bytes.
MESSAGE_HEADROOM_BYTES = 64 * 1024

# Constrained types shared by many fields (the README table shows their bounds).
Count = Annotated[int, Field(ge=1)]
Bytes = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Seconds = PositiveFloat
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Score = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
# "~" expanded and made absolute once, here: a value from an env file or compose gets no
# shell expansion (a "~" folder appeared under the working directory), and Ray's actors
# may run from another working directory than the process that read the settings.
AbsolutePath = Annotated[Path, AfterValidator(lambda p: p.expanduser().absolute())]
TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]  # Kafka's rule
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error", "critical"],
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
]


class SettingsError(ValueError):
    """Invalid settings, in one line that names the FACESTREAM_ variables concerned."""


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

    # At most 90: Faust refuses a session longer than its broker request timeout (90 s),
    # but only when the worker's consumer starts.
    session_timeout_s: Seconds | None = Field(
        None,
        le=90,
        description="Consumer group session timeout, seconds; none: the profile's.",
    )
    heartbeat_interval_s: Seconds | None = Field(
        None,
        description="Consumer heartbeat interval, seconds: at most a third of the session"
        " timeout; none: the profile's.",
    )
    producer_max_batch_size: Count | None = Field(
        None,
        description="Producer batch size, bytes (Tansu needs one record per batch); none: the"
        " profile's.",
    )
    fetch_max_wait_ms: Count | None = Field(
        None,
        le=30_000,
        description="Longest a worker's fetch waits for data, ms. Kafka answers a fetch as soon"
        " as data arrives; Tansu holds it this long, which adds to every image's latency;"
        " none: the profile's.",
    )

    def resolved(self, profile: Profile) -> BrokerTuning:
        base = PROFILE_TUNING[profile]
        return BrokerTuning(
            **{k: v if v is not None else getattr(base, k) for k, v in self.model_dump().items()}
        )


PROFILE_TUNING: dict[Profile, BrokerTuning] = {
    # Tansu holds JoinGroup ~half the session timeout; its ListOffsets(latest) is wrong when
    # a batch holds several records, so batches carry one record; it holds a fetch for its
    # whole wait even when data has arrived, so the wait is short.
    "embedded": BrokerTuning(
        session_timeout_s=4.0,
        heartbeat_interval_s=0.5,
        producer_max_batch_size=1,
        fetch_max_wait_ms=20,
    ),
    "production": BrokerTuning(
        session_timeout_s=60.0,
        heartbeat_interval_s=3.0,
        producer_max_batch_size=16384,
        fetch_max_wait_ms=500,  # aiokafka's default; Kafka returns earlier when data arrives
    ),
}


class KafkaSecurity(Group):
    """Passed to every Kafka client (Faust, aiokafka producers, consumers and admin)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism, with a SASL protocol."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (never shown, never sent to Ray actors)."
    )
    ssl_cafile: AbsolutePath | None = Field(None, description="CA bundle that signs the brokers.")
    ssl_certfile: AbsolutePath | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: AbsolutePath | None = Field(None, description="Client private key (mutual TLS).")

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"kafka.security.protocol={self.protocol} needs sasl_username and sasl_password"
                " (FACESTREAM_KAFKA__SECURITY__SASL_USERNAME, __SASL_PASSWORD)"
            )
        return self


class KafkaSettings(Group):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        min_length=1,
        description="Comma-separated broker addresses, e.g. `kafka-1:9092,kafka-2:9092`.",
    )
    app_id: str = Field(
        "facestream",
        min_length=1,
        description="Consumer group of the workers; prefix of the Ray actor names.",
    )
    max_message_bytes: Bytes = Field(
        8 * 1024 * 1024,
        le=2**31 - 1,  # Kafka's fetch sizes are int32: more fails every fetch
        description="Largest Kafka message, bytes: as the broker's `message.max.bytes`.",
    )
    tuning: BrokerTuning = BrokerTuning()
    security: KafkaSecurity = KafkaSecurity()

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class TopicSettings(Group):
    images: TopicName = Field("images", description="Input topic: one image per message.")
    matches: TopicName = Field("matches", description="Output topic: one event per image.")
    dlq: TopicName = Field("images.dlq", description="Bad input and failed images.")
    enrollments: TopicName = Field("enrollments", description="Enrolment requests.")
    enrollment_acks: TopicName = Field(
        "enrollments.acks", description="One outcome per enrolment request."
    )
    audit: TopicName = Field("audit", description="Audit trail of gallery changes.")
    images_partitions: Count = Field(
        4, description="Partitions of the images topic: at least the number of workers."
    )
    replication_factor: Count = Field(
        1, description="Replicas of each topic (3 on a production cluster)."
    )

    @property
    def state(self) -> str:
        """The compacted topic of accepted photos (the gallery's source of truth)."""
        return f"{self.enrollments}.state"

    @model_validator(mode="after")
    def _check(self) -> TopicSettings:
        # One topic in two roles loops (DLQ events read back as images, acks as requests)
        # or mixes records that must not meet (audit records in the compacted gallery log).
        role_of = {self.state: "ENROLLMENTS (its .state topic)"}
        for role in ("IMAGES", "MATCHES", "DLQ", "ENROLLMENTS", "ENROLLMENT_ACKS", "AUDIT"):
            name = getattr(self, role.lower())
            if name in role_of:
                raise ValueError(
                    f"FACESTREAM_TOPICS__{role}={name} is also the topic of"
                    f" FACESTREAM_TOPICS__{role_of[name]}: each role needs its own topic"
                )
            role_of[name] = role
        return self


class ModelSettings(Group):
    folder: AbsolutePath | None = Field(
        None,
        description="An insightface-format model folder (one detection and one recognition"
        " .onnx), e.g. a buffalo_l folder; none: the bundled buffalo_s pack.",
    )
    providers: Annotated[list[str], Field(min_length=1)] | Literal["auto"] = Field(
        "auto",
        description='onnxruntime providers, e.g. `["CUDAExecutionProvider"]`; `auto`: CUDA'
        " when offered, else CPU.",
    )
    recognizer_runtime: Literal["auto", "openvino", "onnxruntime"] = Field(
        "auto",
        description="What runs the recogniser: `openvino` (its CPU plugin, fp32: the same"
        " embeddings, about 2x faster than onnxruntime's CPU provider, BENCHMARKS.md) or"
        " `onnxruntime` (the providers above); `auto`: openvino when the models run on the CPU"
        " provider, else onnxruntime. The detector always runs on onnxruntime.",
    )
    det_size: int = Field(640, gt=0, multiple_of=32, description="Detector input side, pixels.")
    det_threshold: Score = Field(0.5, description="Detector score below which no face is kept.")
    intra_op_threads: Count = Field(
        1, description="onnxruntime threads per model replica: its CPUs."
    )
    max_faces_per_image: Count = Field(
        64, description="Faces embedded per image, largest first: bounds memory and time."
    )
    # "auto" rather than a bool: the right value depends on where the detector runs, which
    # is only known once its session is open (the providers may fall back to CPU).
    batched_detection: Literal["auto", "on", "off"] = Field(
        "auto",
        description="One detector call for the images of a batch (letterboxed to det_size)"
        " instead of one per image; `auto`: on when the detector runs on an accelerator, off"
        " on CPU, where it was slower (BENCHMARKS.md).",
    )
    decode_threads: int = Field(
        2,
        ge=0,
        le=64,
        description="Threads per model replica decoding a batch's images while the model runs"
        " (0: decode in the model's thread).",
    )
    compute_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Model calls one replica runs at once (the detector on different images,"
        " the recogniser on different faces): on CPU, where a call uses intra_op_threads,"
        " a crowd photo or a batch then also uses the cores other replicas leave idle"
        " (1: one call after another).",
    )
    decode_budget_mib: int = Field(
        256,
        ge=16,
        le=65536,
        description="Decoded pixels one batch holds at once, MiB, at most (an image larger than"
        " half of it is decoded alone).",
    )


class ImageLimits(Group):
    max_bytes: Bytes = Field(
        7 * 1024 * 1024,
        description="Larger images are rejected (`too_many_bytes`). At most"
        f" FACESTREAM_KAFKA__MAX_MESSAGE_BYTES - {MESSAGE_HEADROOM_BYTES} (key and headers).",
    )
    max_pixels: Count = Field(
        40_000_000, description="Images with more pixels are rejected, before decoding."
    )
    min_side: Count = Field(16, description="Images with a shorter side are rejected, pixels.")


class BatchSettings(Group):
    size: Count = Field(8, le=1024, description="Images per model call (larger on GPU).")
    # At least 1: Faust's take_events reads a wait of 0 as none at all, and then holds a
    # partial batch until it fills, however long that takes (BENCHMARKS.md, run K).
    wait_ms: int = Field(
        10,
        ge=1,
        le=60_000,
        description="Longest wait for a batch to fill, milliseconds (at least 1): added to a"
        " lone image's latency. A backlog fills batches without waiting; raise it (~20-50) on"
        " GPU.",
    )
    # 4: with the recogniser on OpenVINO a replica finishes a batch before the worker's next
    # one reaches it at 2, and sits idle (36.8-38.4 against 45.6-45.9 images/s on 2 cores).
    in_flight_batches: Count = Field(
        4,
        description="Concurrent batches per worker: in-flight images are at most"
        " size x in_flight_batches. Enough to keep every replica busy while the others'"
        " results travel back (BENCHMARKS.md).",
    )


class MatchingSettings(Group):
    threshold: float = Field(
        0.4,
        ge=-1,
        le=1,
        allow_inf_nan=False,
        description="Cosine similarity of L2-normalised embeddings at which a face matches"
        ' (README "Thresholds").',
    )
    review_threshold: float = Field(
        0.3,
        ge=-1,
        le=1,
        allow_inf_nan=False,
        description="Similarity at which a face below the threshold is still a `review`"
        " candidate, for a person to confirm (at most the threshold; equal to it: no review"
        ' band). README "Thresholds".',
    )
    # At most 100: each face's candidates travel in its match event, which must fit a
    # Kafka message with up to max_faces_per_image faces.
    top_k: Count = Field(3, le=100, description="Candidates reported per face.")

    @model_validator(mode="after")
    def _review_below_match(self) -> MatchingSettings:
        if self.review_threshold > self.threshold:
            raise ValueError(
                "FACESTREAM_MATCHING__REVIEW_THRESHOLD must not exceed"
                " FACESTREAM_MATCHING__THRESHOLD"
            )
        return self


class QualityGates(Group):
    """A face failing any gate is reported as rejected, with reasons, and never searched."""

    min_face_px: NonNegative = Field(
        24.0, description="Faces with a shorter box side, pixels, are `small_face`."
    )
    min_det_score: Score = Field(
        0.5, description="Faces with a lower detection score are `low_det_score`."
    )
    min_sharpness: NonNegative = Field(
        40.0,
        description="Faces whose aligned crop is less sharp (variance of the Laplacian) are"
        " `blurry`.",
    )
    max_abs_yaw: NonNegative = Field(
        0.7,
        description="Faces turned further (nose offset from the eyes' midpoint, in inter-ocular"
        " distances) are `extreme_pose`.",
    )


class QualitySettings(Group):
    search: QualityGates = QualityGates()
    # Enrolment photos define a person: stricter than search.
    enrol: QualityGates = QualityGates(
        min_face_px=64.0, min_det_score=0.6, min_sharpness=80.0, max_abs_yaw=0.4
    )


class RetrySettings(Group):
    attempts: Count = Field(
        3,
        description="Tries of a failed compute call (dead actor, unreachable gallery) before"
        " the images go to the DLQ as `processing_failed`.",
    )
    backoff_s: NonNegative = Field(
        0.5,
        le=10,  # the retry policy's longest wait: more would be cut to it, silently
        description="First retry delay, seconds; doubles at each retry, up to 10.",
    )


class GallerySettings(Group):
    backend: Literal["edge", "server"] = Field(
        "edge", description="`edge`: Qdrant's engine in-process; `server`: a Qdrant server."
    )
    path: AbsolutePath = Field(
        default_factory=lambda: _data_home() / "gallery",
        description="Folder of the edge gallery.",
    )
    url: str | None = Field(
        None, description="Qdrant server URL (server backend), e.g. `https://qdrant:6333`."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Qdrant API key (never shown). Ray nodes need it in their own"
        " environment: it is not sent to actors.",
    )
    collection: str = Field(
        "faces", min_length=1, description="Qdrant collection (alias) of the server gallery."
    )
    hnsw_ef: Count = Field(
        # At 1.1M faces: 384 decided as exact search did in 99.95% of queries, 256 in 99.8%,
        # for 1.3x the search time (BENCHMARKS.md, bench/gallery_ef.py).
        384,
        description="HNSW search breadth (raised to the number of points a search asks for):"
        " recall against speed.",
    )
    hnsw_m: Count = Field(32, description="HNSW links per point: recall and memory against speed.")
    hnsw_ef_construct: int = Field(
        128,
        ge=4,  # Qdrant's own minimum: the server refuses a collection with less
        description="HNSW build breadth: index quality against build time.",
    )
    # turbo4 at 1M faces, ef 384, against int8 the same morning: decisions = exact 100% and
    # recall@1 1.000 for both, 1.61 against 2.28 ms p50 per face, half the RAM (264 B), and
    # the pipeline beside it at 0.85 of its empty-gallery rate against 0.77 (BENCHMARKS.md).
    quantization: Literal["none", "int8", "turbo4", "turbo2", "binary"] = Field(
        "turbo4",
        description="Compressed copy of the vectors that the index searches, rescored with the"
        " originals: `int8` (1 byte per dimension), `turbo4`/`turbo2` (TurboQuant, 4 or 2"
        " bits), `binary` (1 bit), `none`.",
    )
    rescore_oversampling: float = Field(
        2.0,
        ge=1.0,
        le=16.0,
        description="Quantized candidates per wanted point, rescored with the original vectors.",
    )
    index_threshold: Count = Field(
        10_000,
        description="Edge: unindexed photos that start a background index build; below it they"
        " are searched exactly.",
    )
    index_threads: int = Field(
        1,
        ge=0,
        description="Edge: threads of the background index build; 0: the engine's choice"
        " (Qdrant: 8-16, fewer on small CPUs).",
    )
    build_pause_share: float = Field(
        0.5,
        ge=0.0,
        le=0.9,
        description="Edge: the most of a background build's time that searches may keep its"
        " process stopped while they run (a search beside a build that shares its cores ran"
        " 3-7x slower); 0: never stopped, for machines with cores to spare.",
    )


class PrivacySettings(Group):
    require_basis: bool = Field(
        True,
        description='Enrolment must name its legal basis (e.g. "consent:form-2026-118");'
        " false waives it, an explicit decision.",
    )
    allow_duplicate_faces: bool = Field(
        False,
        description="Enrol a photo whose face matches another enrolled identity at or above"
        " `matching.threshold` (a second record of one person); false refuses it"
        " (`duplicate_identity`). Reported in the acknowledgement either way.",
    )


class SightingsSettings(Group):
    """Opt-in: keep unknown faces, to search them later. Off by default (nothing is stored
    about people who are not enrolled); when on, every sighting expires after ``ttl_s``."""

    enabled: bool = Field(False, description="Keep unknown faces, to search them later.")
    ttl_s: Seconds | None = Field(
        None, description="Retention of a sighting, seconds: mandatory when enabled."
    )
    purge_interval_s: Seconds = Field(
        60.0, ge=1, description="How often each worker deletes expired sightings, seconds."
    )

    @model_validator(mode="after")
    def _check(self) -> SightingsSettings:
        if self.enabled and self.ttl_s is None:
            raise ValueError(
                "sightings.enabled needs a retention period sightings.ttl_s"
                " (FACESTREAM_SIGHTINGS__TTL_S)"
            )
        return self


class MetricsSettings(Group):
    enabled: bool = Field(True, description="Serve Prometheus metrics from each worker.")
    host: str = Field(
        "127.0.0.1",
        description="Address the metrics endpoint binds to: metrics reveal traffic patterns.",
    )
    port: Port = Field(9464, description="Port of the metrics endpoint.")
    max_sources: Count = Field(
        100, description='Distinct `source` label values; the rest count as "other".'
    )
    stall_after_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description="Seconds with lag and no finished image after which a partition reports"
        " stalled (`facestream_partition_stalled`): far above a batch's time, below the alert's"
        " patience.",
    )
    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        description="Where `facestream status` and `up --with-prometheus` find Prometheus.",
    )


class RaySettings(Group):
    address: str | None = Field(
        None, description="Ray cluster address, e.g. `ray-head:6379`; none: a local Ray."
    )
    namespace: str = Field("facestream", min_length=1, description="Ray namespace.")
    num_cpus: Count | None = Field(None, description="CPUs of the local Ray; none: all of them.")
    model_num_cpus: NonNegative = Field(1.0, description="CPUs reserved per model replica.")
    model_num_gpus: NonNegative = Field(
        0.0, description="GPUs per model replica; fractions share a GPU (0.25: four per GPU)."
    )
    # The model tier is a Ray Serve application (README, "The model tier on Ray Serve"): the
    # fields below are its autoscaling, batching and health settings. A request is one
    # worker batch (up to batch.size images).
    min_replicas: Count = Field(
        1, description="Model replicas kept running however quiet the stream is."
    )
    max_replicas: Count | None = Field(
        None,
        description="Most model replicas the autoscaler starts; none: as many as the Ray"
        " cluster's CPUs (GPUs) hold at deploy time, model_num_cpus (model_num_gpus) each.",
    )
    target_ongoing_requests: PositiveFloat = Field(
        0.5,
        description="Worker batches in progress or queued per replica that the autoscaler"
        " aims at: more per replica starts replicas, fewer stops them. 0.5: a replica busy"
        " with one batch on average wants a second, so that the next batch finds one free"
        " (on CPU a replica runs one at a time); raise it where a replica's runs overlap"
        " (GPU batches).",
    )
    max_ongoing_requests: Count = Field(
        4,
        description="Worker batches one replica holds at once (running, merging, queued);"
        " the rest wait in the worker's handle for a free replica.",
    )
    max_batch_size: Count = Field(
        4,
        description="Worker batches (of any workers) merged into one model run, at most"
        " max_ongoing_requests. Raise on GPU, where one large run beats several small ones.",
    )
    batch_wait_s: NonNegative = Field(
        0.0,
        le=1.0,  # a lone batch waits all of it: a latency, never a setting of minutes
        description="Longest wait for more worker batches to merge, seconds: added to every"
        " lone batch. 0: merge only what is already queued (CPU); ~0.005-0.02 on GPU.",
    )
    upscale_delay_s: NonNegative = Field(
        5.0, description="Load must stay above target this long before replicas are added, s."
    )
    downscale_delay_s: NonNegative = Field(
        60.0, description="Load must stay below target this long before replicas stop, s."
    )
    # At least 1 s, like the periods below: Serve's handles report at half this window,
    # every replica's health check runs the model, every worker's purge calls the gallery.
    look_back_s: Seconds = Field(
        10.0, ge=1, description="Window over which the autoscaler averages ongoing requests, s."
    )
    health_check_period_s: Seconds = Field(
        10.0,
        ge=1,
        description="How often each replica checks its model (provider, known photo), s; a"
        " failing replica is replaced.",
    )
    retire_after_s: Seconds = Field(
        60.0,
        description="A model application that no running worker has claimed for this long"
        " is deleted (a rollout's old model), s.",
    )
    metrics_export_port: Port | None = Field(
        9465, description="Metrics port of the local Ray (actor stage timings); none: Ray picks."
    )

    @model_validator(mode="after")
    def _check(self) -> RaySettings:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"FACESTREAM_RAY__MAX_REPLICAS={self.max_replicas} must be at least"
                f" FACESTREAM_RAY__MIN_REPLICAS={self.min_replicas}"
            )
        if self.max_batch_size > self.max_ongoing_requests:  # such batches could never form
            raise ValueError(
                f"FACESTREAM_RAY__MAX_BATCH_SIZE={self.max_batch_size} must be at most"
                f" FACESTREAM_RAY__MAX_ONGOING_REQUESTS={self.max_ongoing_requests}, the"
                " batches a replica holds"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    profile: Profile = Field(
        "embedded", description="Broker tuning: `embedded` (Tansu) or `production` (Kafka)."
    )
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
    cache_dir: AbsolutePath = Field(
        default_factory=_cache_home, description="Models, sample photos and run logs."
    )
    log_level: LogLevel = Field("info", description="Log level of the workers.")

    def __init__(self, **values: Any) -> None:
        # pydantic-settings ignores unknown top-level variables: refuse them here.
        unknown = [_unknown(name) for name in os.environ if _is_unknown(name)]
        if unknown:
            raise SettingsError("; ".join(unknown))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from exc

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.gallery.backend == "server" and not self.gallery.url:
            raise ValueError("gallery.backend=server needs gallery.url (FACESTREAM_GALLERY__URL)")
        fits = self.kafka.max_message_bytes - MESSAGE_HEADROOM_BYTES
        if self.limits.max_bytes > fits:  # such images could never arrive, nor be refused
            raise ValueError(
                f"FACESTREAM_LIMITS__MAX_BYTES={self.limits.max_bytes} does not fit in a Kafka"
                f" message of FACESTREAM_KAFKA__MAX_MESSAGE_BYTES={self.kafka.max_message_bytes}:"
                f" keep it at most {fits} ({MESSAGE_HEADROOM_BYTES} bytes for key and headers)"
            )
        batch, message = self.tuning.producer_max_batch_size, self.kafka.max_message_bytes
        if batch is not None and batch > message:  # two images in one batch: refused by Kafka
            raise ValueError(
                f"FACESTREAM_KAFKA__TUNING__PRODUCER_MAX_BATCH_SIZE={batch} must be at most"
                f" FACESTREAM_KAFKA__MAX_MESSAGE_BYTES={message}"
            )
        heartbeat, session = self.tuning.heartbeat_interval_s, self.tuning.session_timeout_s
        # Kafka's rule: at most a third, so that one late heartbeat is not a lost member
        # (aiokafka drops the coordinator after a session without one) and a rebalance.
        if heartbeat is not None and session is not None and heartbeat * 3 > session:
            raise ValueError(
                f"FACESTREAM_KAFKA__TUNING__HEARTBEAT_INTERVAL_S={heartbeat} must be at most a"
                f" third of FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S={session}"
            )
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
                out[f"{ENV_PREFIX}{prefix}"] = value.get_secret_value()
            elif isinstance(value, str | Path):
                out[f"{ENV_PREFIX}{prefix}"] = str(value)
            elif value is not None:
                out[f"{ENV_PREFIX}{prefix}"] = json.dumps(value)

        walk("", self.model_dump())
        return out

    def without_secrets(self) -> Settings:
        """A copy with every secret (passwords, API keys) set to None: what Ray actors get,
        since their constructor arguments are pickled and kept by Ray. Not re-validated, so
        that settings which need a secret (SASL) still make a copy."""
        copy = self
        for field in secret_fields():
            copy = _replaced(copy, field.path, None)
        return copy

    def with_env_secrets(self, environ: Mapping[str, str] | None = None) -> Settings:
        """A copy whose secrets are those of ``environ`` (default: this process's), where it
        sets them: how an actor that got ``without_secrets()`` finds the secrets it needs."""
        upper = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
        copy = self
        for field in secret_fields():
            if field.variable in upper:
                copy = _replaced(copy, field.path, SecretStr(upper[field.variable]))
        return copy


# -- the model as a list of variables: for errors, secrets and the README table --------------


@dataclass(frozen=True)
class SettingField:
    """One leaf setting: its path in the model, its field info and its default value."""

    path: tuple[str, ...]
    info: FieldInfo
    default: object

    @property
    def variable(self) -> str:
        return variable(self.path)

    @property
    def secret(self) -> bool:
        annotation = self.info.annotation
        return annotation is SecretStr or SecretStr in get_args(annotation)


def variable(path: tuple[str, ...]) -> str:
    """The variable of a settings path: ("gallery", "url") -> FACESTREAM_GALLERY__URL."""
    return ENV_PREFIX + "__".join(path).upper()


def _group_of(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Group) else None


def setting_fields(
    model: type[BaseModel] = Settings,
    defaults: BaseModel | None = None,
    prefix: tuple[str, ...] = (),
) -> Iterator[SettingField]:
    """Every leaf setting of ``model``, in declaration order, with its default."""
    for name, info in model.model_fields.items():
        if defaults is not None and info.default_factory is None:
            default = getattr(defaults, name)  # a group's defaults: its default instance's
        else:  # a factory's default (e.g. under the home folder) as it is computed now
            default = info.get_default(call_default_factory=True)
        group = _group_of(info)
        if group is None:
            yield SettingField((*prefix, name), info, default)
        else:
            yield from setting_fields(group, default, (*prefix, name))


@cache
def _leaves() -> dict[tuple[str, ...], SettingField]:
    return {field.path: field for field in setting_fields()}


@cache
def _known_variables() -> tuple[str, ...]:
    """Leaf variables and group variables (a group accepts a JSON object), sorted."""
    paths = {path[:n] for path in _leaves() for n in range(1, len(path) + 1)}
    return tuple(sorted(variable(p) for p in paths))


def secret_fields() -> list[SettingField]:
    return [field for field in _leaves().values() if field.secret]


def _is_unknown(name: str) -> bool:
    upper = name.upper()  # pydantic-settings matches names case-insensitively
    return upper.startswith(ENV_PREFIX) and upper not in _known_variables()


def _unknown(name: str) -> str:
    (nearest,) = difflib.get_close_matches(name.upper(), _known_variables(), n=1, cutoff=0)
    return f"{name}: no such setting (nearest valid one: {nearest})"


def _replaced(model: BaseModel, path: tuple[str, ...], value: object) -> Any:
    """A copy of ``model`` with the field at ``path`` set to ``value``, without validation."""
    head, *rest = path
    new = _replaced(getattr(model, head), tuple(rest), value) if rest else value
    return model.model_copy(update={head: new})


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as one line, each naming its variable."""
    wrong: dict[str, list[str]] = {}  # a variable, or a whole message -> what is wrong
    got: dict[str, str] = {}
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            wrong.setdefault(_unknown(variable(loc)), [])
            continue
        message = error["msg"].removeprefix("Value error, ")
        # The longest prefix of loc that is a setting (beyond it: union members, list items).
        path = next((loc[:n] for n in range(len(loc), 0, -1) if loc[:n] in _leaves()), None)
        if path is None:  # a check of a group or of the whole: its message names the variables
            wrong.setdefault(message, [])
            continue
        name = variable(path)
        wrong.setdefault(name, []).append(message[0].lower() + message[1:])
        if not _leaves()[path].secret:
            got[name] = f", got {error['input']!r}"
    return "; ".join(
        f"{head}: {' or '.join(msgs)}{got.get(head, '')}" if msgs else head
        for head, msgs in wrong.items()
    )
