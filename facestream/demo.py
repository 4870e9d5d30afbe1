"""``facestream demo``: the whole pipeline on the embedded stack and sample photos."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.settings import Settings
from core.waiting import Deadline
from facestream.embedded import EmbeddedStack, private_settings
from facestream.render import console, event_line, kv_table
from facestream.samples import ensure_samples
from facestream.tally import Tally
from streams.clients import (
    ImageToSend,
    outcome_topics,
    produce_images,
    read_outcomes,
    request_enrollment,
    tail,
)
from streams.enrollment import EnrollmentRequest, Photo

# identity -> (display name, enrolment photos)
ENROLMENTS = {
    "obama": ("Barack Obama", ["obama.jpg"]),
    "biden": ("Joe Biden", ["biden.jpg"]),
    "yao-ming": ("Yao Ming", ["yaoming.jpg"]),
}
DEMO_BASIS = "demo: public figures, photos from public test packages"
# Other photos of the enrolled people, and strangers (a team photo with Yao Ming among 21
# others, a group of six, a panel of five).
STREAM = ["obama2.jpg", "obama3.jpg", "biden2.jpg", "players.jpg", "t1.jpg", "gdp.jpg"]


def no_face_png() -> bytes:
    """A smooth gradient: a valid image with no face in it."""
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 128)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def demo_images(samples: Path) -> list[ImageToSend]:
    images = [
        ImageToSend(name.rsplit(".", 1)[0], (samples / name).read_bytes(), "demo")
        for name in STREAM
    ]
    images.append(ImageToSend("landscape", no_face_png(), "demo"))
    images.append(ImageToSend("not-an-image", b"this is a text file, not a photo", "demo"))
    return images


def run_demo(base: Settings, timeout_s: float = 300.0) -> int:
    started = time.monotonic()
    console().print("fetching sample photos...")
    samples = ensure_samples(base.cache_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="facestream-demo-"))
    settings = private_settings(base, run_dir)
    console().print(f"starting broker and worker (logs in {run_dir})...")
    with EmbeddedStack(settings, run_dir) as stack:
        try:
            tally = asyncio.run(_enrol_and_stream(settings, samples, timeout_s))
        except (TimeoutError, RuntimeError) as exc:
            console().print(
                f"[red]demo failed: {exc}[/]\n--- worker log ---\n" + stack.workers[0].log_tail()
            )
            return 1
    summary = {**tally.summary(), "wall time (s)": f"{time.monotonic() - started:.1f}"}
    console().print(kv_table("summary", summary))
    expected = len(STREAM) + 2
    return 0 if tally.images == expected else 1


async def _enrol_and_stream(settings: Settings, samples: Path, timeout_s: float) -> Tally:
    for identity, (name, photos) in ENROLMENTS.items():
        request = EnrollmentRequest(
            "enroll",
            identity,
            name,
            tuple(Photo(p, (samples / p).read_bytes()) for p in photos),
            basis=DEMO_BASIS,
        )
        reply = await request_enrollment(settings, request, timeout_s)
        state = "[green]enrolled[/]" if reply["ok"] else f"[red]refused: {reply['error']}[/]"
        console().print(f"{state} {identity} ({name}) from {', '.join(photos)}")
    images = demo_images(samples)
    tally = Tally()
    async with tail(settings, outcome_topics(settings)) as consumer:
        await produce_images(settings, images)
        console().print(f"produced {len(images)} images; match events:")
        deadline = Deadline(timeout_s)
        async for kind, event in read_outcomes(settings, consumer, idle_timeout_s=timeout_s):
            if tally.add(kind, event):
                console().print("  " + event_line(kind, event))
            if tally.images == len(images):
                break
            if deadline.expired:
                raise TimeoutError(f"only {tally.images} of {len(images)} outcomes arrived")
    return tally
