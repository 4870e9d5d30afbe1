"""How each face gets its decision: quality gates first, then the gallery's best candidate
against the threshold. Shared by the worker and by offline identification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.faces import Candidate, DetectedFace, ImageFaces
from core.quality import assess
from core.settings import QualityGates


@dataclass(frozen=True)
class Decision:
    """The settings every decision depends on, stamped into each event."""

    model_id: str
    threshold: float


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


def face_record(
    face: DetectedFace, candidates: list[Candidate], threshold: float, reasons: list[str] = ()
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
    matched = best is not None and best.similarity >= threshold
    return {
        **record,
        "decision": "match" if matched else "unknown",
        "reasons": [],
        "identity": best.identity if matched else None,
        "similarity": best.similarity if best else None,
        "candidates": [{"identity": c.identity, "similarity": c.similarity} for c in candidates],
    }
