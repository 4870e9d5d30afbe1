"""Accuracy the way a user measures it: degraded copies of the sample photos (rotated,
mirrored, half-size JPEG q35; ``tests/photo_variants.py``), everyone enrolled from a ROTATED
photo with ``facestream enroll``, the queries sent with ``facestream produce``, the outcomes
read back with ``facestream watch --json``; then ``facestream eval`` on the same folders must
report the same figures, misses included.

The stack is private (not the session's ``pipeline``, which has people enrolled from
upright photos): the gallery must hold exactly the people of the folders, as eval's does.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facestream.embedded import EmbeddedStack
from facestream.evaluation import genuine_result, impostor_results, impostor_split, split
from tests.cli import run_cli
from tests.conftest import BASIS, embedded_settings
from tests.photo_variants import make_variant_set

pytestmark = pytest.mark.stress
MIN_IDENTIFIED = 0.8  # genuine queries that must come back match or review, right person


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="fsa-"))
    with EmbeddedStack(embedded_settings(run_dir), run_dir) as running:
        yield running


def cli(stack: EmbeddedStack, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return run_cli(stack.settings, *args, extra_env=stack.worker_env, timeout_s=timeout_s)


def stem_of(image_id: str) -> str:
    return image_id.rsplit("-", 1)[0]  # `produce` names an image "<file stem>-<8 hex>"


def outcomes(stack: EmbeddedStack, stems: set[str], timeout_s: float = 300) -> dict:
    """file stem -> (topic, event), read with `facestream watch` until every stem has one."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, tuple[str, dict]] = {}
    while time.monotonic() < deadline:
        done = cli(stack, "watch", "--json", "--from-beginning", "--dedupe", "--idle-exit", "5")
        assert done.returncode == 0, done.stderr
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                seen.setdefault(stem_of(event["image_id"]), (event.pop("topic"), event))
        if stems <= set(seen):
            return seen
        time.sleep(2)
    missing = sorted(stems - set(seen))
    raise AssertionError(f"no outcome for {missing}\n{stack.workers[0].log_tail()}")


def test_the_cli_identifies_degraded_photos_and_eval_reports_the_same(
    samples: Path, tmp_path: Path, stack: EmbeddedStack
) -> None:
    photos = make_variant_set(samples, tmp_path / "set")

    enrolled = {}
    for person, photo in photos.enrol.items():
        done = cli(stack, "enroll", person, str(photo), "--basis", BASIS)
        enrolled[person] = done.returncode == 0
        print(f"enroll {person} from {photo.name}: {(done.stdout + done.stderr).strip()}")
    assert all(enrolled.values()), enrolled

    queries = sorted(p for p in photos.labelled.rglob("*.jpg") if p.stem in photos.genuine)
    assert len(queries) == len(photos.genuine)
    done = cli(stack, "produce", *map(str, queries), *map(str, photos.impostor_photos))
    assert done.returncode == 0, done.stderr
    seen = outcomes(stack, {*photos.genuine, *(p.stem for p in photos.impostor_photos)})

    genuine = {
        stem: genuine_result(stem, person, enrolled[person], *seen[stem])
        for stem, person in photos.genuine.items()
    }
    impostors = [
        face for p in photos.impostor_photos for face in impostor_results(p.stem, *seen[p.stem])
    ]
    cli_split, cli_impostors = split(list(genuine.values())), impostor_split(impostors)
    identified = cli_split["match"] + cli_split["review"]
    print(
        f"\nCLI run: genuine {cli_split} ({identified}/{len(genuine)} identified); "
        f"impostor faces {cli_impostors}"
    )
    for g in genuine.values():
        print(f"  {g.photo}: {g.outcome} {g.candidate} {g.similarity} {g.reason or ''}")

    done = cli(
        stack,
        "eval",
        str(photos.labelled),
        "--impostors",
        str(photos.impostors),
        "--det",
        str(tmp_path / "det.png"),
        "--histogram",
        str(tmp_path / "hist.png"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    print(done.stdout.rsplit("\n{", 1)[0])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"eval: genuine {report['genuine']}; impostor faces {report['impostor']}; "
        f"FNIR {report['fnir']}; FPIR {report['fpir']}"
    )

    # What the user needs from the default thresholds.
    assert not [i for i in impostors if i.decision == "match"], impostors
    assert identified >= MIN_IDENTIFIED * len(genuine), cli_split

    # eval measures what the pipeline does: the same people enrolled, the same outcomes.
    assert report["enrolled"] == len(photos.enrol) and not report["failures_to_enrol"]
    assert report["genuine_queries"] == len(genuine)
    assert report["genuine"] == cli_split
    assert report["impostor"] == cli_impostors
    assert report["impostor_faces"] == len(impostors)
    assert report["fnir"]["k"] == len(genuine) - cli_split["match"]  # misses included
    by_photo = {Path(q["photo"]).stem: q for q in report["queries"]}
    for stem, g in genuine.items():
        q = by_photo[stem]
        assert (q["outcome"], q["candidate"]) == (g.outcome, g.candidate), stem
        if g.similarity is not None:
            assert q["similarity"] == pytest.approx(g.similarity, abs=2e-3), stem
    # With the stack up, eval projects FPIR to the deployment's gallery by default.
    assert (report["gallery_size"], report["gallery_size_source"]) == (3, "current gallery")
    with contextlib.suppress(OSError):
        assert (tmp_path / "det.png").stat().st_size > 0
