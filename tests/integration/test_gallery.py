"""Both gallery backends pass the same tests, with real embeddings of real photos: the
embedded Qdrant engine (qdrant-edge) and the Qdrant server adapter (qdrant-client, here in
its local mode, which speaks the server's API)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from actors.gallery import Gallery, GalleryError, ModelMismatch
from actors.gallery.edge import EdgeGallery
from actors.gallery.server import ServerGallery
from core.settings import Settings

pytestmark = pytest.mark.integration
MODEL = "buffalo_s/w600k_mbf@test"

Opener = Callable[[str | None], Gallery]


@pytest.fixture(params=["edge", "server"])
def open_at(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "edge":
        return lambda model_id, dim=512: EdgeGallery(tmp_path / "g", model_id, dim)
    return lambda model_id, dim=512: ServerGallery(f"path:{tmp_path}/q", "faces", model_id, dim)


@pytest.fixture(scope="module")
def embeddings(face_model, samples: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "biden2.jpg", "yaoming.jpg"]:
        (faces,) = face_model.analyze_bytes([(samples / name).read_bytes()], Settings().limits)
        out[name] = faces.embeddings
    return out


def photo(name: str) -> dict[str, str]:
    return {"name": name, "sha256": name}


def enrol(
    g: Gallery, embeddings, identity: str, *photos: str, name: str | None = None
) -> np.ndarray:
    """Enrol ``identity`` from ``photos`` (one point each); returns their embeddings."""
    stacked = np.concatenate([embeddings[p] for p in photos])
    g.add(identity, name, stacked, [photo(p) for p in photos])
    return stacked


def test_enrolled_people_are_found_and_ranked(open_at: Opener, embeddings) -> None:
    g = open_at(MODEL)
    enrol(g, embeddings, "obama", "obama.jpg", name="Barack Obama")
    enrol(g, embeddings, "biden", "biden.jpg", name="Joe Biden")
    (obama,), (biden,) = (g.search(embeddings[n], 2) for n in ("obama2.jpg", "biden2.jpg"))
    assert [c.identity for c in obama] == ["obama", "biden"] and obama[0].similarity > 0.6
    assert biden[0].identity == "biden" and biden[0].similarity > 0.5
    assert obama[1].similarity < 0.3
    g.close()


def test_several_photos_of_one_person_rank_as_one_identity(open_at: Opener, embeddings) -> None:
    g = open_at(MODEL)
    both = enrol(g, embeddings, "obama", "obama.jpg", "obama3.jpg")
    enrol(g, embeddings, "yao", "yaoming.jpg")
    (cands,) = g.search(embeddings["obama2.jpg"], 3)
    assert [c.identity for c in cands] == ["obama", "yao"]
    best = float(max(both @ embeddings["obama2.jpg"][0]))
    assert cands[0].similarity == pytest.approx(best, abs=1e-3)
    rows = {r["identity"]: r for r in g.identities()}  # the server pages in record-id order
    assert rows["obama"] | {"enrolled_at": None} == {
        "identity": "obama",
        "name": None,
        "photos": 2,
        "enrolled_at": None,
    }
    g.close()


def test_reenrolling_the_same_photo_does_not_duplicate(open_at: Opener, embeddings) -> None:
    g = open_at(MODEL)
    for _ in range(2):
        enrol(g, embeddings, "obama", "obama.jpg")
    assert g.size() == 1
    g.close()


def test_delete_removes_every_point_and_survives_reopening(open_at: Opener, embeddings) -> None:
    g = open_at(MODEL)
    enrol(g, embeddings, "obama", "obama.jpg", "obama3.jpg")
    enrol(g, embeddings, "biden", "biden.jpg")
    assert g.delete("obama") == 2 and g.delete("obama") == 0
    (cands,) = g.search(embeddings["obama2.jpg"], 3)
    assert [c.identity for c in cands] == ["biden"]
    g.close()
    reopened = open_at(None)  # adopts the stored model, as `identities list` does
    assert reopened.model_id == MODEL and reopened.size() == 1
    assert [r["identity"] for r in reopened.identities()] == ["biden"]
    reopened.close()


def test_within_finds_every_point_near_a_face_by_exact_search_and_delete_points_removes_them(
    open_at: Opener, embeddings
) -> None:
    # What an erasure of sightings relies on: every point at or above the threshold, however
    # many there are (more than the first limit), and none below it.
    g = open_at(MODEL)
    rng = np.random.default_rng(3)
    (obama,) = embeddings["obama.jpg"]
    near = obama + rng.normal(0, 0.012, (40, obama.size)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    far = rng.standard_normal((60, obama.size)).astype(np.float32)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    vectors = np.concatenate([near, far])
    g.add("crowd", None, vectors, [photo(f"{i}.jpg") for i in range(len(vectors))])
    threshold = Settings().matching.threshold
    expected = vectors @ obama >= threshold
    assert expected.sum() == len(near)  # the data is as meant: the near ones only
    assert np.allclose(np.sort(g.vectors("crowd") @ obama), np.sort(vectors @ obama), atol=1e-5)
    found = g.within(obama.reshape(1, -1), threshold)
    assert len(found) == len(near)
    assert g.delete_points(found) == len(near)
    assert g.within(obama.reshape(1, -1), threshold) == []
    assert len(g.vectors("crowd")) == len(far)  # the others stay


def test_another_models_gallery_is_refused(open_at: Opener, embeddings) -> None:
    g = open_at(MODEL)
    enrol(g, embeddings, "obama", "obama.jpg")
    g.close()
    with pytest.raises(ModelMismatch, match="w600k_mbf@test"):
        open_at("buffalo_l/w600k_r50@other")


def test_wrong_embedding_size_is_refused(open_at: Opener) -> None:
    g = open_at(MODEL)
    with pytest.raises(GalleryError, match="expected"):
        g.search(np.zeros((1, 128), np.float32), 3)
    g.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_sighting_older_than_its_ttl_is_gone_after_the_purge(
    backend: str, tmp_path: Path, embeddings: dict[str, np.ndarray]
) -> None:
    from actors.gallery.sightings import Sightings

    settings = Settings().override(
        gallery__backend=backend,
        gallery__path=tmp_path / "g",
        gallery__url=f"path:{tmp_path}/q",
        sightings__enabled=True,
        sightings__ttl_s=3600.0,
    )
    store = Sightings(settings, MODEL, 512)
    t0 = 1_000_000.0
    store.record(embeddings["biden2.jpg"], [{"image_id": "cam/1/7", "source": "cam"}], now=t0)
    store.record(
        embeddings["obama2.jpg"], [{"image_id": "cam/1/9", "source": "cam"}], now=t0 + 1800
    )
    (hit, *_) = store.search(embeddings["biden.jpg"][0], 5, now=t0 + 60)
    assert hit["image_id"] == "cam/1/7" and hit["expires_at"] == t0 + 3600
    # Past its TTL a sighting is never returned, and the purge deletes it for good.
    assert [h["image_id"] for h in store.search(embeddings["biden.jpg"][0], 5, now=t0 + 3601)] == [
        "cam/1/9"
    ]
    assert store.purge(now=t0 + 3601) == 1 and store.size() == 1
    assert store.purge(now=t0 + 3601) == 0
    store.close()


def test_sightings_need_a_retention_period() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        Settings().override(sightings__enabled=True)


def test_server_galleries_are_per_model_behind_an_alias(tmp_path: Path) -> None:
    from actors.gallery import current_model, open_gallery, set_current_model

    settings = Settings().override(gallery__backend="server", gallery__url=f"path:{tmp_path}")
    open_gallery(settings, MODEL, 512).close()  # the first gallery becomes the current one
    assert current_model(settings) == MODEL
    with pytest.raises(ModelMismatch, match="reindex"):
        open_gallery(settings, "buffalo_l/w600k_r50@other", 512, must_be_current=True)
    open_gallery(settings, "buffalo_l/w600k_r50@other", 512).close()  # built, not switched
    assert current_model(settings) == MODEL
    set_current_model(settings, "buffalo_l/w600k_r50@other")  # the atomic switch
    assert current_model(settings) == "buffalo_l/w600k_r50@other"
