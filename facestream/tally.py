"""Counting outcomes: what the demo summary and ``watch --dedupe`` report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    images: int = 0
    faces: int = 0
    matches: int = 0
    reviews: int = 0
    unknowns: int = 0
    rejected: int = 0
    errors: int = 0
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)

    def add(self, kind: str, event: dict[str, Any]) -> bool:
        """Count one outcome; False (and counted as duplicate) if its image id was seen."""
        if event["image_id"] in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(event["image_id"])
        self.images += 1
        if kind == "dlq":
            self.errors += 1
            return True
        for face in event["faces"]:
            self.faces += 1
            if face["decision"] == "match":
                self.matches += 1
            elif face["decision"] == "review":
                self.reviews += 1
            elif face["decision"] == "rejected":
                self.rejected += 1
            else:
                self.unknowns += 1
        return True

    def summary(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in (
                "images",
                "faces",
                "matches",
                "reviews",
                "unknowns",
                "rejected",
                "errors",
                "duplicates",
            )
        }
