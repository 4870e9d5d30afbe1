"""What the stream side needs from the compute side: one small, typed interface.

``streams`` depends on this Protocol only; ``actors`` implements it (on Ray, or in one
process for tools that need no cluster). Every method may raise; ``core.errors`` says
which failures are worth a retry.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from core.faces import Candidate, ImageFaces
from core.imaging import ImageRejected


class Compute(Protocol):
    model_id: str
    embedding_dim: int
    providers: list[str]  # execution providers the model actually runs on

    async def analyze(self, blobs: list[bytes]) -> list[ImageFaces | ImageRejected]:
        """Detect and embed every face of each image (a bad image yields its rejection)."""

    async def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """The top-k enrolled identities per embedding, best first."""

    async def add(
        self,
        identity: str,
        name: str | None,
        embeddings: np.ndarray,
        photos: list[dict[str, str]],
        basis: str | None,
    ) -> list[str]:
        """Enrol one photo per row of ``embeddings``."""

    async def show(self, identity: str) -> list[dict[str, Any]]:
        """Everything the gallery stores about ``identity``."""

    async def delete(self, identity: str) -> int:
        """Erase ``identity``; how many points were removed."""

    async def size(self) -> int:
        """Enrolled photos (points) in the gallery."""

    async def record_sightings(self, embeddings: np.ndarray, metas: list[dict[str, Any]]) -> int:
        """Keep unknown faces (opt-in store with expiry)."""

    async def purge_sightings(self) -> int:
        """Delete expired sightings."""
