"""``facestream eval``: identification accuracy on a labelled folder, to choose a threshold.

Open-set identification, as in NIST FRVT 1:N: each identity (a subfolder) is enrolled from
its first N photos (sorted by name); its other photos are *genuine* queries, and every face in
the impostor folder is a query of someone who is not enrolled.

- rank-1: share of genuine queries whose best candidate is the right identity;
- TPIR(t): share of genuine queries whose best candidate is right *and* reaches t;
- FPIR(t): share of impostor faces whose best candidate reaches t (a false match).

Each query uses the largest face of its photo that passes the search quality gates; the
enrolment photos must pass the enrolment gates, as in the pipeline.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from actors.gallery.server import ServerGallery
from actors.models import FaceModel, ImageFaces, load_face_model
from core.quality import assess
from core.settings import QualityGates, Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
THRESHOLDS = [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class EvalResult:
    threshold: float
    rank1: float
    tpir: float
    fpir: float
    genuine_queries: int
    impostor_faces: int
    enrolled: int
    target_fpir: float
    suggested_threshold: float | None
    table: list[dict[str, float]] = field(default_factory=list)
    genuine_scores: list[float] = field(default_factory=list)
    impostor_scores: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        for key in ("genuine_scores", "impostor_scores"):
            out.pop(key)
        return out


class Evaluator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: FaceModel = load_face_model(settings)
        self.gallery = ServerGallery(  # exact search: the evaluation measures the model
            ":memory:", "eval", self.model.model_id, self.model.embedding_dim
        )
        self.skipped: list[str] = []

    def _best_face(self, path: Path, gates: QualityGates) -> np.ndarray | None:
        """The embedding of the largest face passing ``gates``, or None (recorded as skipped)."""
        (result,) = self.model.analyze_bytes([path.read_bytes()], self.settings.limits)
        if not isinstance(result, ImageFaces):
            self.skipped.append(f"{path}: {result}")
            return None
        usable = [i for i, f in enumerate(result.faces) if not _reasons(f, gates)]
        if not usable:
            self.skipped.append(f"{path}: no face passes the quality gates")
            return None
        largest = max(usable, key=lambda i: result.faces[i].quality.size)
        return result.embeddings[largest]

    def _faces(self, path: Path) -> np.ndarray:
        (result,) = self.model.analyze_bytes([path.read_bytes()], self.settings.limits)
        if not isinstance(result, ImageFaces):
            self.skipped.append(f"{path}: {result}")
            return np.zeros((0, self.model.embedding_dim), np.float32)
        gates = self.settings.quality.search
        keep = [i for i, f in enumerate(result.faces) if not _reasons(f, gates)]
        return result.embeddings[keep]

    def run(
        self, folder: Path, impostors: Path | None, enroll_n: int, target_fpir: float
    ) -> EvalResult:
        identities = sorted(p for p in folder.iterdir() if p.is_dir())
        queries: list[tuple[str, np.ndarray]] = []
        enrolled = 0
        for ident_dir in identities:
            photos = photos_in(ident_dir)
            gallery_photos, query_photos = photos[:enroll_n], photos[enroll_n:]
            vectors = [self._best_face(p, self.settings.quality.enrol) for p in gallery_photos]
            kept = [(p, v) for p, v in zip(gallery_photos, vectors, strict=True) if v is not None]
            if not kept:
                continue
            self.gallery.add(
                ident_dir.name,
                None,
                np.stack([v for _, v in kept]),
                [{"name": p.name, "sha256": str(p)} for p, _ in kept],
            )
            enrolled += 1
            for p in query_photos:
                vector = self._best_face(p, self.settings.quality.search)
                if vector is not None:
                    queries.append((ident_dir.name, vector))
        impostor_vectors = (
            [v for p in photos_in(impostors) for v in self._faces(p)] if impostors else []
        )
        return self._score(queries, impostor_vectors, enrolled, target_fpir)

    def _score(
        self,
        queries: list[tuple[str, np.ndarray]],
        impostors: list[np.ndarray],
        enrolled: int,
        target_fpir: float,
    ) -> EvalResult:
        size = max(self.gallery.size(), 1)
        correct, genuine = [], []
        for identity, vector in queries:
            (cands,) = self.gallery.search(vector[None, :], size)
            correct.append(bool(cands) and cands[0].identity == identity)
            genuine.append(next((c.similarity for c in cands if c.identity == identity), -1.0))
        top1 = (
            [c[0].similarity for c in self.gallery.search(np.array(impostors), 1)]
            if impostors
            else []
        )
        g, c, imp = np.array(genuine), np.array(correct), np.array(top1)

        def tpir(t: float) -> float:
            return float(np.mean(c & (g >= t))) if len(g) else 0.0

        def fpir(t: float) -> float:
            return float(np.mean(imp >= t)) if len(imp) else 0.0

        default = self.settings.matching.threshold
        grid = np.round(np.arange(-0.2, 1.0001, 0.01), 2)
        suggested = (
            next((float(t) for t in grid if fpir(t) <= target_fpir), None) if len(imp) else None
        )
        table = [
            {"threshold": t, "tpir": tpir(t), "fpir": fpir(t)}
            for t in sorted({*THRESHOLDS, default})
        ]
        return EvalResult(
            threshold=default,
            rank1=float(np.mean(c)) if len(c) else 0.0,
            tpir=tpir(default),
            fpir=fpir(default),
            genuine_queries=len(g),
            impostor_faces=len(imp),
            enrolled=enrolled,
            target_fpir=target_fpir,
            suggested_threshold=suggested,
            table=table,
            genuine_scores=g.round(4).tolist(),
            impostor_scores=imp.round(4).tolist(),
            skipped=self.skipped,
        )


def _reasons(face: object, gates: QualityGates) -> list[str]:
    return assess(face.quality, face.det_score, gates) if face.quality else []


def evaluate(
    settings: Settings,
    folder: Path,
    impostors: Path | None = None,
    enroll_n: int = 1,
    target_fpir: float = 0.01,
) -> EvalResult:
    return Evaluator(settings).run(folder, impostors, enroll_n, target_fpir)


def histogram_png(result: EvalResult, path: Path, width: int = 640, height: int = 320) -> Path:
    """Genuine (green) and impostor (red) similarity histograms, the threshold in black."""
    lo, hi, bins = -0.2, 1.0, 48
    edges = np.linspace(lo, hi, bins + 1)
    gen, _ = np.histogram(result.genuine_scores, edges)
    imp, _ = np.histogram(result.impostor_scores, edges)
    gen = gen / max(gen.sum(), 1)
    imp = imp / max(imp.sum(), 1)
    peak = max(gen.max(initial=0), imp.max(initial=0)) or 1.0
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    pad, base = 30, height - 30
    scale_x = (width - 2 * pad) / bins

    def x(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (width - 2 * pad)

    for i in range(bins):
        for share, colour, shift in ((imp[i], (220, 60, 60), 0), (gen[i], (40, 160, 70), 0.5)):
            left = pad + i * scale_x + shift * scale_x
            top = base - share / peak * (base - pad)
            draw.rectangle([left, top, left + scale_x * 0.5, base], fill=colour)
    draw.line([x(result.threshold), pad, x(result.threshold), base], fill="black", width=2)
    draw.line([pad, base, width - pad, base], fill="black")
    for v in (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        draw.text((x(v) - 8, base + 6), f"{v:.1f}", fill="black")
    draw.text(
        (pad, 8),
        f"similarity: genuine (green, n={result.genuine_queries}) vs impostor "
        f"(red, n={result.impostor_faces}); threshold {result.threshold}",
        fill="black",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def default_histogram_path() -> Path:
    return Path(tempfile.gettempdir()) / "facestream-eval-histogram.png"
