"""Bulk enrolment through the CLI on a real stack: a folder of people with a progress bar, a
resume after SIGKILL that leaves every photo enrolled exactly once, and the duplicate check
on a real face enrolled under two names.

The stack is this module's own: the duplicate check depends on who is enrolled, and the
session's shared gallery holds the sample people already. Each test erases whom it enrolled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from core.waiting import wait_until
from facestream.bulk_enroll import Journal
from facestream.embedded import EmbeddedStack
from streams.clients import read_log
from streams.enrollment import EnrollmentRequest, split_state_key
from streams.topics import state_topic
from tests.cli import run_cli
from tests.conftest import BASIS, Pipeline, embedded_settings, unique
from tests.photo_variants import jpeg

pytestmark = pytest.mark.integration

# Distinct people: none of them matches another above the threshold (README "Thresholds").
PEOPLE = {
    "obama": ["obama.jpg", "obama2.jpg", "obama3.jpg"],
    "biden": ["biden.jpg", "biden2.jpg"],
    "yao": ["yaoming.jpg"],
}


@pytest.fixture(scope="module")
def stack(samples: Path) -> Iterator[Pipeline]:
    run_dir = Path(tempfile.mkdtemp(prefix="fsb-"))
    settings = embedded_settings(run_dir)
    with EmbeddedStack(settings, run_dir) as running:
        pipeline = Pipeline(settings, running)
        # Acknowledged once the worker is up: the tests time the enrolments, not its start.
        assert pipeline.enroll(EnrollmentRequest("delete", unique("nobody")))["ok"]
        yield pipeline


def cli(stack: Pipeline, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The CLI fails by itself when no acknowledgement comes for 120 s; a whole run may take
    # longer on a loaded runner.
    return run_cli(stack.settings, *args, extra_env=env, timeout_s=600)


def people_folder(root: Path, samples: Path, copies: int = 1) -> dict[str, list[Path]]:
    """One subfolder per person (a fresh identity each); ``copies`` > 1 adds re-encoded and
    mirrored copies of each photo (other bytes, the same face)."""
    out: dict[str, list[Path]] = {}
    for person, names in PEOPLE.items():
        identity = unique(person)
        folder = root / identity
        folder.mkdir(parents=True)
        for name in names:
            img = Image.open(samples / name).convert("RGB")
            for i in range(copies):
                path = folder / f"{Path(name).stem}-{i}.jpg"
                shown = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img
                if copies == 1:
                    path.write_bytes((samples / name).read_bytes())
                else:
                    path.write_bytes(jpeg(shown, 95 - 3 * i))
                out.setdefault(identity, []).append(path)
    return out


def erase(stack: Pipeline, identities: list[str]) -> None:
    for identity in identities:
        assert stack.enroll(EnrollmentRequest("delete", identity))["ok"]


def listed(stack: Pipeline) -> dict[str, int]:
    """identity -> photos, as ``identities list`` shows them."""
    done = run_cli(stack.settings, "identities", "list", "--json", extra_env=stack.stack.worker_env)
    assert done.returncode == 0, done.stderr
    return {row["identity"]: row["photos"] for row in map(json.loads, done.stdout.splitlines())}


def summary_of(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


def state_records(stack: Pipeline) -> Counter[str]:
    """Records (not tombstones) per key on the state topic."""

    async def read() -> Counter[str]:
        topic = state_topic(stack.settings)
        return Counter(
            [rec.key.decode() async for rec in read_log(stack.settings, topic) if rec.value]
        )

    return asyncio.run(read())


def test_a_folder_of_people_is_enrolled_with_a_progress_bar_and_a_rerun_sends_nothing(
    stack: Pipeline, samples: Path, tmp_path: Path
) -> None:
    people = people_folder(tmp_path / "people", samples)
    (tmp_path / "people" / "stray.jpg").write_bytes(b"not in a subfolder")
    journal = tmp_path / "journal.jsonl"
    args = ("enroll", str(tmp_path / "people"), "--basis", BASIS, "--journal", str(journal))
    try:
        # A terminal, as rich sees it: the bar is drawn (and cleared at the end).
        done = cli(stack, *args, "--json", TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
        assert done.returncode == 0, done.stderr
        assert "━" in done.stdout and "enrolling" in done.stdout
        assert "skipped" in done.stdout and "stray.jpg" in done.stdout
        summary = summary_of(done)
        assert (summary["photos"], summary["enrolled"], summary["refused"]) == (6, 6, [])
        assert {i: listed(stack).get(i) for i in people} == {i: len(p) for i, p in people.items()}

        again = summary_of(cli(stack, *args, "--json"))  # from the journal: nothing is sent
        assert (again["enrolled"], again["already_enrolled"], again["refused"]) == (0, 6, [])
    finally:
        erase(stack, list(people))


def test_a_run_killed_mid_way_resumes_and_enrols_every_photo_exactly_once(
    stack: Pipeline, samples: Path, tmp_path: Path
) -> None:
    people = people_folder(tmp_path / "people", samples, copies=5)  # 30 photos
    total = sum(len(p) for p in people.values())
    journal = tmp_path / "journal.jsonl"
    args = ["enroll", str(tmp_path / "people"), "--basis", BASIS, "--journal", str(journal)]
    args += ["--batch", "2", "--in-flight", "2"]

    def journaled() -> int:
        return len(journal.read_text().splitlines()) if journal.exists() else 0

    try:
        first = subprocess.Popen(
            [sys.executable, "-m", "facestream.cli", *args],
            env={**os.environ, **stack.settings.env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: journaled() >= 4, timeout_s=120, what="4 photos journaled")
            first.send_signal(signal.SIGKILL)  # a crash: requests are in flight
        finally:
            first.wait(30)
        at_kill = journaled()
        assert at_kill < total, "the first run ended before it could be killed"

        resumed = cli(stack, *args, "--json")
        assert resumed.returncode == 0, resumed.stderr
        summary = summary_of(resumed)
        assert summary["refused"] == [] and summary["enrolled"] + summary["already_enrolled"] == (
            total
        )
        assert summary["already_enrolled"] >= at_kill  # the journal spared those

        assert {i: listed(stack).get(i) for i in people} == {i: len(p) for i, p in people.items()}
        records = state_records(stack)
        mine = {k: n for k, n in records.items() if split_state_key(k)[0] in people}
        assert len(mine) == total and set(mine.values()) == {1}  # one record per photo, once
        outcomes = Journal(journal).outcomes  # as a third run would read it
        assert len(outcomes) == total and all(r["ok"] for r in outcomes.values())
    finally:
        erase(stack, list(people))


def test_a_face_enrolled_under_a_second_name_is_refused_and_a_repeat_is_a_no_op(
    stack: Pipeline, samples: Path, tmp_path: Path
) -> None:
    barack, twin, joe = unique("barack"), unique("twin"), unique("joe")
    try:
        done = cli(stack, "enroll", barack, str(samples / "obama.jpg"), "--basis", BASIS)
        assert done.returncode == 0, done.stderr
        repeat = cli(stack, "enroll", barack, str(samples / "obama.jpg"), "--basis", BASIS)
        assert repeat.returncode == 0 and "'photos': 0" in repeat.stdout, repeat.stdout
        assert listed(stack)[barack] == 1

        # The single-person form: one line, non-zero, naming the reason and the other person.
        one = cli(stack, "enroll", twin, str(samples / "obama2.jpg"), "--basis", BASIS)
        assert one.returncode != 0 and "Traceback" not in one.stderr
        assert "duplicate_identity" in one.stderr and barack in one.stderr

        # A manifest: the duplicate is refused and reported, the other person enrolled.
        manifest = tmp_path / "people.csv"
        manifest.write_text(
            "identity,name,photo,basis\n"
            f"{twin},Twin,{samples / 'obama3.jpg'},{BASIS}\n"
            f"{joe},Joe,{samples / 'biden.jpg'},\n"
        )
        journal = tmp_path / "journal.jsonl"
        bulk = cli(stack, "enroll", str(manifest), "--basis", BASIS, "--journal", str(journal))
        assert bulk.returncode != 0 and "1 photo(s) refused" in bulk.stderr, bulk.stderr
        assert "duplicate_identity" in bulk.stdout and barack in bulk.stdout
        now = listed(stack)
        assert twin not in now and now[joe] == 1
    finally:
        erase(stack, [barack, twin, joe])
