"""The model tier on Ray Serve: one application per model, called through a deployment handle.

- **One application per model** (``model_app_name``): its name holds the app id, the model
  pack's name and a digest of everything that changes what the replicas compute (the pack's
  checksums, the model settings, the image limits, the resources of a replica, the code's
  version). A worker started with another model folder, other limits or other providers
  deploys (or finds) its own application and never reaches another model's replicas; two
  models run side by side during a rollout.
- **Autoscaling and batching are Serve's**: replicas follow the number of worker batches in
  progress (``ray.target_ongoing_requests``, between ``ray.min_replicas`` and
  ``ray.max_replicas``), the handle routes each batch to a replica with room, and
  ``@serve.batch`` merges the batches that several workers send into one model run.
- **Health** (``FaceModelReplica.check_health``, run by Serve at start and every
  ``ray.health_check_period_s``): a replica asked for an accelerator that runs on the CPU
  fails at start (loudly: the deployment fails with that message); one whose model no longer
  embeds a known photo as it did at start exits, and Serve replaces it. Its calls in flight
  are retried by the workers; the handle routes them to another replica, or holds them
  until the replacement is up.
- **Retirement** (``ModelClaim``): each worker claims its application in Ray's key-value
  store and renews the claim; an application of the same app id that no worker has claimed
  for ``ray.retire_after_s`` (the old model after a rollout) is deleted by any worker's next
  renewal. ``facestream models --retire NAME`` deletes one at once.

The HTTP proxy is never started (``http_options={"location": "NoServer"}``, applications
without a route prefix): workers only call through handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from actors.deployment import placement, stage_histogram
from actors.gallery import model_slug
from actors.models import FaceModel, load_face_model, resolve_pack
from core.faces import ImageFaces
from core.imaging import ImageRejected
from core.settings import ImageLimits, Settings, SettingsError

log = logging.getLogger(__name__)

DEPLOYMENT = "FaceModel"
# The known photo of the self-check: shipped in the insightface wheel (6 faces), so that every
# replica has it whatever the model folder.
SELF_CHECK_PHOTO = ("insightface", "data/images/t1.jpg")
# Each face of the known photo, embedded again, against its embedding at start. The same
# runtime on the same device reproduces it to ~1e-6; an accelerator's kernels may differ a
# little between runs, never by this much.
SELF_CHECK_MIN_COSINE = 0.99
# Serve's namespace in Ray's key-value store is its own; the claims live in facestream's.
CLAIMS_NAMESPACE = "facestream-model-claims"
LOCKS_NAMESPACE = "facestream-model-locks"

Analysis = list[ImageFaces | ImageRejected]


# -- naming -------------------------------------------------------------------------------------


def _code_version() -> str:
    try:
        return importlib.metadata.version("facestream")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "source"


def model_app_name(settings: Settings) -> str:
    """The model application's name: equal for two workers exactly when their replicas would
    compute the same thing (same weights, model settings, limits, replica resources)."""
    pack = resolve_pack(settings.model.folder, settings.cache_dir)
    relevant = {
        "pack": pack.name,
        "checksums": pack.checksums,
        "model": settings.model.model_dump(mode="json", exclude={"folder"}),
        "limits": settings.limits.model_dump(mode="json"),
        "resources": [settings.ray.model_num_cpus, settings.ray.model_num_gpus],
        "code": _code_version(),
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
    return f"{app_prefix(settings)}{model_slug(pack.name)}-{digest}"


def app_prefix(settings: Settings) -> str:
    """What every model application of this deployment's app id is named with."""
    return f"{settings.kafka.app_id}-model-"


# -- health -------------------------------------------------------------------------------------


def provider_problem(requested: list[str], running: list[str], num_gpus: float) -> str | None:
    """Why the model does not run where it was asked to (None: it does). onnxruntime falls
    back to the CPU silently when CUDA cannot load: users' commonest GPU complaint."""
    actual = running[0] if running else "no provider"
    if requested and requested[0] != actual:
        return f"asked for {requested[0]}, running on {actual}"
    if num_gpus > 0 and actual == "CPUExecutionProvider":
        return f"given {num_gpus:g} GPU(s) by Ray, running on {actual}"
    return None


class SelfCheck:
    """A known photo, embedded at start; ``problem()`` embeds it again and compares."""

    def __init__(self, model: FaceModel, limits: ImageLimits) -> None:
        package, name = SELF_CHECK_PHOTO
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the self-check photo needs the {package} package")
        self.photo = (Path(spec.origin).parent / name).read_bytes()
        self.model, self.limits = model, limits
        self.reference = self.embed()
        if not len(self.reference):
            raise RuntimeError(f"the model finds no face in the self-check photo {name}")

    def embed(self) -> np.ndarray:
        (result,) = self.model.analyze_bytes([self.photo], self.limits)
        if isinstance(result, ImageRejected):
            raise RuntimeError(f"the self-check photo was rejected: {result}")
        return result.embeddings

    def problem(self) -> str | None:
        now = self.embed()
        if now.shape != self.reference.shape:
            found, expected = len(now), len(self.reference)
            return f"self-check: {found} faces in the known photo, {expected} at start"
        worst = float(np.min(np.sum(now * self.reference, axis=1)))
        if not worst >= SELF_CHECK_MIN_COSINE:  # NaN too
            return (
                f"self-check: the known photo now embeds at cosine {worst:.3f} of its embedding"
                f" at start (at least {SELF_CHECK_MIN_COSINE} expected)"
            )
        return None


# -- the replica --------------------------------------------------------------------------------


class FaceModelReplica:
    """One model replica: the face model, fed merged worker batches, checked by Serve."""

    def __init__(self, settings: Settings) -> None:
        from actors.models.insightface_onnx import choose_providers

        self.settings = settings
        self.model = load_face_model(settings)
        self.stage = stage_histogram()
        self.requested = choose_providers(settings.model.providers)
        # The known photo is checked under the default limits: a stricter deployment (a
        # 1-megapixel max_pixels; the photo has 1.13) would otherwise fail every replica.
        self.self_check = SelfCheck(self.model, ImageLimits())
        self.served = False  # whether a health check has passed (the replica took work)
        self._merge.set_max_batch_size(settings.ray.max_batch_size)
        self._merge.set_batch_wait_timeout_s(settings.ray.batch_wait_s)

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model.model_id,
            "embedding_dim": self.model.embedding_dim,
            "providers": self.model.providers,
            **placement(),
        }

    async def analyze(self, blobs: list[bytes]) -> Analysis:
        result = await self._merge(blobs)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch
    async def _merge(self, calls: list[list[bytes]]) -> list[Analysis | BaseException]:
        """Several callers' batches in one model run (Serve exports how many as
        ``ray_serve_actual_batch_size``). If it raises, each batch runs alone, so that one
        worker's poison image fails that worker's call only (its processor then isolates the
        image)."""
        try:
            flat = await asyncio.to_thread(self._analyze, [b for call in calls for b in call])
        except Exception as exc:
            if len(calls) == 1:
                return [exc]
            return [await self._alone(call) for call in calls]
        out, start = [], 0
        for call in calls:
            out.append(flat[start : start + len(call)])
            start += len(call)
        return out

    async def _alone(self, blobs: list[bytes]) -> Analysis | BaseException:
        try:
            return await asyncio.to_thread(self._analyze, blobs)
        except Exception as exc:
            return exc

    def _analyze(self, blobs: list[bytes]) -> Analysis:
        results = self.model.analyze_bytes(blobs, self.settings.limits)
        for stage, seconds in self.model.last_timings.items():
            self.stage.observe(seconds, tags={"stage": stage})
        return results

    async def check_health(self) -> None:
        """Serve calls it once the replica is built, then every ``health_check_period_s``.

        At start a failure fails the replica (and, when every try fails, the deployment, with
        this message: loudly). Later, the replica exits at once: Serve replaces a replica only
        after three failed checks in a row, and until then it would keep answering with a
        model that fails its check. Its calls in flight fail as a lost replica's do, and the
        workers retry them on another replica, or on the replacement once it is up."""
        problem = provider_problem(
            self.requested, self.model.providers, self.settings.ray.model_num_gpus
        ) or await asyncio.to_thread(self.self_check.problem)
        if problem is None:
            self.served = True
            return
        log.error("model replica unhealthy: %s", problem)
        if not self.served:
            raise RuntimeError(problem)
        logging.shutdown()
        os._exit(1)


# -- the application ----------------------------------------------------------------------------


def replica_ceiling(settings: Settings) -> int:
    """``ray.max_replicas``, or as many replicas as the cluster's CPUs and GPUs hold now."""
    wanted = settings.ray
    if wanted.max_replicas is not None:
        return wanted.max_replicas
    total = ray.cluster_resources()
    fits = []
    if wanted.model_num_cpus > 0:
        fits.append(int(total.get("CPU", 0) // wanted.model_num_cpus))
    if wanted.model_num_gpus > 0:
        fits.append(int(total.get("GPU", 0) // wanted.model_num_gpus))
    return max(wanted.min_replicas, min(fits, default=wanted.min_replicas))


def unplaceable(settings: Settings, total: dict[str, float]) -> str | None:
    """Why the replicas that always run (``ray.min_replicas``) do not fit in ``total``, the
    resources of a Ray of this worker's own, which gets no more nodes: Serve would wait for
    them for ever, and the worker with it. None: they fit."""
    wanted = settings.ray
    for resource, each, variable in (
        ("CPU", wanted.model_num_cpus, "MODEL_NUM_CPUS"),
        ("GPU", wanted.model_num_gpus, "MODEL_NUM_GPUS"),
    ):
        have = total.get(resource, 0.0)
        if each > 0 and wanted.min_replicas * each > have:
            return (
                f"FACESTREAM_RAY__MIN_REPLICAS={wanted.min_replicas} model replicas of"
                f" FACESTREAM_RAY__{variable}={each:g} each need {wanted.min_replicas * each:g}"
                f" {resource}s; this worker's own Ray has {have:g}: lower them, or join a"
                " cluster (FACESTREAM_RAY__ADDRESS)"
            )
    return None


def model_application(settings: Settings) -> serve.Application:
    """The model deployment, configured from ``settings`` (sent without secrets)."""
    wanted = settings.ray
    deployment = serve.deployment(
        name=DEPLOYMENT,
        ray_actor_options={"num_cpus": wanted.model_num_cpus, "num_gpus": wanted.model_num_gpus},
        max_ongoing_requests=wanted.max_ongoing_requests,
        autoscaling_config={
            "min_replicas": wanted.min_replicas,
            "max_replicas": replica_ceiling(settings),
            "target_ongoing_requests": wanted.target_ongoing_requests,
            "upscale_delay_s": wanted.upscale_delay_s,
            "downscale_delay_s": wanted.downscale_delay_s,
            "look_back_period_s": wanted.look_back_s,
            # How often handles report their ongoing requests (deprecated in Serve for an
            # environment variable, still obeyed): twice per window, so that the window
            # always averages fresh reports (Serve's default, 10 s, lags short windows).
            "metrics_interval_s": wanted.look_back_s / 2,
        },
        health_check_period_s=wanted.health_check_period_s,
    )(FaceModelReplica)
    return deployment.bind(settings.without_secrets())


@dataclass
class ModelApp:
    name: str
    handle: Any  # DeploymentHandle of the application's FaceModel deployment
    model_id: str
    embedding_dim: int
    providers: list[str]
    claim: ModelClaim


# An application in these states is (or is becoming) served: found, not deployed again.
RUNNING_STATES = frozenset({"DEPLOYING", "RUNNING", "UNHEALTHY"})


def _state(app: Any) -> str:
    """An application's (or replica's) status as its plain name, e.g. ``RUNNING``."""
    return getattr(app, "value", str(app))


def _status(name: str) -> str | None:
    app = serve.status().applications.get(name)
    return None if app is None else _state(app.status)


def start_serve() -> None:
    """Serve's controller on this cluster (started once; later calls find it), no HTTP."""
    for attempt in range(3):
        try:
            serve.start(http_options={"location": "NoServer"})
            return
        except Exception as exc:  # workers starting together race to create the controller
            if attempt == 2:
                raise
            log.warning("starting Serve: %s; again", exc)
            time.sleep(1.0)


def ensure_model_app(settings: Settings) -> ModelApp:
    """Deploy this worker's model application, or find it running (idempotent), and claim it
    (the claim is held, and renewed, from before the deploy, so that no other worker retires
    the application while it starts)."""
    if settings.ray.address is None and (problem := unplaceable(settings, ray.cluster_resources())):
        raise SettingsError(problem)
    name = model_app_name(settings)
    start_serve()
    held = ModelClaim(settings, name).start()
    handle = _deployed_once(settings, name)
    info = handle.info.remote().result()
    log.info("model application %s: %s on %s", name, info["model_id"], info["providers"][0])
    return ModelApp(name, handle, info["model_id"], info["embedding_dim"], info["providers"], held)


# Longest a deploy may hold the deploy lock: a worker killed while deploying leaves it behind.
DEPLOY_LOCK_S = 300.0


def _deployed_once(settings: Settings, name: str) -> Any:
    """The application's handle, deploying it unless it runs (or is starting). Serve gives
    every deploy a new version, so a second deploy would replace every replica: workers that
    start together take a lock in Ray's key-value store, and only its holder deploys."""
    from ray.experimental import internal_kv

    lock = f"deploying/{name}".encode()
    while True:
        if _status(name) in RUNNING_STATES:
            return serve.get_app_handle(name)
        stamp = json.dumps({"at": time.time(), "pid": os.getpid()}).encode()
        if not internal_kv._internal_kv_put(lock, stamp, False, namespace=LOCKS_NAMESPACE):
            try:  # the lock is ours (it did not exist)
                return serve.run(model_application(settings), name=name, route_prefix=None)
            finally:
                internal_kv._internal_kv_del(lock, namespace=LOCKS_NAMESPACE)
        held = internal_kv._internal_kv_get(lock, namespace=LOCKS_NAMESPACE)
        if held is not None and json.loads(held)["at"] < time.time() - DEPLOY_LOCK_S:
            internal_kv._internal_kv_del(lock, namespace=LOCKS_NAMESPACE)  # its holder died
        time.sleep(0.5)  # another worker deploys it: it shows as DEPLOYING in a moment


# -- claims and retirement ---------------------------------------------------------------------


def _claim_key(name: str, holder: str) -> bytes:
    return f"{name}/{holder}".encode()


def claim(name: str, holder: str) -> None:
    from ray.experimental import internal_kv

    value = json.dumps({"at": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    internal_kv._internal_kv_put(
        _claim_key(name, holder), value.encode(), True, namespace=CLAIMS_NAMESPACE
    )


def last_claimed(settings: Settings, forget_before: float = 0.0) -> dict[str, float]:
    """Model application name -> the newest claim's time (seconds since the epoch). Claims
    older than ``forget_before`` are deleted (each worker that ever ran left one)."""
    from ray.experimental import internal_kv

    newest: dict[str, float] = {}
    prefix = app_prefix(settings).encode()
    for key in internal_kv._internal_kv_list(prefix, namespace=CLAIMS_NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=CLAIMS_NAMESPACE)
        if raw is None:
            continue
        at = json.loads(raw)["at"]
        if at < forget_before:
            internal_kv._internal_kv_del(key, namespace=CLAIMS_NAMESPACE)
            continue
        name = key.decode().rsplit("/", 1)[0]
        newest[name] = max(newest.get(name, 0.0), at)
    return newest


def model_apps(settings: Settings, forget_before: float = 0.0) -> dict[str, dict[str, Any]]:
    """This app id's model applications: status, replicas by state, last claim (claims
    older than ``forget_before`` forgotten)."""
    claimed = last_claimed(settings, forget_before)
    out = {}
    for name, app in serve.status().applications.items():
        if not name.startswith(app_prefix(settings)):
            continue
        deployment = app.deployments.get(DEPLOYMENT)
        replicas = dict(deployment.replica_states) if deployment else {}
        out[name] = {
            "status": _state(app.status),
            "replicas": {_state(k): n for k, n in replicas.items()},
            "claimed_at": claimed.get(name),
        }
    return out


def retire(settings: Settings, name: str) -> None:
    """Delete a model application and its claims."""
    from ray.experimental import internal_kv

    serve.delete(name, _blocking=False)
    internal_kv._internal_kv_del(
        _claim_key(name, ""), del_by_prefix=True, namespace=CLAIMS_NAMESPACE
    )
    log.info("model application %s retired", name)


def retire_unclaimed(settings: Settings, keep: str) -> list[str]:
    """Delete the model applications of this app id (but ``keep``) that no worker has claimed
    for ``ray.retire_after_s``."""
    cutoff = time.time() - settings.ray.retire_after_s
    gone = []
    for name, app in model_apps(settings, forget_before=cutoff).items():
        if name != keep and (app["claimed_at"] or 0.0) < cutoff and app["status"] != "DELETING":
            retire(settings, name)
            gone.append(name)
    return gone


class ModelClaim:
    """A worker's claim on its model application, renewed in a daemon thread, each renewal
    also retiring the applications that nobody claims any more."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.name = settings, name
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-claim", daemon=True)

    def start(self) -> ModelClaim:
        self.renew()
        self._thread.start()
        return self

    def renew(self) -> None:
        claim(self.name, self.holder)
        retire_unclaimed(self.settings, keep=self.name)

    def _run(self) -> None:
        # Four renewals per retirement period: a claim never looks stale while its worker runs.
        while not self._stop.wait(self.settings.ray.retire_after_s / 4):
            with contextlib.suppress(Exception):  # Ray away for a moment: renew next time
                self.renew()

    def stop(self) -> None:
        self._stop.set()
