"""Bulk enrolment against the bare models, side by side: photos/s on the same photos.

    python -m bench.enroll [--people 60] [--photos 2] [--batch 8] [--in-flight 4]
                           [--replicas 1] [--json]

``--people`` identities of ``--photos`` photos each (distinct bytes: re-encoded and mirrored
copies of the single-face sample photos), measured three ways in one run:

- ``bare models``: ``FaceModel.analyze_bytes`` on those photos in this process, in batches
  of ``batch.size``: decode, detect, align, embed, nothing else (the ceiling of one replica);
- ``bulk enrolment``: ``facestream enroll FOLDER``'s code path (``bulk_enroll.send_all``)
  into a fresh embedded stack: requests of up to ``--batch`` photos of one person,
  ``--in-flight`` at a time, through the worker (state records, the duplicate check's search,
  the gallery write, the ack) and a journal fsynced per acknowledgement;
- ``rerun, no journal``: the same folder again with an empty journal: every photo is sent and
  answered ``already_enrolled`` by the worker without model time (a crash's cost, at most).

Faces repeat across identities here (a few sample people), so the stack runs with
``privacy.allow_duplicate_faces``: each photo is still searched and reported, not refused.
Caps at a few minutes with the defaults (most of it the stack's start).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from actors.models import FaceModel, load_face_model
from bench.common import bench_parser, describe_machine, emit_json, log, print_table
from bench.flow import running_stack
from core.settings import Settings
from facestream.bulk_enroll import Journal, plan, send_all
from facestream.samples import ensure_samples

SINGLE_FACES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "biden2.jpg", "yaoming.jpg"]
BASIS = "benchmark: sample photos of public figures from public packages"


def build_folder(root: Path, people: int, photos: int) -> int:
    """``people`` subfolders of ``photos`` photos each, every file distinct bytes."""
    samples = ensure_samples(Settings().cache_dir)
    images = [Image.open(samples / name).convert("RGB") for name in SINGLE_FACES]
    n = 0
    for person in range(people):
        folder = root / f"person-{person:05d}"
        folder.mkdir(parents=True)
        for k in range(photos):
            img = images[(person * photos + k) % len(images)]
            if (person + k) % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95 - (person * photos + k) % 20)
            (folder / f"{k}.jpg").write_bytes(buf.getvalue())
            n += 1
    return n


def bare_models(settings: Settings, model: FaceModel, blobs: list[bytes]) -> float:
    """Photos/s of the model alone, in this process (after one warm-up batch)."""
    size = settings.batch.size
    model.analyze_bytes(blobs[:size], settings.limits)
    t0 = time.monotonic()
    for i in range(0, len(blobs), size):
        model.analyze_bytes(blobs[i : i + size], settings.limits)
    return len(blobs) / (time.monotonic() - t0)


def enrol(settings: Settings, folder: Path, journal_path: Path, **kwargs: Any) -> dict[str, Any]:
    journal = Journal(journal_path)
    try:
        summary = asyncio.run(send_all(settings, plan(folder, BASIS).entries, journal, **kwargs))
    finally:
        journal.close()
    return summary.as_dict()


def main() -> None:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--photos", type=int, default=2, help="photos per person")
    parser.add_argument("--batch", type=int, default=8, help="photos per request at most")
    parser.add_argument("--in-flight", type=int, default=4, help="requests in flight")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas of the stack")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()

    info = describe_machine()
    work = Path(tempfile.mkdtemp(prefix="fsbench-enroll-"))
    try:
        total = build_folder(work / "people", args.people, args.photos)
        blobs = [p.read_bytes() for p in sorted((work / "people").rglob("*.jpg"))]
        base = Settings()
        overrides = {"ray__model_replicas": args.replicas, "privacy__allow_duplicate_faces": True}
        log("starting the stack")
        with running_stack(base, **overrides) as running:
            # The bare models run while the stack idles, right before and after the bulk
            # run: the same machine, the same neighbours; two figures bracket the noise.
            model = load_face_model(base)
            log(f"bare models on {total} photos")
            bare = [bare_models(base, model, blobs)]
            kwargs = {"batch": args.batch, "in_flight": args.in_flight, "timeout_s": 300.0}
            log(f"bulk enrolment of {args.people} people, {total} photos")
            first = enrol(running.settings, work / "people", work / "journal.jsonl", **kwargs)
            log("bare models again")
            bare.append(bare_models(base, model, blobs))
            log("the same folder again, without its journal")
            again = enrol(running.settings, work / "people", work / "fresh.jsonl", **kwargs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if first["enrolled"] != total or again["already_enrolled"] != total:
        raise SystemExit(f"not every photo enrolled once: {first} / {again}")
    bulk = total / first["seconds"]
    rerun = total / again["seconds"]
    mean = sum(bare) / len(bare)
    bare_label = f"bare models (before {bare[0]:.1f}, after {bare[1]:.1f})"
    rows = [
        [bare_label, total, total / mean, mean, 1.0],
        [f"bulk enrolment, {args.replicas} replica(s)", total, first["seconds"], bulk, bulk / mean],
        ["rerun without journal (no-ops)", total, again["seconds"], rerun, rerun / mean],
    ]
    print_table(
        f"bulk enrolment: {args.people} people x {args.photos} photos, batch {args.batch}, "
        f"{args.in_flight} in flight",
        ["path", "photos", "seconds", "photos/s", "x bare models"],
        rows,
    )
    if args.json:
        emit_json(
            "enroll",
            {
                "machine": info,
                "photos": total,
                "bare_photos_per_s": bare,
                "bulk_photos_per_s": bulk,
                "rerun_photos_per_s": rerun,
                "bulk_vs_bare": bulk / mean,
                "duplicates_reported": len(first["duplicates"]),
            },
        )


if __name__ == "__main__":
    main()
