"""``facestream worker``: wire the compute side (Ray) to the stream side (Faust) and run."""

from __future__ import annotations

import logging
import tempfile

import faust

from actors.cluster import connect_ray, ensure_actors
from actors.compute import RayCompute
from core.settings import Settings
from streams import metrics, observe
from streams.app import create_app

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Connect to Ray (before Faust replaces stdio), make sure the actors exist, run Faust."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    connect_ray(settings)
    actors = ensure_actors(settings)
    if settings.metrics.enabled:
        try:
            metrics.serve(
                settings.metrics.host, settings.metrics.port, settings.metrics.stall_after_s
            )
        except OSError as exc:  # a worker must not die for its metrics
            log.error(
                "metrics endpoint %s:%d unavailable: %s",
                settings.metrics.host,
                settings.metrics.port,
                exc,
            )
        gpu_requested = str(settings.ray.model_num_gpus > 0).lower()
        metrics.MODEL_INFO.labels(actors.model_id, actors.providers[0], gpu_requested).set(1)
    compute = RayCompute(settings, actors, on_failure=observe.failed_call)
    # Faust keeps table state in its data folder, `<app id>-data` in the working directory
    # unless told otherwise. facestream has no Faust tables, so the folder would stay empty
    # wherever the worker was started: give it a temporary one, removed on exit.
    with tempfile.TemporaryDirectory(prefix="facestream-worker-") as datadir:
        app = create_app(settings, compute, datadir=datadir)
        worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
        worker.execute_from_commandline()
