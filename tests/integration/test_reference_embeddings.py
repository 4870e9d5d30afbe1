"""The pipeline must lose nothing of the model's published accuracy: its detections and
embeddings equal the reference insightface FaceAnalysis on the same photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.imaging import decode_image
from core.settings import Settings

pytestmark = pytest.mark.integration
PHOTOS = ["obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg", "t1.jpg", "players.jpg"]


@pytest.fixture(scope="module")
def reference():
    from insightface.app import FaceAnalysis

    from actors.models.packs import resolve_pack

    settings = Settings()
    pack = resolve_pack(None, settings.cache_dir)
    app = FaceAnalysis(
        name=str(pack.folder),
        providers=["CPUExecutionProvider"],
        allowed_modules=["detection", "recognition"],
    )
    size = settings.model.det_size
    app.prepare(ctx_id=-1, det_size=(size, size), det_thresh=settings.model.det_threshold)
    return app


@pytest.mark.parametrize("photo", PHOTOS)
def test_embeddings_equal_reference_faceanalysis(
    face_model, reference, samples: Path, photo: str
) -> None:
    img = decode_image((samples / photo).read_bytes(), Settings().limits)
    ours = face_model.analyze([img])[0]
    theirs = sorted(reference.get(img), key=lambda f: (f.bbox[0], f.bbox[1]))
    assert len(ours.faces) == len(theirs) > 0
    order = sorted(range(len(ours.faces)), key=lambda i: tuple(ours.faces[i].bbox[:2]))
    for i, ref in zip(order, theirs, strict=True):
        np.testing.assert_allclose(ours.faces[i].bbox, ref.bbox, atol=0.05)
        cosine = float(ours.embeddings[i] @ ref.normed_embedding)
        assert cosine >= 0.999, f"{photo} face {i}: cosine {cosine:.5f}"


def test_model_pack_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    from actors.models.packs import DEFAULT_PACK_FILES, ModelPackError, resolve_pack

    cache = tmp_path / "cache"
    resolve_pack(None, cache)  # materialised from the wheel and verified
    victim = cache / "models" / "buffalo_s" / next(iter(DEFAULT_PACK_FILES))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelPackError, match="sha256 mismatch"):
        resolve_pack(None, cache)
