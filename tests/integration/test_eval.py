"""`facestream eval` on the sample photos: the product's enrolment and search paths, misses
counted, intervals that say how little a small set establishes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.settings import Settings
from facestream.evaluation import evaluate, wilson
from facestream.samples import layout_eval_set

pytestmark = pytest.mark.integration


def test_eval_reports_fnir_fpir_with_intervals_projections_and_pictures(
    samples: Path, tmp_path: Path
) -> None:
    labelled, impostors = layout_eval_set(samples, tmp_path / "set")
    png, det = tmp_path / "hist.png", tmp_path / "det.png"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "facestream.cli",
            "eval",
            str(labelled),
            "--impostors",
            str(impostors),
            "--histogram",
            str(png),
            "--det",
            str(det),
            "--gallery-size",
            "5000",
            "--target-fpir",
            "0.001",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threshold"] == 0.4 and result["review_threshold"] == 0.3
    assert result["genuine_queries"] == 4 and result["enrolled"] == 3
    assert sum(result["genuine"].values()) == result["genuine_queries"]
    assert result["genuine"]["match"] == 4 and result["fnir"]["k"] == 0
    assert result["impostor_faces"] >= 8 and result["impostor"]["match"] == 0
    # Nine impostor faces, none matched: FPIR is 0 "somewhere below ~0.3", not 0.
    n = result["fpir"]["n"]
    assert result["fpir"]["high"] == pytest.approx(wilson(0, n)[1]) and result["fpir"]["high"] > 0.2
    # p(t) from every impostor face against every enrolled identity, not only rank 1.
    assert result["impostor_comparisons"]["n"] == result["impostor_faces"] * 3
    assert result["gallery_size"] == 5000 and result["gallery_size_source"] == "given"
    assert {p["gallery_size"] for p in result["projections"]} == {100, 10_000, 1_000_000}
    suggested = result["suggested"]
    assert suggested["match"]["gallery_size"] == 5000
    assert suggested["match"]["target_fpir"] == 0.001
    assert suggested["review"]["target_fpir"] == pytest.approx(0.01)
    assert suggested["review"]["threshold"] <= suggested["match"]["threshold"]
    assert not suggested["match"]["established"]  # 27 comparisons establish nothing at 2e-7
    assert Image.open(png).size == (640, 320) and Image.open(det).size == (640, 480)
    assert "FNIR" in out.stdout and "N=1,000,000" in out.stdout


def test_an_impostor_above_the_threshold_is_a_false_match(
    samples: Path, tmp_path: Path, face_model: object
) -> None:
    """An enrolled person's other photo among the impostors must raise FPIR."""
    labelled, impostors = layout_eval_set(samples, tmp_path / "set")
    (impostors / "obama2.jpg").write_bytes((samples / "obama2.jpg").read_bytes())
    result = evaluate(Settings(), labelled, impostors, gallery_size=1000, model=face_model)
    summary = result.summary()
    assert summary["fpir"]["k"] == 1 and summary["impostor"]["match"] == 1
    assert summary["suggested"]["match"]["threshold"] > result.threshold


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_failures_to_enrol_and_to_acquire_are_misses(
    samples: Path, tmp_path: Path, face_model: object
) -> None:
    """The product's enrolment refuses a group photo (several comparable faces): its person's
    queries are misses; a query photo without a usable face is a miss too."""
    labelled, impostors = layout_eval_set(samples, tmp_path / "set")
    group = labelled / "group"
    group.mkdir()
    (group / "a-t1.jpg").write_bytes((samples / "t1.jpg").read_bytes())
    (group / "b-gdp.jpg").write_bytes((samples / "gdp.jpg").read_bytes())
    blank = Image.new("RGB", (400, 400), (200, 200, 200))
    (labelled / "biden" / "z-blank.jpg").write_bytes(jpeg(blank))
    result = evaluate(Settings(), labelled, impostors, gallery_size=1000, model=face_model)
    summary = result.summary()
    assert summary["enrolled"] == 3 and summary["identities"] == 4
    (refused,) = summary["failures_to_enrol"]
    assert refused["identity"] == "group" and refused["reason"] == "multiple_faces"
    assert summary["genuine"]["failure_to_enrol"] == 1
    assert summary["genuine"]["failure_to_acquire"] == 1
    (fta,) = summary["failures_to_acquire"]
    assert fta["photo"].endswith("z-blank.jpg")
    assert summary["genuine_queries"] == 6
    assert summary["fnir"]["k"] == 2 and summary["fnir"]["n"] == 6  # misses in the denominator
