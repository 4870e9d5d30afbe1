"""insightface models on onnxruntime (CUDA when present, else CPU)."""

from __future__ import annotations

import logging
import warnings

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo import model_zoo
from insightface.utils import face_align

from actors.models.base import DetectedFace, FaceModel
from actors.models.packs import ModelPack, ModelPackError
from core.settings import ModelSettings

log = logging.getLogger(__name__)

# Faces rolled by more than this are re-detected upright before their pose is measured.
REDETECT_ROLL_DEG = 20.0
REDETECT_SIZE = 320  # the detector's input for that small upright crop


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

    def pose_landmarks(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Landmarks of a strongly tilted face, re-detected on an upright crop of it.

        The detector's landmarks drift on faces rolled by 30 degrees and more, which would
        read as yaw; detecting again on the face turned upright and mapping the points back
        gives the pose the face really has. Alignment (and so the embedding) keeps the first
        landmarks, as the reference implementation does.
        """
        left_eye, right_eye = landmarks[0], landmarks[1]
        roll = float(np.degrees(np.arctan2(*(right_eye - left_eye)[::-1])))
        if abs(roll) < REDETECT_ROLL_DEG:
            return landmarks
        center = landmarks.mean(axis=0)
        side = max(int(np.linalg.norm(right_eye - left_eye) * 5), 32)
        turn = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), roll, 1.0)
        turn[:, 2] += side / 2 - center
        upright = cv2.warpAffine(image_bgr, turn, (side, side))
        _, found = self.detector.detect(upright, input_size=(REDETECT_SIZE, REDETECT_SIZE))
        if found is None or not len(found):
            return landmarks
        nearest = found[np.argmin(np.linalg.norm(found.mean(axis=1) - side / 2, axis=1))]
        back = cv2.invertAffineTransform(turn)
        return nearest @ back[:, :2].T + back[:, 2]

    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # scikit-image deprecation inside insightface
            warnings.simplefilter("ignore", FutureWarning)
            return face_align.norm_crop(
                image_bgr, landmark=landmarks, image_size=self.recognizer.input_size[0]
            )

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        feats = np.asarray(self.recognizer.get_feat(crops), dtype=np.float32)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)
