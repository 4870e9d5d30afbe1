"""`facestream identify`: the same detection, embedding and search without Kafka."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors.gallery import open_gallery
from core.settings import Settings

pytestmark = pytest.mark.integration


def test_identify_prints_one_json_line_per_image(face_model, samples: Path, tmp_path: Path) -> None:
    gallery_dir = tmp_path / "gallery"
    (obama,) = face_model.analyze_bytes([(samples / "obama.jpg").read_bytes()], Settings().limits)
    settings = Settings().override(gallery__path=gallery_dir, gallery__backend="edge")
    g = open_gallery(settings, face_model.model_id, face_model.embedding_dim)
    g.add("obama", "Barack Obama", obama.embeddings, [{"name": "obama.jpg", "sha256": "x"}])
    g.close()
    (tmp_path / "notes.jpg").write_bytes(b"not a photo")
    photos = [samples / "obama2.jpg", samples / "t1.jpg", tmp_path / "notes.jpg"]

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "facestream.cli",
            "identify",
            "--gallery",
            str(gallery_dir),
            *map(str, photos),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["image_id"] for e in lines] == [str(p) for p in photos]
    assert lines[0]["faces"][0]["identity"] == "obama"
    assert len(lines[1]["faces"]) == 6
    assert {f["decision"] for f in lines[1]["faces"]} == {"unknown"}
    assert lines[2]["reason"] == "not_an_image"
