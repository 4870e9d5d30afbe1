"""insightface models on onnxruntime (CUDA when present, else CPU)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime
from insightface.model_zoo import model_zoo
from insightface.utils import face_align

from actors.models.base import DetectedFace, FaceModel
from actors.models.packs import ModelPack, ModelPackError
from core.settings import ModelSettings

log = logging.getLogger(__name__)


def choose_providers(requested: list[str] | str) -> list[str]:
    available = onnxruntime.get_available_providers()
    if requested == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise ModelPackError(f"execution providers not available: {missing}; have {available}")
    return list(requested)


class InsightFaceOnnx(FaceModel):
    def __init__(self, pack: ModelPack, settings: ModelSettings) -> None:
        onnxruntime.set_default_logger_severity(3)  # silences a harmless shape warning
        self.settings = settings
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        requested = choose_providers(settings.providers)
        detector = recognizer = None
        for name in sorted(pack.checksums):
            model = model_zoo.get_model(
                str(pack.folder / name), providers=requested, sess_options=options
            )
            task = getattr(model, "taskname", None)
            if task == "detection" and detector is None:
                detector = model
            elif task == "recognition" and recognizer is None:
                recognizer, rec_file = model, name
        if detector is None or recognizer is None:
            raise ModelPackError(f"{pack.folder} needs one detection and one recognition model")
        self.det_size = size = settings.det_size
        detector.prepare(0, input_size=(size, size), det_thresh=settings.det_threshold)
        self.detector, self.recognizer = detector, recognizer
        self.embedding_dim = int(recognizer.output_shape[-1])
        self.model_id = (
            f"{pack.name}/{rec_file.removesuffix('.onnx')}@{pack.checksums[rec_file][:12]}"
        )
        self.providers = list(recognizer.session.get_providers())
        if requested[0] != self.providers[0]:
            log.warning("asked for %s, running on %s", requested[0], self.providers[0])
        log.info("model %s on %s", self.model_id, self.providers[0])

    def detect(self, image_bgr: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
        bboxes, kpss = self.detector.detect(image_bgr, max_num=self.settings.max_faces_per_image)
        faces = [
            DetectedFace(
                bbox=[round(float(v), 2) for v in box[:4]],
                landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in kps],
                det_score=round(float(box[4]), 4),
            )
            for box, kps in zip(bboxes, kpss, strict=True)
        ]
        return faces, kpss

    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # scikit-image deprecation inside insightface
            warnings.simplefilter("ignore", FutureWarning)
            return face_align.norm_crop(
                image_bgr, landmark=landmarks, image_size=self.recognizer.input_size[0]
            )

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        feats = np.asarray(self.recognizer.get_feat(crops), dtype=np.float32)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)
