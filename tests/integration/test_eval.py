"""`facestream eval` on the sample photos: the figures that justify the default threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facestream.samples import layout_eval_set

pytestmark = pytest.mark.integration


def test_eval_reports_rank1_tpir_fpir_and_saves_histograms(samples: Path, tmp_path: Path) -> None:
    labelled, impostors = layout_eval_set(samples, tmp_path / "set")
    png = tmp_path / "hist.png"
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
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threshold"] == 0.4
    assert result["genuine_queries"] == 4 and result["enrolled"] == 3
    assert result["impostor_faces"] >= 8
    assert result["rank1"] == 1.0 and result["tpir"] == 1.0 and result["fpir"] == 0.0
    # The default sits between the highest impostor and the lowest genuine score.
    assert result["suggested_threshold"] < result["threshold"]
    assert Image.open(png).size == (640, 320)


def test_eval_counts_an_impostor_above_the_threshold_as_a_false_match(
    samples: Path, tmp_path: Path
) -> None:
    """Putting an enrolled person's other photo among the impostors must raise FPIR."""
    from core.settings import Settings
    from facestream.evaluation import evaluate

    labelled, impostors = layout_eval_set(samples, tmp_path / "set")
    (impostors / "obama2.jpg").write_bytes((samples / "obama2.jpg").read_bytes())
    result = evaluate(Settings(), labelled, impostors)
    assert result.fpir == pytest.approx(1 / result.impostor_faces)
    assert result.suggested_threshold > result.threshold
