"""``facestream eval``: open-set identification accuracy on a labelled folder, misses included.

Open-set identification, as in NIST FRTE 1:N. Each identity (a subfolder) is enrolled from
its first N photos (sorted by name) through the product's own enrolment path
(``EnrollmentProcessor`` over ``LocalCompute``, into a real embedded gallery in a temporary
folder); its other photos are *genuine* queries. Every face in the impostor folder that
passes the search quality gates is an *impostor* query (someone who is not enrolled). Each
query photo goes through the product's identification path (``ImageProcessor``: the same
quality gates, ``SearchPlan``, search and decisions as a worker), one photo at a time.

A genuine query stands for the largest face of its photo that passed the search gates
(``query_face``). Its outcome is one of:

- ``match`` / ``review``: the decision at the configured thresholds, naming the right person;
- ``wrong_identity``: a match or review naming someone else;
- ``unknown``: below the review threshold;
- ``failure_to_enrol``: the person could not be enrolled (the enrolment was refused);
- ``failure_to_acquire``: no usable face (the image was rejected, or no face passed the gates).

Failures to enrol and to acquire are misses, as in FRTE: they stay in the denominators.

- FNIR(t) (false-negative identification rate): share of *all* genuine queries whose rank-1
  candidate is not the right person at a similarity >= t;
- FPIR(t) (false-positive identification rate): share of impostor faces whose rank-1
  candidate reaches t, at the evaluated gallery's size.

Every rate carries a 95% Wilson score interval (``wilson``): with nine impostor faces and no
false match, FPIR is "0, somewhere below 0.30", not "0".

**FPIR and the gallery's size.** A search compares a face with every enrolled identity, so a
bigger gallery gives an impostor more chances to cross the threshold. Model: each impostor
comparison (an impostor face against one enrolled identity, the identity's best similarity
over its photos) crosses ``t`` independently with probability ``p(t)``, so at a gallery of N
identities::

    FPIR_N(t) = 1 - (1 - p(t)) ** N        (about N * p(t) while that is small)

``p(t)`` is estimated from every impostor face against every enrolled identity, not only the
rank-1 candidate (``ImpostorTail``): the expected value is the larger of the empirical tail
(the share of comparisons >= t) and the tail of a normal distribution fitted to the
comparisons, which extrapolates past the highest comparison seen. A normal tail is
optimistic where real impostor tails are heavier (relatives, lookalikes), so each projection
also carries the bound that the measured comparisons alone can support (the Wilson upper
bound of the empirical tail, put through the same formula). The independence assumption
ignores that comparisons of one face are correlated; the bound is only as good as the
impostors are representative.

**Suggested thresholds** for a target FPIR F at gallery size N (``suggest_threshold``): the
lowest threshold (0.01 steps) whose expected FPIR_N is at most F for ``match``, and at most
``REVIEW_TARGET_FACTOR`` * F for ``review`` (a review is confirmed by a person before anyone
acts on it, so it may be wrong more often). Each says whether the measured comparisons
establish it (their upper bound meets the target too) and, if not, how many impostor
comparisons would.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from core.events import ImageMeta
from core.formats import named_as_image
from core.settings import Settings

if TYPE_CHECKING:
    from actors.models import FaceModel

THRESHOLDS = [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
Z95 = 1.959963984540054  # two-sided 95% normal quantile
REVIEW_TARGET_FACTOR = 10.0  # the review threshold's target FPIR: this times the match target
DEFAULT_GALLERY_SIZE = 1000  # identities, when the deployment's gallery size is not known
PROJECTED_SIZES = (100, 10_000, 1_000_000)
EVAL_BASIS = "facestream eval: accuracy measurement on the user's labelled photos"
GENUINE_OUTCOMES = (
    "match",
    "review",
    "wrong_identity",
    "unknown",
    "failure_to_enrol",
    "failure_to_acquire",
)


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if named_as_image(p))


# -- rates and intervals ---------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def as_dict(self) -> dict[str, float | int]:
        low, high = self.interval
        return {"value": self.value, "low": low, "high": high, "k": self.k, "n": self.n}

    def text(self, digits: int = 3) -> str:
        low, high = self.interval
        return f"{self.value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


@dataclass(frozen=True)
class GenuineResult:
    photo: str
    identity: str  # who is really in the photo
    outcome: str  # one of GENUINE_OUTCOMES
    candidate: str | None = None  # the rank-1 candidate
    similarity: float | None = None  # its similarity
    reason: str | None = None  # why it failed to enrol or acquire

    def hit(self, threshold: float) -> bool:
        """Identified at rank 1 at ``threshold``."""
        return (
            self.candidate == self.identity
            and self.similarity is not None
            and self.similarity >= threshold
        )


@dataclass(frozen=True)
class ImpostorResult:
    photo: str
    face: int  # index of the face in its photo's event
    decision: str
    candidate: str | None
    similarity: float | None  # rank-1 similarity (None: empty gallery)


def fnir(genuine: list[GenuineResult], threshold: float) -> Rate:
    """Misses among *all* genuine queries: failures to enrol and acquire are misses."""
    return Rate(sum(not g.hit(threshold) for g in genuine), len(genuine))


def fpir(impostor_top1: list[float | None], threshold: float) -> Rate:
    """Impostor faces whose rank-1 candidate reaches ``threshold``."""
    crossed = sum(s is not None and s >= threshold for s in impostor_top1)
    return Rate(crossed, len(impostor_top1))


# -- the gallery-size projection -------------------------------------------------------------


def gallery_fpir(p: float, n: int) -> float:
    """1 - (1 - p) ** n, computed without losing small values."""
    if p <= 0 or n <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    return -math.expm1(n * math.log1p(-p))


def per_comparison_target(target: float, n: int) -> float:
    """The ``p`` at which ``gallery_fpir(p, n)`` equals ``target``."""
    return -math.expm1(math.log1p(-target) / max(n, 1))


def comparisons_needed(p: float, z: float = Z95) -> int | None:
    """Impostor comparisons, none crossing, whose Wilson upper bound is at most ``p``
    (None: no number can bound it by 0)."""
    if p <= 0:
        return None
    return math.ceil(z * z * (1 - p) / p)


@dataclass
class ImpostorTail:
    """Impostor-vs-enrolled-identity similarities and the per-comparison tail p(t)."""

    comparisons: np.ndarray  # one similarity per (impostor face, enrolled identity)

    def __post_init__(self) -> None:
        self.comparisons = np.asarray(self.comparisons, dtype=float)
        self.mean = float(self.comparisons.mean()) if len(self.comparisons) else 0.0
        self.sd = float(self.comparisons.std(ddof=1)) if len(self.comparisons) > 1 else 0.0

    @property
    def n(self) -> int:
        return len(self.comparisons)

    def empirical(self, t: float) -> Rate:
        return Rate(int(np.sum(self.comparisons >= t)), self.n)

    def normal(self, t: float) -> float:
        if self.sd <= 0:
            return float(self.mean >= t)
        return 0.5 * math.erfc((t - self.mean) / (self.sd * math.sqrt(2)))

    def p(self, t: float) -> float:
        """Expected per-comparison tail: the empirical one, extended by the normal fit."""
        if not self.n:
            return 0.0
        return max(self.empirical(t).value, self.normal(t))

    def p_upper(self, t: float) -> float:
        """What the measured comparisons alone can bound p(t) by (95% Wilson upper bound)."""
        return self.empirical(t).interval[1]

    def expected_fpir(self, t: float, n: int) -> float:
        return gallery_fpir(self.p(t), n)

    def upper_fpir(self, t: float, n: int) -> float:
        return gallery_fpir(self.p_upper(t), n)


@dataclass(frozen=True)
class Suggestion:
    target_fpir: float
    gallery_size: int
    threshold: float | None  # None: no threshold up to 1.0 meets the target
    expected_fpir: float | None
    established: bool  # the measured comparisons' upper bound meets the target too
    comparisons_needed: int | None  # impostor comparisons that would establish the target


def suggest_threshold(
    tail: ImpostorTail, gallery_size: int, target: float, step: float = 0.01
) -> Suggestion:
    """The lowest threshold (``step`` grid in [-1, 1]) whose expected FPIR at
    ``gallery_size`` is at most ``target``."""
    grid = np.round(np.arange(-1.0, 1.0 + step / 2, step), 6)
    chosen = next(
        (float(t) for t in grid if tail.n and tail.expected_fpir(float(t), gallery_size) <= target),
        None,
    )
    if chosen is None:
        return Suggestion(target, gallery_size, None, None, False, None)
    established = tail.upper_fpir(chosen, gallery_size) <= target
    needed = comparisons_needed(per_comparison_target(target, gallery_size))
    return Suggestion(
        target,
        gallery_size,
        round(chosen, 4),
        tail.expected_fpir(chosen, gallery_size),
        established,
        None if established else needed,
    )


# -- reading outcome events (shared with whoever drives the pipeline itself) -----------------


def query_face(event: dict[str, Any]) -> dict[str, Any] | None:
    """The face a query photo stands for: the largest that passed the search gates."""
    usable = [f for f in event.get("faces", []) if f["decision"] != "rejected"]
    return max(usable, key=lambda f: (f["quality"] or {}).get("size", 0.0), default=None)


def genuine_result(
    photo: str, identity: str, enrolled: bool, kind: str | None, event: dict[str, Any] | None
) -> GenuineResult:
    """One genuine query's outcome from the pipeline's outcome event (``kind`` "match" or
    "dlq"); ``enrolled``: whether the person's enrolment was accepted."""
    if not enrolled:
        return GenuineResult(photo, identity, "failure_to_enrol", reason="not enrolled")
    if kind != "match" or event is None:
        why = (event or {}).get("reason", "no outcome")
        return GenuineResult(photo, identity, "failure_to_acquire", reason=why)
    face = query_face(event)
    if face is None:
        why = "no face" if not event["faces"] else "no face passes the search quality gates"
        return GenuineResult(photo, identity, "failure_to_acquire", reason=why)
    top = face["candidates"][0] if face["candidates"] else None
    candidate = top["identity"] if top else None
    similarity = top["similarity"] if top else None
    decision = face["decision"]
    if decision in ("match", "review"):
        outcome = decision if face["identity"] == identity else "wrong_identity"
    else:
        outcome = "unknown"
    return GenuineResult(photo, identity, outcome, candidate, similarity)


def impostor_results(photo: str, kind: str, event: dict[str, Any]) -> list[ImpostorResult]:
    """Every searched face of an impostor photo (none when the photo was rejected)."""
    if kind != "match":
        return []
    out = []
    for i, face in enumerate(event["faces"]):
        if face["decision"] == "rejected":
            continue
        top = face["candidates"][0] if face["candidates"] else None
        out.append(
            ImpostorResult(
                photo,
                i,
                face["decision"],
                top["identity"] if top else None,
                top["similarity"] if top else None,
            )
        )
    return out


def split(genuine: list[GenuineResult]) -> dict[str, int]:
    return {o: sum(g.outcome == o for g in genuine) for o in GENUINE_OUTCOMES}


def impostor_split(impostors: list[ImpostorResult]) -> dict[str, int]:
    return {d: sum(i.decision == d for i in impostors) for d in ("match", "review", "unknown")}


# -- the result ------------------------------------------------------------------------------


@dataclass
class EvalResult:
    model_id: str
    threshold: float
    review_threshold: float | None
    identities: int  # subfolders
    enrolled: int
    failures_to_enrol: list[dict[str, str]]
    genuine: list[GenuineResult]
    impostors: list[ImpostorResult]
    impostor_photos: int
    impostor_photos_unusable: int
    impostor_faces_rejected: int
    tail: ImpostorTail
    gallery_size: int  # N for the projections
    gallery_size_source: str  # "given", "current gallery" or "default"
    target_fpir: float
    det_path: Path | None = None
    histogram_path: Path | None = None
    thresholds: list[float] = field(default_factory=lambda: list(THRESHOLDS))

    @property
    def impostor_top1(self) -> list[float | None]:
        return [i.similarity for i in self.impostors]

    def table(self) -> list[dict[str, Any]]:
        rows = []
        configured = [t for t in (self.threshold, self.review_threshold) if t is not None]
        grid = sorted({*self.thresholds, *configured})
        for t in grid:
            rows.append(
                {
                    "threshold": t,
                    "fnir": fnir(self.genuine, t).as_dict(),
                    "fpir": fpir(self.impostor_top1, t).as_dict(),
                    "p": self.tail.p(t) if self.tail.n else None,
                    "p_upper": self.tail.p_upper(t) if self.tail.n else None,
                    "expected_fpir_evaluated": self._projected(t, self.enrolled),
                    "expected_fpir_at_gallery_size": self._projected(t, self.gallery_size),
                }
            )
        return rows

    def _projected(self, t: float, n: int) -> dict[str, float] | None:
        if not self.tail.n:
            return None
        return {
            "gallery_size": n,
            "expected": self.tail.expected_fpir(t, n),
            "upper": self.tail.upper_fpir(t, n),
        }

    def projections(self) -> list[dict[str, Any]]:
        """Expected FPIR at the configured thresholds for galleries of PROJECTED_SIZES."""
        thresholds = [("match", self.threshold)]
        if self.review_threshold is not None and self.review_threshold < self.threshold:
            thresholds.append(("review", self.review_threshold))
        return [
            {"decision": name, "threshold": t, **self._projected(t, n)}
            for name, t in thresholds
            for n in PROJECTED_SIZES
            if self.tail.n
        ]

    def suggestions(self) -> dict[str, Suggestion] | None:
        if not self.tail.n:
            return None
        n, f = self.gallery_size, self.target_fpir
        return {
            "match": suggest_threshold(self.tail, n, f),
            "review": suggest_threshold(self.tail, n, min(1.0, REVIEW_TARGET_FACTOR * f)),
        }

    def rank1(self) -> float:
        return sum(g.candidate == g.identity for g in self.genuine) / max(len(self.genuine), 1)

    def genuine_scores(self) -> list[float]:
        """Rank-1 similarities of genuine queries identified as the right person."""
        return [g.similarity for g in self.genuine if g.candidate == g.identity]

    def summary(self) -> dict[str, Any]:
        suggestions = self.suggestions()
        review = self.review_threshold
        return {
            "model": self.model_id,
            "threshold": self.threshold,
            "review_threshold": review,
            "identities": self.identities,
            "enrolled": self.enrolled,
            "failures_to_enrol": self.failures_to_enrol,
            "genuine_queries": len(self.genuine),
            "genuine": split(self.genuine),
            "failures_to_acquire": [
                {"photo": g.photo, "reason": g.reason}
                for g in self.genuine
                if g.outcome == "failure_to_acquire"
            ],
            "impostor_photos": self.impostor_photos,
            "impostor_photos_unusable": self.impostor_photos_unusable,
            "impostor_faces": len(self.impostors),
            "impostor_faces_rejected": self.impostor_faces_rejected,
            "impostor": impostor_split(self.impostors),
            "rank1": self.rank1(),
            "fnir": fnir(self.genuine, self.threshold).as_dict(),
            "fnir_review": fnir(self.genuine, review).as_dict() if review is not None else None,
            "fpir": fpir(self.impostor_top1, self.threshold).as_dict(),
            "fpir_review": fpir(self.impostor_top1, review).as_dict()
            if review is not None
            else None,
            "impostor_comparisons": {
                "n": self.tail.n,
                "mean": self.tail.mean,
                "sd": self.tail.sd,
                "max": float(self.tail.comparisons.max()) if self.tail.n else None,
            },
            "gallery_size": self.gallery_size,
            "gallery_size_source": self.gallery_size_source,
            "table": self.table(),
            "projections": self.projections(),
            "target_fpir": self.target_fpir,
            "review_target_fpir": min(1.0, REVIEW_TARGET_FACTOR * self.target_fpir),
            "suggested": ({k: asdict(v) for k, v in suggestions.items()} if suggestions else None),
            "queries": [asdict(g) for g in self.genuine],
            "impostor_queries": [asdict(i) for i in self.impostors],
            "det": str(self.det_path) if self.det_path else None,
            "histogram": str(self.histogram_path) if self.histogram_path else None,
        }


# -- running it ------------------------------------------------------------------------------


class Evaluator:
    """The product's enrolment and identification paths, in this process, on a fresh
    embedded gallery in a temporary folder (the deployment's gallery is never touched)."""

    def __init__(self, settings: Settings, model: FaceModel | None = None) -> None:
        from actors.models import load_face_model

        self.settings = settings
        self.model = model if model is not None else load_face_model(settings)

    def run(
        self,
        folder: Path,
        impostors: Path | None,
        enroll_n: int = 1,
        target_fpir: float = 0.01,
        gallery_size: int | None = None,
    ) -> EvalResult:
        # First: reaching a running deployment's gallery needs Ray not imported yet (it reads
        # the deployment's RAY_AUTH_* variables on import).
        size = (gallery_size, "given") if gallery_size else _deployment_size(self.settings)
        with tempfile.TemporaryDirectory(prefix="facestream-eval-") as tmp:
            return asyncio.run(self._run(Path(tmp), folder, impostors, enroll_n, target_fpir, size))

    async def _run(
        self,
        tmp: Path,
        folder: Path,
        impostors: Path | None,
        enroll_n: int,
        target_fpir: float,
        gallery_size: tuple[int, str],
    ) -> EvalResult:
        from actors.compute import LocalCompute
        from actors.gallery import open_model_gallery
        from streams.enrollment import EnrollmentRequest, Photo
        from streams.processor import EnrollmentProcessor, ImageProcessor

        settings = self.settings.override(
            gallery__backend="edge", gallery__path=tmp / "gallery", sightings__enabled=False
        )
        model = self.model
        gallery = open_model_gallery(settings, model.model_id, model.embedding_dim)
        try:
            compute = _Recording(LocalCompute(settings, model, gallery))
            enrolment = EnrollmentProcessor(settings, compute)
            search = ImageProcessor(settings, compute)

            people = sorted(p for p in folder.iterdir() if p.is_dir())
            enrolled: dict[str, bool] = {}
            refused: list[dict[str, str]] = []
            queries: list[tuple[str, Path]] = []
            for person in people:  # everyone first, then the searches: one gallery for all
                photos = photos_in(person)
                to_enrol, to_query = photos[:enroll_n], photos[enroll_n:]
                queries += [(person.name, p) for p in to_query]
                request = EnrollmentRequest(
                    "enroll",
                    person.name,
                    None,
                    tuple(Photo(p.name, p.read_bytes()) for p in to_enrol),
                    basis=EVAL_BASIS,
                )
                reply = (await enrolment.process(request.encode(), person.name.encode())).ack
                enrolled[person.name] = bool(reply["ok"])
                if not reply["ok"]:
                    error = reply["error"]
                    refused.append(
                        {
                            "identity": person.name,
                            "reason": error["reason"],
                            "message": error["message"],
                        }
                    )

            genuine = []
            for identity, path in queries:
                if not enrolled[identity]:
                    genuine.append(genuine_result(str(path), identity, False, None, None))
                    continue
                outcome = await self._identify(search, path)
                genuine.append(
                    genuine_result(str(path), identity, True, outcome.kind, outcome.event)
                )

            found: list[ImpostorResult] = []
            comparisons: list[float] = []
            impostor_paths = photos_in(impostors) if impostors else []
            unusable = rejected = 0
            points = gallery.size()
            for path in impostor_paths:
                compute.searched.clear()
                outcome = await self._identify(search, path)
                faces = impostor_results(str(path), outcome.kind, outcome.event)
                if outcome.kind != "match" or not faces:
                    unusable += 1
                if outcome.kind == "match":
                    rejected += sum(f["decision"] == "rejected" for f in outcome.event["faces"])
                found += faces
                if faces and points:  # every impostor face against every enrolled identity
                    vectors = np.concatenate(compute.searched)
                    for cands in gallery.search(vectors, points):
                        comparisons += [c.similarity for c in cands]
        finally:
            gallery.close()

        size, source = gallery_size
        return EvalResult(
            model_id=model.model_id,
            threshold=settings.matching.threshold,
            review_threshold=settings.matching.review_threshold,
            identities=len(people),
            enrolled=sum(enrolled.values()),
            failures_to_enrol=refused,
            genuine=genuine,
            impostors=found,
            impostor_photos=len(impostor_paths),
            impostor_photos_unusable=unusable,
            impostor_faces_rejected=rejected,
            tail=ImpostorTail(np.array(comparisons)),
            gallery_size=size,
            gallery_size_source=source,
            target_fpir=target_fpir,
        )

    async def _identify(self, search: Any, path: Path) -> Any:
        from streams.records import ImageMessage

        message = ImageMessage(ImageMeta(image_id=path.stem, source="eval"), path.read_bytes())
        (outcome,) = await search.process([message])
        return outcome


class _Recording:
    """A ``Compute`` that keeps the embeddings each search was given: the searched faces of
    a photo, in the order of its event's searched faces. Everything else is forwarded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.searched: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def search(self, embeddings: np.ndarray, top_k: int) -> list:
        found = await self.inner.search(embeddings, top_k)
        if len(embeddings):
            self.searched.append(np.asarray(embeddings))
        return found


def _deployment_size(settings: Settings) -> tuple[int, str]:
    """The number of identities in the deployment's current gallery, if it can be read."""
    from actors.gallery import current_model

    try:
        if current_model(settings) is not None:
            from facestream.gallery_reads import ask_gallery

            return len(ask_gallery(settings, "identities")), "current gallery"
    except Exception:  # unreachable or locked: fall back to the default
        pass
    return DEFAULT_GALLERY_SIZE, "default"


def evaluate(
    settings: Settings,
    folder: Path,
    impostors: Path | None = None,
    enroll_n: int = 1,
    target_fpir: float = 0.01,
    gallery_size: int | None = None,
    model: FaceModel | None = None,
) -> EvalResult:
    return Evaluator(settings, model).run(folder, impostors, enroll_n, target_fpir, gallery_size)


# -- pictures --------------------------------------------------------------------------------


def histogram_png(result: EvalResult, path: Path, width: int = 640, height: int = 320) -> Path:
    """Genuine (green: rank-1 similarity of correctly ranked queries) and impostor (red:
    rank-1 similarity) histograms, the match threshold in black, the review one in grey."""
    lo, hi, bins = -0.2, 1.0, 48
    edges = np.linspace(lo, hi, bins + 1)
    gen, _ = np.histogram(result.genuine_scores(), edges)
    imp, _ = np.histogram([s for s in result.impostor_top1 if s is not None], edges)
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
    if result.review_threshold is not None:
        xr = x(result.review_threshold)
        draw.line([xr, pad, xr, base], fill=(150, 150, 150), width=2)
    draw.line([x(result.threshold), pad, x(result.threshold), base], fill="black", width=2)
    draw.line([pad, base, width - pad, base], fill="black")
    for v in (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        draw.text((x(v) - 8, base + 6), f"{v:.1f}", fill="black")
    draw.text(
        (pad, 8),
        f"rank-1 similarity: genuine (green, n={len(result.genuine_scores())}) vs impostor "
        f"(red, n={len(result.impostors)}); threshold {result.threshold}",
        fill="black",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def det_points(result: EvalResult, step: float = 0.005) -> dict[str, list[tuple[float, float]]]:
    """(FPIR, FNIR) over thresholds from -1 to 1: measured at the evaluated gallery, and
    projected (expected FPIR) at ``result.gallery_size``."""
    grid = np.round(np.arange(-1.0, 1.0 + step / 2, step), 6)
    measured, projected = [], []
    for t in grid:
        miss = fnir(result.genuine, float(t)).value
        measured.append((fpir(result.impostor_top1, float(t)).value, miss))
        if result.tail.n:
            projected.append((result.tail.expected_fpir(float(t), result.gallery_size), miss))
    return {"measured": measured, "projected": projected}


def det_png(result: EvalResult, path: Path, width: int = 640, height: int = 480) -> Path:
    """The DET curve: FNIR (misses included) against FPIR, both on log axes. Measured at
    the evaluated gallery in blue, projected to ``gallery_size`` identities in orange; the
    match (black) and review (grey) thresholds marked. Zero rates sit on the axes' edge."""
    curves = det_points(result)
    n_imp, n_gen = max(len(result.impostors), 1), max(len(result.genuine), 1)
    x_lo = min(1e-6, 10 ** math.floor(math.log10(0.5 / n_imp)))
    y_lo = 10 ** math.floor(math.log10(0.5 / n_gen))
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 40, height - 50

    def px(v: float) -> float:
        v = min(max(v, x_lo), 1.0)
        return left + (math.log10(v) - math.log10(x_lo)) / -math.log10(x_lo) * (right - left)

    def py(v: float) -> float:
        v = min(max(v, y_lo), 1.0)
        return bottom - (math.log10(v) - math.log10(y_lo)) / -math.log10(y_lo) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for e in range(int(math.log10(x_lo)), 1):
        draw.line([px(10**e), bottom, px(10**e), bottom + 4], fill="black")
        draw.line([px(10**e), top, px(10**e), bottom], fill=(230, 230, 230))
        draw.text((px(10**e) - 12, bottom + 8), f"1e{e}" if e else "1", fill="black")
    for e in range(int(math.log10(y_lo)), 1):
        draw.line([left - 4, py(10**e), left, py(10**e)], fill="black")
        draw.line([left, py(10**e), right, py(10**e)], fill=(230, 230, 230))
        draw.text((left - 40, py(10**e) - 6), f"1e{e}" if e else "1", fill="black")
    for name, colour in (("measured", (40, 90, 200)), ("projected", (230, 130, 20))):
        points = [(px(x), py(y)) for x, y in curves[name]]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    marks = [(result.threshold, "black")]
    if result.review_threshold is not None:
        marks.append((result.review_threshold, (120, 120, 120)))
    for i, (t, colour) in enumerate(marks):
        miss = fnir(result.genuine, t).value
        spots = [fpir(result.impostor_top1, t).value]
        if result.tail.n:
            spots.append(result.tail.expected_fpir(t, result.gallery_size))
        for x in spots:
            cx, cy = px(x), py(miss)
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
            draw.text((cx + 6, cy - 14 if i == 0 else cy + 4), f"{t}", fill=colour)
    draw.text(
        (left, 8),
        f"DET: FNIR (misses incl., n={len(result.genuine)}) vs FPIR; blue: measured "
        f"({len(result.impostors)} impostor faces, {result.enrolled} enrolled), orange: "
        f"expected at {result.gallery_size}",
        fill="black",
    )
    draw.text((left, height - 22), "FPIR (log)", fill="black")
    draw.text((4, top - 16), "FNIR (log)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def default_histogram_path() -> Path:
    return Path(tempfile.gettempdir()) / "facestream-eval-histogram.png"


def default_det_path() -> Path:
    return Path(tempfile.gettempdir()) / "facestream-eval-det.png"
