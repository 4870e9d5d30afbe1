"""Thread settings of the model: OpenBLAS threads and onnxruntime intra-op threads.

    python -m bench.threads [--images 96] [--alternations 2] [--skip-pipeline]

1. Bare models in child processes (a thread setting only takes effect before numpy and
   onnxruntime start), alternating: ``OMP_NUM_THREADS`` = number of cores (what OpenBLAS
   does when it is unset, as in ``facestream identify``) or 1 (what Ray gives the model
   actor), with ``model.intra_op_threads`` 1 or 2.
2. The pipeline with ``model.intra_op_threads`` 1 and 2 (one fresh stack each), each right
   after the bare models with the same setting: does a second onnxruntime thread pay off when
   the pipeline's own processes need the same cores?
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import common
from bench.flow import running_stack
from bench.pipeline import run_bare, run_round, warm_model, warm_up
from core.settings import Settings


def child(images: int) -> None:
    """Runs in a child process: bare models under this process's thread settings."""
    settings = Settings()
    photos = common.sample_photos()
    model = warm_model(settings, photos)
    result = run_bare(model, settings, photos, images)
    print(json.dumps({"images_per_s": result.images_per_s, "cores": result.cores}))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_in_child(omp: int, intra: int, images: int) -> dict[str, float]:
    """The child's images/s and cores, and the load of other processes meanwhile."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(omp),
        "FACESTREAM_MODEL__INTRA_OP_THREADS": str(intra),
    }
    load, children = common.ForeignLoad(), _children_cpu_s()
    done = subprocess.run(
        [sys.executable, "-m", "bench.threads", "--child", "--images", str(images)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    foreign = load.cores(_children_cpu_s() - children)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "foreign_load": foreign}


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.images)
        return

    info = common.describe_machine()
    cores = os.cpu_count() or 1
    configs = [(cores, 1), (1, 1), (1, 2)]
    bare: dict[tuple[int, int], list[dict[str, float]]] = {c: [] for c in configs}
    for i in range(args.alternations):
        for omp, intra in configs:
            common.log(f"bare {i + 1}/{args.alternations}: OMP_NUM_THREADS={omp}, intra_op={intra}")
            bare[(omp, intra)].append(bare_in_child(omp, intra, args.images))

    pipe_rows: list[list[Any]] = []
    pipe_figures: list[dict[str, Any]] = []
    if not args.skip_pipeline:
        base = Settings()
        photos = common.sample_photos()
        for intra in (1, 2):
            settings = base.override(model__intra_op_threads=intra)
            model = warm_model(settings, photos)  # this process has OMP_NUM_THREADS=1 (bench/)
            common.log(f"pipeline with intra_op_threads={intra}...")
            with running_stack(base, model__intra_op_threads=intra) as running:
                warm_up(running, photos)
                measured = run_round(model, running, photos, args.images, f"intra{intra}")
            cpu = measured.pipe_cpu.items()
            model_cpu = sum(v for k, v in cpu if k.startswith("model replica"))
            other_bare, other_pipe = measured.other_load()
            pipe_rows.append(
                [intra, measured.bare.images_per_s, measured.bare.cores, measured.pipe_rate,
                 model_cpu / measured.pipe_wall_s, measured.ratio,
                 f"{other_bare:.2f} / {other_pipe:.2f}"]
            )  # fmt: skip
            pipe_figures.append(
                {
                    "intra_op_threads": intra,
                    "bare_images_per_s": measured.bare.images_per_s,
                    "pipeline_images_per_s": measured.pipe_rate,
                    "ratio": measured.ratio,
                    "foreign_load_cores": [other_bare, other_pipe],
                }
            )
            time.sleep(1)

    rows = []
    for (omp, intra), runs in bare.items():
        rates = [r["images_per_s"] for r in runs]
        rows.append(
            [omp, intra, " / ".join(f"{r:.2f}" for r in rates), sum(rates) / len(rates),
             sum(r["cores"] for r in runs) / len(runs),
             " / ".join(f"{r['foreign_load']:.2f}" for r in runs)]
        )  # fmt: skip
    common.print_table(
        f"bare models in child processes, {args.images} images, alternating",
        [
            "OMP_NUM_THREADS",
            "intra_op_threads",
            "img/s per run",
            "mean img/s",
            "cores busy",
            "foreign load per run (cores)",
        ],
        rows,
    )
    if pipe_rows:
        common.print_table(
            f"pipeline vs model.intra_op_threads ({args.images} images, one stack each)",
            ["intra_op_threads", "bare img/s", "bare cores", "pipeline img/s",
             "model replica cores", "ratio", "foreign load bare / pipeline (cores)"],
            pipe_rows,
        )  # fmt: skip
    common.emit_json(
        "threads",
        {
            "machine": info,
            "images": args.images,
            "bare": {f"omp{omp}_intra{intra}": runs for (omp, intra), runs in bare.items()},
            "pipeline": pipe_figures,
        },
    )


if __name__ == "__main__":
    main()
