"""Quantization of the gallery's index, side by side: memory per face against recall and speed.

    python -m bench.gallery_quantization [--points 200000] [--identities 40000]
        [--kinds none,int8,turbo4,turbo2,binary] [--ef 128] [--oversampling 2.0]

The data and the scoring of ``bench/gallery.py``. For each ``gallery.quantization`` kind, one
``EdgeGallery`` is loaded (``add_many``) and indexed from scratch by its builder process (all
cores: this compares indexes, it is not a live gallery); then the pipeline's call,
``EdgeGallery.search(1 face, top_k=3)``, runs every query at ``--ef``, rescoring the
quantized candidates with the original vectors (``--oversampling``). Memory: the bytes per
face of the quantized copy (what must stay in RAM for fast searches), of the whole index
folder, and the index process's resident memory after the searches.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from actors.gallery.edge import EdgeGallery
from bench.common import ForeignLoad, bench_parser, describe_machine, emit_json, log, print_table
from bench.gallery import (
    DIM,
    MODEL,
    exact_top1,
    index_files,
    load,
    make_data,
    ours_cpu_s,
    point_rows,
    score,
    search_calls,
)
from core.settings import GallerySettings


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--identities", type=int, default=40_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="none,int8,turbo4,turbo2,binary")
    parser.add_argument("--ef", type=int, default=GallerySettings().hnsw_ef)
    parser.add_argument("--oversampling", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)

    info = describe_machine()
    foreign, ours_start = ForeignLoad(), ours_cpu_s()
    data, _ = make_data(args.points, args.identities, args.queries, args.seed)
    truth = exact_top1(data.vectors, data.queries)
    rows = point_rows(data)
    results: dict[str, Any] = {}
    table = []
    for kind in args.kinds.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"facestream-quant-bench-{kind}-", dir=args.dir))
        try:
            options = GallerySettings(
                quantization=kind, rescore_oversampling=args.oversampling, index_threads=0
            )
            gallery = EdgeGallery(root / "g", MODEL, DIM, args.ef, options, auto_index=False)
            log(f"{kind}: loading {args.points} points...")
            load(gallery, data)
            t = time.perf_counter()
            gallery.build_index(wait=True)
            build_s = time.perf_counter() - t
            log(f"{kind}: indexed in {build_s:.0f} s; searching...")
            res, ms = search_calls(gallery, data.queries, 1)
            top1 = [
                hits
                for start in range(0, len(data.queries), 64)
                for hits in gallery.query_batch(data.queries[start : start + 64], 1)
            ]
            scored = score(kind, res, ms, data, truth, top1, rows)
            assert gallery._index is not None
            rss = psutil.Process(gallery._index.proc.pid).memory_info().rss
            files = {r[0]: r[2] for r in index_files(root / "g" / gallery._state["index"], 1)}
            gallery.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        per_face = {part: b / args.points for part, b in files.items()}
        quantized = per_face.get("quantized vectors", 0.0)
        p50, p99 = np.percentile(scored.ms_per_face, [50, 99])
        table.append(
            [kind, quantized, per_face["total"], rss / args.points, build_s, p50, p99,
             f"{scored.identity_recall_genuine:.4f}", f"{scored.point_recall_genuine:.4f}",
             f"{scored.point_recall_strangers:.4f}", f"{scored.decisions:.4f}"]
        )  # fmt: skip
        results[kind] = {
            **scored.figures(),
            "build_s": build_s,
            "bytes_per_face": per_face,
            "index_rss_bytes_per_face": rss / args.points,
        }
    print_table(
        f"quantization at {args.points} points, ef={args.ef}, oversampling {args.oversampling},"
        f" 1 face per call, {len(data.queries)} queries",
        ["quantization", "quantized B/face", "index files B/face", "index RSS B/face",
         "build s", "p50 ms/face", "p99 ms/face", "identity recall@1 genuine",
         "point recall@1 genuine", "point recall@1 strangers", "same decision as exact"],
        table,
    )  # fmt: skip
    emit_json(
        "gallery_quantization",
        {
            "machine": info,
            "points": args.points,
            "identities": args.identities,
            "ef": args.ef,
            "oversampling": args.oversampling,
            "kinds": results,
            "foreign_load_cores": foreign.cores(ours_cpu_s() - ours_start),
        },
    )


if __name__ == "__main__":
    main()
