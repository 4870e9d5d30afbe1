"""The pipeline's search call on a kept gallery at several ``hnsw_ef``, against exact search.

    python -m bench.gallery --points 1000000 --dir D --keep ...
    python -m bench.gallery_ef --gallery D/facestream-gallery-bench-... \
        [--efs 256,384,512] [--oversamplings 2,4]

Choosing ``gallery.hnsw_ef`` without loading and indexing a million points again. The queries
are ``bench.gallery``'s (same ``--points``, ``--identities``, ``--queries``, ``--seed``: new
photos of enrolled people, and strangers). The gallery has changed since it was built (the
live-traffic enrolments, the erased identities), so the truth is exact search through the
engine itself (``query_batch(exact=True)``, brute force over every point it holds).

First, anything not indexed yet (live points, hidden erasures) is built into the index, and
that build is timed. Then, for each ef and rescore oversampling, ``EdgeGallery.search(faces,
top_k=3)``, 1 and 8 faces per call: ms per face, identity recall@1 (genuine), and the same
match/unknown decision at the default threshold as exact search (all queries). Last,
``facestream identities list --limit 100 --json`` as a command on the closed gallery.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.gallery.edge import EdgeGallery
from bench.common import (
    ForeignLoad,
    bench_parser,
    describe_machine,
    emit_json,
    log,
    percentiles,
    print_table,
)
from bench.gallery import (
    DECISIONS_TARGET,
    P99_TARGET_MS,
    RECALL_TARGET,
    TOP_K,
    add_data_args,
    agreement,
    cli_listing,
    gallery_folder_of,
    make_data,
    ours_cpu_s,
    search_calls,
    settle,
)
from bench.gallery_pipeline import gallery_model
from core.settings import GallerySettings


def exact_truth(gallery: EdgeGallery, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Identity and score of each query's nearest point, by brute force in the engine."""
    identities, scores = [], []
    for start in range(0, len(queries), 64):
        for hits in gallery.query_batch(queries[start : start + 64], 1, exact=True):
            identities.append(hits[0].payload["identity"] if hits else "")
            scores.append(hits[0].score if hits else -1.0)
    return identities, np.asarray(scores, np.float32)


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--gallery", type=Path, required=True, help="a kept bench.gallery root")
    parser.add_argument("--efs", default="256,384,512")
    parser.add_argument(
        "--oversamplings", default="2", help="rescore_oversampling values (int8 and the like)"
    )
    parser.add_argument(
        "--build-threads", type=int, default=0, help="the catch-up build (0: all cores)"
    )
    add_data_args(parser)
    args = parser.parse_args(argv)
    efs = [int(e) for e in args.efs.split(",")]
    oversamplings = [float(o) for o in args.oversamplings.split(",")]

    info = describe_machine()
    foreign, ours_start = ForeignLoad(), ours_cpu_s()
    log("queries: bench.gallery's data, regenerated")
    data, _ = make_data(args.points, args.identities, args.queries, args.seed)
    queries, genuine = data.queries, data.query_owner >= 0
    del data

    model = gallery_model(args.gallery)
    folder = gallery_folder_of(args.gallery, model)
    figures: dict[str, Any] = {"machine": info, "gallery": str(args.gallery)}
    figures["settled"] = settled = settle(folder, args.build_threads)
    options = GallerySettings()
    gallery = EdgeGallery(folder, None, None, options=options, auto_index=False)
    try:
        log("exact search through the engine (the truth)...")
        t = time.perf_counter()
        exact_ident, exact_s = exact_truth(gallery, queries)
        figures["exact_ms_per_query"] = 1000 * (time.perf_counter() - t) / len(queries)

        rows, by_ef = [], {}
        for ef, oversampling, per_call in itertools.product(efs, oversamplings, (1, 8)):
            gallery.hnsw_ef = ef
            gallery.options = options.model_copy(update={"rescore_oversampling": oversampling})
            results, ms = search_calls(gallery, queries, per_call)
            recall, same = agreement(results, genuine, exact_ident, exact_s)
            p = percentiles(list(ms))
            label = f"ef={ef}, oversampling {oversampling:g}, {per_call} per call"
            rows.append([label, p["p50"], p["p99"], p["max"], f"{recall:.4f}", f"{same:.4f}"])
            by_ef[label] = {"p50_ms": p["p50"], "p99_ms": p["p99"], "max_ms": p["max"],
                            "identity_recall_at_1_genuine": recall,
                            "same_decision_as_exact": same}  # fmt: skip
            log(f"  {label}: p99 {p['p99']:.2f} ms, decisions {same:.4f}")
    finally:
        gallery.close()
    cli = cli_listing(args.gallery)
    figures |= {"searches": by_ef, "cli": cli, "foreign_load_cores": foreign.cores(
        ours_cpu_s() - ours_start)}  # fmt: skip

    print_table(
        "the kept gallery",
        ["figure", "value"],
        [
            ["points", settled["points"]],
            ["unindexed points / hidden erasures when opened",
             f"{settled['unindexed']} / {settled['hidden']}"],
            ["build of those into the index, s", settled["build_s"]],
            ["exact search through the engine, ms per query (64 per call)",
             figures["exact_ms_per_query"]],
        ],
    )  # fmt: skip
    print_table(
        f"the pipeline's search call (top-{TOP_K} identities), {len(queries)} queries "
        f"({int(genuine.sum())} genuine), against exact search",
        ["search", "p50 ms/face", "p99 ms/face", "max ms/face", "identity recall@1 genuine",
         "same decision as exact"],
        rows,
    )  # fmt: skip
    print_table(
        "the command",
        ["figure", "value"],
        [
            [
                "`facestream identities list --limit 100 --json`, wall ms, p50 / max",
                f"{cli['json_ms']['p50']:.0f} / {cli['json_ms']['max']:.0f}",
            ],
            [
                "`facestream identities list --limit 100` (a table), wall ms, p50 / max",
                f"{cli['table_ms']['p50']:.0f} / {cli['table_ms']['max']:.0f}",
            ],
            ["runs failed", cli["failed"]],
            ["foreign load (cores)", figures["foreign_load_cores"]],
        ],
    )
    met = [label for label, f in by_ef.items() if f["p99_ms"] < P99_TARGET_MS
           and f["identity_recall_at_1_genuine"] >= RECALL_TARGET
           and f["same_decision_as_exact"] >= DECISIONS_TARGET]  # fmt: skip
    print_table(
        "targets",
        ["target", "searches that meet it"],
        [[f"p99 < {P99_TARGET_MS} ms, recall@1 >= {RECALL_TARGET}, decisions >= "
          f"{DECISIONS_TARGET:.1%}", ", ".join(met) or "none"]],
    )  # fmt: skip
    emit_json("gallery_ef", figures | {"meets_targets": met})


if __name__ == "__main__":
    main()
