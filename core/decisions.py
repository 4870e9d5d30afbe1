"""How each face gets its decision: quality gates first, then the gallery's best candidate
against the threshold. Shared by the worker and by offline identification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.faces import Candidate, DetectedFace, ImageFaces
from core.quality import assess
from core.settings import MatchingSettings, QualityGates


@dataclass(frozen=True)
class Decision:
    """The settings every decision depends on, stamped into each event.

    Per searched face: ``match`` at or above ``threshold``; ``review`` at or above
    ``review_threshold`` (a candidate a person must confirm before anyone acts on it);
    ``unknown`` below. A face that failed a quality gate is ``rejected`` and not searched.
    """

    model_id: str
    threshold: float
    review_threshold: float | None = None  # None: no review band

    @classmethod
    def configured(cls, model_id: str, matching: MatchingSettings) -> Decision:
        return cls(model_id, matching.threshold, matching.review_threshold)

    def of(self, similarity: float | None) -> str:
        if similarity is None:
            return "unknown"
        if similarity >= self.threshold:
            return "match"
        if self.review_threshold is not None and similarity >= self.review_threshold:
            return "review"
        return "unknown"


@dataclass
class SearchPlan:
    """Which faces of a batch pass the gates; only those are searched, in one call."""

    reasons: list[list[list[str]]]  # per image, per face; empty: accepted
    embeddings: np.ndarray  # the accepted faces' embeddings, stacked in order

    @classmethod
    def of(cls, analyses: list[ImageFaces], gates: QualityGates, dim: int) -> SearchPlan:
        reasons = [
            [assess(f.quality, f.det_score, gates) if f.quality else [] for f in a.faces]
            for a in analyses
        ]
        accepted = [
            a.embeddings[[i for i, r in enumerate(rs) if not r]]
            for a, rs in zip(analyses, reasons, strict=True)
        ]
        stacked = np.concatenate(accepted) if accepted else np.zeros((0, dim), np.float32)
        return cls(reasons, stacked.reshape(-1, dim))

    def candidates(self, found: list[list[Candidate]]) -> list[list[list[Candidate]]]:
        """Search results (one list per accepted face) spread back per image and face."""
        results = iter(found)
        return [[[] if r else next(results) for r in image] for image in self.reasons]


# An enrolment photo may show other people far behind the subject: a face is the photo's
# subject when every other face that could be searched is at most 1/DOMINANT_FACE_RATIO its
# size (shorter box side). Two comparable faces make the photo ambiguous.
DOMINANT_FACE_RATIO = 2.0


class AmbiguousPhoto(ValueError):
    """No face, or several comparable faces: the photo cannot say who is enrolled."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def enrolment_face(analysis: ImageFaces, search_gates: QualityGates) -> int:
    """The index of the photo's subject: its largest face, when every other face that passes
    the search gates is much smaller (``DOMINANT_FACE_RATIO``). Raises ``AmbiguousPhoto``
    (``no_face`` or ``multiple_faces``, naming the comparable boxes)."""
    faces = analysis.faces
    if not faces:
        raise AmbiguousPhoto("no_face", "found no face")
    by_size = sorted(range(len(faces)), key=lambda i: _size(faces[i]), reverse=True)
    subject = by_size[0]
    rivals = [
        i
        for i in by_size[1:]
        if _size(faces[i]) * DOMINANT_FACE_RATIO > _size(faces[subject])
        and not (faces[i].quality and assess(faces[i].quality, faces[i].det_score, search_gates))
    ]
    if rivals:
        boxes = "; ".join(
            "[" + ", ".join(f"{v:.0f}" for v in faces[i].bbox) + "]" for i in [subject, *rivals]
        )
        raise AmbiguousPhoto(
            "multiple_faces",
            f"{1 + len(rivals)} comparable faces (boxes {boxes}): need one clear subject",
        )
    return subject


def _size(face: DetectedFace) -> float:
    x1, y1, x2, y2 = face.bbox
    return min(x2 - x1, y2 - y1)


def face_record(
    face: DetectedFace, candidates: list[Candidate], decision: Decision, reasons: list[str] = ()
) -> dict[str, Any]:
    quality = face.quality.as_dict() if face.quality else None
    record = {
        "bbox": face.bbox,
        "landmarks": face.landmarks,
        "det_score": face.det_score,
        "quality": quality,
    }
    if reasons:
        return {
            **record,
            "decision": "rejected",
            "reasons": list(reasons),
            "identity": None,
            "similarity": None,
            "candidates": [],
        }
    best = candidates[0] if candidates else None
    verdict = decision.of(best.similarity if best else None)
    return {
        **record,
        "decision": verdict,
        "reasons": [],
        # A review names its candidate too: the person confirming needs to know whom.
        "identity": best.identity if verdict in ("match", "review") else None,
        "similarity": best.similarity if best else None,
        "candidates": [{"identity": c.identity, "similarity": c.similarity} for c in candidates],
    }
