"""``facestream eval``'s arithmetic: intervals, misses in the denominators, the gallery-size
projection and the threshold suggestion. No model, no photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facestream.evaluation import (
    EvalResult,
    GenuineResult,
    ImpostorResult,
    ImpostorTail,
    Rate,
    comparisons_needed,
    det_png,
    fnir,
    fpir,
    gallery_fpir,
    genuine_result,
    histogram_png,
    impostor_results,
    per_comparison_target,
    query_face,
    split,
    suggest_threshold,
    wilson,
)


def test_wilson_matches_published_values() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    low, high = wilson(0, 9)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (9 + 1.959964**2))
    assert wilson(9, 9)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)  # no data: no information


def test_nine_impostors_cannot_establish_an_fpir_of_1e_3() -> None:
    _, high = Rate(0, 9).interval
    assert high > 0.29  # zero false matches of nine: FPIR could still be ~30%
    # Only thousands of impostors, none crossing, bound it by 1e-3.
    assert Rate(0, 3000).interval[1] > 1e-3 > Rate(0, 4000).interval[1]
    assert comparisons_needed(1e-3) == pytest.approx(3838, abs=1)


def test_the_interval_contains_the_rate_and_narrows_with_more_data() -> None:
    widths = []
    for n in (10, 100, 1000):
        low, high = wilson(n // 10, n)
        assert low <= 0.1 <= high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)


def genuine(outcome: str, candidate: str | None = "ann", similarity: float | None = 0.9):
    return GenuineResult("p.jpg", "ann", outcome, candidate, similarity)


def test_fnir_counts_failures_to_enrol_and_acquire_as_misses() -> None:
    results = [
        genuine("match", similarity=0.8),
        genuine("match", similarity=0.5),
        genuine("review", similarity=0.35),
        genuine("unknown", similarity=0.1),
        genuine("wrong_identity", candidate="bob", similarity=0.9),
        GenuineResult("q.jpg", "ann", "failure_to_enrol", reason="no_face"),
        GenuineResult("r.jpg", "ann", "failure_to_acquire", reason="blurry"),
    ]
    at_match = fnir(results, 0.4)
    assert (at_match.k, at_match.n) == (5, 7)  # only the two matches are hits
    assert fnir(results, 0.3).k == 4  # the review is a hit at its own threshold
    assert fnir(results, 0.6).k == 6
    # A wrong identity is a miss however high its similarity.
    assert fnir(results, -1.0).k == 3
    assert split(results) == {
        "match": 2,
        "review": 1,
        "wrong_identity": 1,
        "unknown": 1,
        "failure_to_enrol": 1,
        "failure_to_acquire": 1,
    }


def test_fpir_counts_rank1_crossings_of_searched_impostor_faces() -> None:
    top1 = [0.1, 0.45, None, 0.3, 0.41]
    assert (fpir(top1, 0.4).k, fpir(top1, 0.4).n) == (2, 5)
    assert fpir(top1, 0.5).k == 0
    assert fpir([], 0.4).n == 0


def test_gallery_fpir_is_the_chance_that_any_of_n_comparisons_crosses() -> None:
    assert gallery_fpir(0.0, 10**6) == 0.0
    assert gallery_fpir(0.3, 1) == pytest.approx(0.3)
    assert gallery_fpir(0.01, 10) == pytest.approx(1 - 0.99**10)
    # About linear while small: 1e-9 per comparison, a million identities, ~1e-3.
    assert gallery_fpir(1e-9, 10**6) == pytest.approx(1e-3, rel=1e-3)
    assert gallery_fpir(1e-4, 10**6) == pytest.approx(1.0)
    # The inverse: the per-comparison tail a target needs at a gallery size.
    p = per_comparison_target(1e-3, 1000)
    assert p == pytest.approx(1e-6, rel=1e-3)
    assert gallery_fpir(p, 1000) == pytest.approx(1e-3)


def test_the_tail_uses_every_comparison_and_extrapolates_past_the_data() -> None:
    tail = ImpostorTail(np.array([-0.1, 0.0, 0.0, 0.05, 0.1, 0.2]))
    assert tail.empirical(0.1).k == 2 and tail.empirical(0.1).n == 6
    assert tail.p(0.1) >= tail.empirical(0.1).value
    assert tail.empirical(0.4).k == 0 and 0 < tail.p(0.4) < 1e-2  # normal tail beyond the max
    assert tail.p_upper(0.4) == pytest.approx(wilson(0, 6)[1])  # what six can exclude
    assert tail.expected_fpir(0.4, 100) < tail.expected_fpir(0.4, 10_000)
    assert tail.upper_fpir(0.4, 100) >= tail.expected_fpir(0.4, 100)
    assert ImpostorTail(np.array([])).p(0.0) == 0.0


@pytest.fixture(scope="module")
def normal_tail() -> ImpostorTail:
    return ImpostorTail(np.random.default_rng(7).normal(0.0, 0.1, 200_000))


def test_the_suggested_threshold_meets_the_target_at_the_gallery_size(
    normal_tail: ImpostorTail,
) -> None:
    s = suggest_threshold(normal_tail, 1000, 0.01)
    # p* = 1e-5 per comparison: 4.26 standard deviations.
    assert s.threshold == pytest.approx(0.43, abs=0.011)
    assert s.expected_fpir <= 0.01
    assert normal_tail.expected_fpir(s.threshold - 0.01, 1000) > 0.01  # the lowest such
    # 200k comparisons cannot establish ~1e-5 (it takes ~382k with none crossing).
    assert not s.established and s.comparisons_needed == pytest.approx(382_221, rel=1e-3)
    # A bigger gallery needs a higher threshold; a looser target (review) a lower one.
    assert suggest_threshold(normal_tail, 10**6, 0.01).threshold > s.threshold
    assert suggest_threshold(normal_tail, 1000, 0.1).threshold < s.threshold


def test_a_target_the_data_supports_is_established(normal_tail: ImpostorTail) -> None:
    s = suggest_threshold(normal_tail, 10, 0.1)  # p* ~ 1e-2: 2.3 sd, thousands crossing
    assert s.established and s.comparisons_needed is None
    assert s.threshold == pytest.approx(0.23, abs=0.011)


def test_no_impostors_no_suggestion() -> None:
    assert suggest_threshold(ImpostorTail(np.array([])), 1000, 0.01).threshold is None


def face(decision: str, size: float, identity: str | None = None, sim: float | None = None):
    candidates = [{"identity": identity or "bob", "similarity": sim}] if sim is not None else []
    return {
        "decision": decision,
        "quality": {"size": size},
        "identity": identity if decision in ("match", "review") else None,
        "similarity": sim,
        "candidates": candidates,
    }


def test_a_query_stands_for_its_largest_searched_face() -> None:
    event = {
        "faces": [
            face("unknown", 50, sim=0.1),
            face("rejected", 400),  # larger but failed a gate: never searched
            face("match", 120, "ann", 0.7),
        ]
    }
    assert query_face(event)["quality"]["size"] == 120
    assert genuine_result("p.jpg", "ann", True, "match", event).outcome == "match"
    assert genuine_result("p.jpg", "cid", True, "match", event).outcome == "wrong_identity"
    assert query_face({"faces": [face("rejected", 400)]}) is None


def test_failures_to_enrol_and_acquire_are_told_apart() -> None:
    only_rejected = {"faces": [face("rejected", 20)]}
    dlq = {"reason": "not_an_image", "message": "..."}
    assert genuine_result("p", "ann", False, "match", only_rejected).outcome == "failure_to_enrol"
    fta = genuine_result("p", "ann", True, "match", only_rejected)
    assert fta.outcome == "failure_to_acquire" and "quality gates" in fta.reason
    assert genuine_result("p", "ann", True, "dlq", dlq).reason == "not_an_image"
    assert genuine_result("p", "ann", True, "match", {"faces": []}).reason == "no face"
    review = genuine_result("p", "ann", True, "match", {"faces": [face("review", 90, "ann", 0.33)]})
    assert review.outcome == "review" and review.hit(0.3) and not review.hit(0.4)


def test_every_searched_impostor_face_is_a_query() -> None:
    event = {
        "faces": [face("unknown", 50, sim=0.1), face("rejected", 10), face("match", 60, "ann", 0.5)]
    }
    found = impostor_results("t1.jpg", "match", event)
    assert [(f.face, f.decision, f.similarity) for f in found] == [
        (0, "unknown", 0.1),
        (2, "match", 0.5),
    ]
    assert impostor_results("t1.jpg", "dlq", {"reason": "x"}) == []


def small_result() -> EvalResult:
    rng = np.random.default_rng(1)
    return EvalResult(
        model_id="m",
        threshold=0.4,
        review_threshold=0.3,
        identities=3,
        enrolled=2,
        failures_to_enrol=[{"identity": "cid", "reason": "no_face", "message": "found no face"}],
        genuine=[
            genuine("match", similarity=0.7),
            genuine("review", similarity=0.32),
            GenuineResult("c.jpg", "cid", "failure_to_enrol", reason="not enrolled"),
        ],
        impostors=[ImpostorResult("i.jpg", i, "unknown", "ann", 0.1) for i in range(9)],
        impostor_photos=1,
        impostor_photos_unusable=0,
        impostor_faces_rejected=1,
        tail=ImpostorTail(rng.normal(0.0, 0.08, 18)),
        gallery_size=1000,
        gallery_size_source="default",
        target_fpir=0.01,
    )


def test_the_summary_is_one_json_object_with_misses_and_projections() -> None:
    summary = json.loads(json.dumps(small_result().summary()))
    assert summary["fnir"] == pytest.approx(
        {"value": 2 / 3, "k": 2, "n": 3, "low": wilson(2, 3)[0], "high": wilson(2, 3)[1]}
    )
    assert summary["fnir_review"]["k"] == 1
    assert summary["fpir"]["k"] == 0 and summary["fpir"]["high"] > 0.29  # nine impostors
    assert summary["genuine"]["failure_to_enrol"] == 1
    assert {p["gallery_size"] for p in summary["projections"]} == {100, 10_000, 1_000_000}
    assert {p["threshold"] for p in summary["projections"]} == {0.4, 0.3}
    assert summary["suggested"]["review"]["target_fpir"] == pytest.approx(0.1)
    row = next(r for r in summary["table"] if r["threshold"] == 0.4)
    assert row["expected_fpir_at_gallery_size"]["gallery_size"] == 1000
    assert row["expected_fpir_evaluated"]["gallery_size"] == 2
    assert all(math.isfinite(r["p"]) for r in summary["table"])


def test_det_and_histogram_pngs(tmp_path: Path) -> None:
    result = small_result()
    assert Image.open(det_png(result, tmp_path / "det.png")).size == (640, 480)
    assert Image.open(histogram_png(result, tmp_path / "h.png")).size == (640, 320)
