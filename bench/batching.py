"""Dynamic batching: the same pipeline at several ``batch.size`` / ``batch.wait_ms``.

    python -m bench.batching [--configs 1:50,4:50,8:50,16:50,32:100] [--images 120]
                             [--fetch-wait-ms 20]

For each setting, one fresh embedded stack (the worker reads its batch settings at start):
sustained images/s at saturation, the bare models at the same batch size right before it
(same process as bench.pipeline, so the ratio of each row is like-for-like), and the latency
at light load (2 images/s), where ``wait_ms`` is what a lone image waits for company.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.common import describe_machine, emit_json, log, print_table, sample_photos
from bench.flow import (
    fetch_wait_overrides,
    images_for,
    latency,
    running_stack,
    stream,
)
from bench.pipeline import round_parser, run_round, warm_model, warm_up
from core.settings import Settings

LIGHT_RATE = 2.0  # images/s: well under saturation, so batches rarely fill


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"1:50,8:50"`` -> [(1, 50), (8, 50)]: batch size and wait in ms."""
    out = []
    for item in text.split(","):
        size, wait = item.split(":")
        out.append((int(size), int(wait)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = round_parser(__doc__, "the worker's Kafka fetch wait, ms; default: the profile's")
    parser.add_argument("--configs", default="1:50,4:50,8:50,16:50,32:100")
    parser.add_argument("--light-seconds", type=float, default=8.0, help="light-load run")
    args = parser.parse_args(argv)

    base = Settings()
    info = describe_machine()
    photos = sample_photos()
    model = warm_model(base, photos)
    fetch_wait = fetch_wait_overrides(args.fetch_wait_ms)

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for size, wait_ms in parse_configs(args.configs):
        tag = f"b{size}w{wait_ms}"
        log(f"{tag}: starting a stack with batch.size={size}, batch.wait_ms={wait_ms}...")
        overrides = {"batch__size": size, "batch__wait_ms": wait_ms, **fetch_wait}
        with running_stack(base, **overrides) as running:
            warm_up(running, photos)
            measured = run_round(model, running, photos, args.images, tag)
            n = max(8, int(LIGHT_RATE * args.light_seconds))
            log(f"{tag}: {n} images at {LIGHT_RATE:.0f}/s...")
            light = stream(running.settings, images_for(photos, n, f"{tag}-light"), LIGHT_RATE)
        lat = latency(light)
        other_bare, other_pipe = measured.other_load()
        rows.append(
            [size, wait_ms, measured.bare.images_per_s, measured.pipe_rate,
             measured.pipe_faces_per_s, measured.ratio, lat["p50"], lat["p95"],
             f"{other_bare:.2f} / {other_pipe:.2f}"]
        )  # fmt: skip
        results.append(
            {
                "batch_size": size,
                "wait_ms": wait_ms,
                "bare_images_per_s": measured.bare.images_per_s,
                "pipeline_images_per_s": measured.pipe_rate,
                "pipeline_faces_per_s": measured.pipe_faces_per_s,
                "ratio": measured.ratio,
                "light_load_latency_ms": lat,
                "foreign_load_cores": [other_bare, other_pipe],
            }
        )

    fetch_ms = base.tuning.fetch_max_wait_ms if args.fetch_wait_ms is None else args.fetch_wait_ms
    fetch = f"{fetch_ms} ms" + (" (the profile's)" if args.fetch_wait_ms is None else "")
    light = f"{LIGHT_RATE:.0f}/s"
    print_table(
        f"dynamic batching ({args.images} images per run; worker fetch wait {fetch})",
        ["batch.size", "wait_ms", "bare img/s (same batch)", "pipeline img/s",
         "pipeline faces/s", "ratio", f"p50 ms at {light}", f"p95 ms at {light}",
         "foreign load bare / pipeline (cores)"],
        rows,
    )  # fmt: skip
    best = max(results, key=lambda r: r["pipeline_images_per_s"])
    print_table(
        "best throughput",
        ["batch.size", "wait_ms", "pipeline img/s"],
        [[best["batch_size"], best["wait_ms"], best["pipeline_images_per_s"]]],
    )
    emit_json(
        "batching",
        {
            "machine": info,
            "images_per_run": args.images,
            "fetch_max_wait_ms": fetch_ms,
            "configs": results,
        },
    )


if __name__ == "__main__":
    main()
