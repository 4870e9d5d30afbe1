"""The pipeline with a large gallery against an empty one: same photos, same machine, one run.

    python -m bench.gallery --points 1000000 --dir D --keep --model-id MODEL_ID
    python -m bench.gallery_pipeline --gallery D/facestream-gallery-bench-... [--images 240]

``MODEL_ID`` is the pipeline's model (``facestream status`` shows it; the default pack's is
printed by this script when the gallery holds another): the worker must accept the kept
gallery as its own. Cases, alternating (``--rounds``; the median round is kept):

1. ``empty gallery``: ``facestream up``'s stack on a fresh gallery (the bench people only);
2. ``large gallery``: the same stack on the kept gallery (the bench people enrolled into it).

First, what the kept gallery holds outside its index is indexed (``bench.gallery.settle``),
as a served gallery settles.

Each case streams a warm-up of ``--warm-s`` seconds (the autoscaler starts its replicas), then
``--images`` sample photos as fast as the broker takes them: the steady images/s, and the
worker's ``gallery_call`` stage (one search call per batch: every face of the batch) per batch.
The sample photos' faces are strangers to the synthetic gallery, so every search runs to its
end (no early match). Target: large / empty >= 0.9.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.gallery import POINTER
from bench.common import bench_parser, describe_machine, emit_json, log, print_table, sample_photos
from bench.flow import running_stack
from bench.gallery import gallery_folder_of, settle
from bench.pipeline import worker_stages
from bench.throughput import Measured, pipeline_rate, warm_for
from core.settings import Settings

RATIO_TARGET = 0.90


def gallery_model(root: Path) -> str:
    """The model id the kept gallery's pointer names."""
    return json.loads((root / POINTER).read_text())["model_id"]


def pipeline_model(settings: Settings) -> str:
    from actors.models import load_face_model

    return load_face_model(settings).model_id


def measure(
    settings: Settings, photos: Any, args: Any, label: str, **overrides: object
) -> tuple[Measured, dict[str, float]]:
    """One case: a fresh stack, warmed, then ``args.images`` images; the rate and the search
    stage per batch (count, mean, p50, p99 in ms)."""
    with running_stack(settings, **overrides) as running:
        warm_for(running, photos, args.warm_s, args.rate_hint)
        before = worker_stages(running)
        rate = pipeline_rate(running, photos, args.images, label)
        search = worker_stages(running)["gallery_call"].since(before.get("gallery_call"))
    n = search.count
    return rate, {
        "batches": n,
        "mean_ms": 1000 * search.total_s / n if n else 0.0,
        "p50_ms": 1000 * search.quantile(0.5),
        "p99_ms": 1000 * search.quantile(0.99),
    }


def round_json(rate: Measured, search: dict[str, float]) -> dict[str, Any]:
    return {"images_per_s": rate.images_per_s, "search": search,
            "foreign_load_cores": rate.foreign_cores}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--gallery", type=Path, required=True, help="a kept bench.gallery root")
    parser.add_argument("--images", type=int, default=240, help="images per measured run")
    parser.add_argument("--warm-s", type=float, default=30.0, help="warm-up stream, seconds")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two cases")
    parser.add_argument("--rate-hint", type=float, default=30.0, help="warm-up images/s")
    args = parser.parse_args(argv)

    settings = Settings()
    root = args.gallery.expanduser().resolve()
    if not (root / POINTER).exists():
        sys.exit(f"error: {root} holds no gallery (run bench.gallery with --keep)")
    ours = pipeline_model(settings)
    if (theirs := gallery_model(root)) != ours:
        sys.exit(f"error: the gallery holds {theirs!r}; the pipeline runs {ours!r} (--model-id)")
    info = describe_machine()
    settled = settle(gallery_folder_of(root, ours))
    photos = sample_photos()
    cases = {"empty gallery": {}, "large gallery": {"gallery__path": root}}
    runs: dict[str, list[tuple[Measured, dict[str, float]]]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
            log(f"{name} (round {r + 1}): starting the embedded stack...")
            runs[name].append(measure(settings, photos, args, f"{name[:5]}-{r}", **cases[name]))
    kept = {
        name: sorted(v, key=lambda m: m[0].images_per_s)[len(v) // 2] for name, v in runs.items()
    }
    (empty, empty_search), (large, large_search) = kept["empty gallery"], kept["large gallery"]
    ratio = large.images_per_s / empty.images_per_s
    print_table(
        f"the pipeline at its defaults, {len(photos)} sample photos, {args.images} images per run"
        f" (median of {args.rounds} rounds)",
        ["gallery", "images/s", "search calls (batches)", "search mean ms", "search p50 ms",
         "search p99 ms", "foreign load (cores)"],
        [[name, m.images_per_s, s["batches"], s["mean_ms"], s["p50_ms"], s["p99_ms"],
          m.foreign_cores] for name, (m, s) in kept.items()],
    )  # fmt: skip
    print_table(
        "every round",
        ["gallery", "round", "images/s", "search mean ms", "foreign load (cores)"],
        [[name, k + 1, m.images_per_s, s["mean_ms"], m.foreign_cores]
         for name, v in runs.items() for k, (m, s) in enumerate(v)],
    )  # fmt: skip
    met = ratio >= RATIO_TARGET
    print_table(
        "summary",
        ["figure", "value"],
        [
            ["large gallery", str(root)],
            [
                "its points (indexed before the runs: live / hidden, s)",
                f"{settled['points']} ({settled['unindexed']} / {settled['hidden']}, "
                f"{settled['build_s']:.0f})",
            ],
            ["ratio large / empty", ratio],
            ["target", f">= {RATIO_TARGET}: {'met' if met else 'NOT met'}"],
        ],
    )
    emit_json(
        "gallery_pipeline",
        {
            "machine": info,
            "gallery": str(root),
            "settled": settled,
            "images_per_run": args.images,
            "rounds": {name: [round_json(m, s) for m, s in v] for name, v in runs.items()},
            "empty_images_per_s": empty.images_per_s,
            "large_images_per_s": large.images_per_s,
            "search_empty": empty_search,
            "search_large": large_search,
            "ratio": ratio,
            "ratio_target": RATIO_TARGET,
            "ratio_met": met,
        },
    )


if __name__ == "__main__":
    main()
