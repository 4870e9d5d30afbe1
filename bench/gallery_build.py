"""Searches and enrolments while the index rebuilds, on a kept gallery.

    python -m bench.gallery --points 1000000 --dir D --keep ...
    python -m bench.gallery_build --gallery D/facestream-gallery-bench-... [--builds 2]

The target of issue 15: no search waits more than 100 ms on index building. The gallery is
first settled (anything outside the index built into it), then opened as a deployment
opens it (the index served by a normal process), and ``bench.gallery``'s live traffic runs:
enrolments of 5 photos at ``--enrol-rate`` identities/s and paced searches of 3 faces,
until ``--builds`` background builds triggered by the enrolments have been served. From the
second build on, the index being searched is the one the first build served, from the
builder's own process. The traffic runs once per ``--pause-shares`` value
(``gallery.build_pause_share``: 0 never stops the builder while searches run), one after
the other on the same gallery.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from actors.gallery.edge import EdgeGallery
from bench.common import ForeignLoad, bench_parser, describe_machine, emit_json, log, print_table
from bench.gallery import (
    add_data_args,
    add_traffic_args,
    gallery_folder_of,
    live_traffic,
    make_data,
    ours_cpu_s,
    print_traffic,
    settle,
)
from bench.gallery_pipeline import gallery_model
from core.settings import GallerySettings

WAIT_TARGET_MS = 100.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--gallery", type=Path, required=True, help="a kept bench.gallery root")
    parser.add_argument("--builds", type=int, default=2, help="background builds to wait for")
    add_traffic_args(parser, 900.0)
    add_data_args(parser)
    parser.add_argument(
        "--pause-shares",
        default=f"0,{GallerySettings().build_pause_share}",
        help="gallery.build_pause_share values, one traffic run each",
    )
    args = parser.parse_args(argv)

    info = describe_machine()
    log("queries and identity centres: bench.gallery's data, regenerated")
    data, centres = make_data(args.points, args.identities, args.queries, args.seed)
    queries = data.queries
    del data
    folder = gallery_folder_of(args.gallery, gallery_model(args.gallery))
    settled = settle(folder)
    runs: dict[str, dict] = {}
    for share in (float(v) for v in args.pause_shares.split(",")):
        foreign, ours_start = ForeignLoad(), ours_cpu_s()
        gallery = EdgeGallery(folder, None, None, options=GallerySettings(build_pause_share=share))
        try:
            t = time.perf_counter()
            gallery.search(queries[:1], 3)  # starts the live and index processes
            open_s = time.perf_counter() - t
            log(f"pause share {share}: opened in {open_s:.1f} s; traffic until {args.builds}"
                " builds are served")  # fmt: skip
            tag = f"new{int(time.time())}"  # new people, not the last run's again
            traffic = live_traffic(gallery, centres, queries, args, args.seed + 1, args.builds, tag)
            points = gallery.size()
        finally:
            gallery.close()
        foreign_cores = foreign.cores(ours_cpu_s() - ours_start)
        runs[str(share)] = {"open_s": open_s, "traffic": traffic, "points_after": points,
                            "foreign_load_cores": foreign_cores}  # fmt: skip
        print_table(
            f"the kept gallery, gallery.build_pause_share {share}",
            ["figure", "value"],
            [
                ["points when opened / after the traffic", f"{settled['points']} / {points}"],
                ["open (live and index processes, prewarm), s", open_s],
                ["foreign load during the traffic (cores)", foreign_cores],
            ],
        )
        print_traffic(traffic, args)

    print_table(
        "target",
        ["gallery.build_pause_share", "target", "measured", "verdict"],
        [[share, f"no search waits > {WAIT_TARGET_MS:.0f} ms while a build runs",
          f"max {d['max']:.1f} ms, p99 {d['p99']:.1f} ms over {d['n']} searches",
          "met" if d["max"] <= WAIT_TARGET_MS else "NOT met"]
         for share, run in runs.items()
         for d in [run["traffic"]["searches"]["during_build"]]],
    )  # fmt: skip
    emit_json(
        "gallery_build",
        {"machine": info, "gallery": str(args.gallery), "settled": settled, "runs": runs},
    )


if __name__ == "__main__":
    main()
