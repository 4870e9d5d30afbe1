"""insightface models on onnxruntime (CUDA when present, else CPU; the recogniser on OpenVINO
when on CPU, see openvino_session)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo import model_zoo
from insightface.model_zoo.scrfd import distance2bbox, distance2kps
from insightface.utils import face_align

from actors.models.base import DetectedFace, FaceModel
from actors.models.openvino_session import OpenVinoSession
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
    # Detect the images of a chunk in one detector session call (each letterboxed to
    # det_size as insightface's SCRFD.detect does) rather than one call per image. Results
    # equal the per-image path (tests/integration/test_batched_detection.py). Set from
    # model.batched_detection; its "auto" is on when the detector runs on an accelerator,
    # off on CPU, where it was slower per image on the 8 sample photos (quiet machine: 33.6
    # vs 30.0 ms at one intra-op thread, 23.1 vs 22.2 at two; the batch's activations
    # outgrow the caches): BENCHMARKS.md, "Model path".
    batched_detection: bool = False
    # Crops per recogniser call on CPU, (one intra-op thread, more): at one thread batches
    # of 1 and 8 cost the same per face and 32 ~13% more; at two, 8 was ~28% faster than 1.
    # Accelerators keep the base's max_embed_batch (64).
    CPU_EMBED_BATCH = (1, 8)

    def __init__(
        self,
        pack: ModelPack,
        settings: ModelSettings,
        *,
        batched_detection: bool | None = None,
        decode_threads: int | None = None,
        compute_threads: int | None = None,
        max_embed_batch: int | None = None,
        provider_options: list[dict[str, Any]] | None = None,
    ) -> None:
        onnxruntime.set_default_logger_severity(3)  # silences a harmless shape warning
        self.settings = settings
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        requested = choose_providers(settings.providers)
        detector = recognizer = None
        extra = {} if provider_options is None else {"provider_options": provider_options}
        for name in sorted(pack.checksums):
            model = model_zoo.get_model(
                str(pack.folder / name), providers=requested, sess_options=options, **extra
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
        self.providers = list(detector.session.get_providers())
        if requested[0] != self.providers[0]:
            log.warning("asked for %s, running on %s", requested[0], self.providers[0])
        on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.recognizer_runtime = settings.recognizer_runtime
        if self.recognizer_runtime == "auto":
            self.recognizer_runtime = "openvino" if on_cpu else "onnxruntime"
        # The keyword arguments override the settings (benchmarks and tests compare both).
        self.decode_threads = settings.decode_threads if decode_threads is None else decode_threads
        self.compute_threads = (
            settings.compute_threads if compute_threads is None else compute_threads
        )
        self.decode_budget_bytes = settings.decode_budget_mib * 2**20
        if self.recognizer_runtime == "openvino":
            recognizer.session = OpenVinoSession(
                pack.folder / rec_file,
                threads=settings.intra_op_threads,
                streams=self.compute_threads,
            )
        if batched_detection is None:
            choice = {"on": True, "off": False}
            batched_detection = choice.get(settings.batched_detection, not on_cpu)
        self.batched_detection = batched_detection
        if max_embed_batch is not None:
            self.max_embed_batch = max_embed_batch
        elif on_cpu:
            self.max_embed_batch = self.CPU_EMBED_BATCH[settings.intra_op_threads > 1]
        self._anchor_centers = self._warm_detector()
        if self.batched_detection and self._anchor_centers is None:
            log.info("%s cannot detect in batches: one image per call", pack.folder)
            self.batched_detection = False
        log.info(
            "model %s on %s, recogniser on %s",
            self.model_id,
            self.providers[0],
            recognizer.session.get_providers()[0],
        )

    def _warm_detector(self) -> dict[int, np.ndarray] | None:
        """Runs the detector once (its sessions load lazily) and returns the anchor centres
        insightface computed for det_size, per stride, when its session takes a batch."""
        det, size = self.detector, self.det_size
        det.detect(np.zeros((size, size, 3), np.uint8))
        batch_dim = det.session.get_inputs()[0].shape[0]
        if (
            not (det.batched and det.use_kps)  # outputs without a batch axis or landmarks
            or (isinstance(batch_dim, int) and batch_dim != -1)  # a graph fixed to one image
            or det._resolve_input_sizes(None) != [(size, size)]  # a graph of another size
        ):
            return None
        centers = {s: det.center_cache.get((size // s, size // s, s)) for s in det._feat_stride_fpn}
        return None if any(c is None for c in centers.values()) else centers

    def detect(self, image_bgr: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
        bboxes, kpss = self.detector.detect(image_bgr, max_num=self.settings.max_faces_per_image)
        return _faces(bboxes, kpss)

    @property
    def detects_in_batches(self) -> bool:
        return bool(self.batched_detection) and self._anchor_centers is not None

    def detect_many(
        self, images_bgr: list[np.ndarray]
    ) -> list[tuple[list[DetectedFace], np.ndarray]]:
        """All images in one detector call (letterboxed to det_size), when batching is on."""
        if not self.detects_in_batches or len(images_bgr) < 2:
            return [self.detect(img) for img in images_bgr]
        det, size = self.detector, (self.det_size, self.det_size)
        canvases, scales = [], []
        for img in images_bgr:
            canvas, scale = letterbox(img, size)
            canvases.append(canvas)
            scales.append(scale)
        blob = cv2.dnn.blobFromImages(
            canvases, 1.0 / det.input_std, size, (det.input_mean,) * 3, swapRB=True
        )
        del canvases
        blob = np.ascontiguousarray(blob, dtype=getattr(det, "input_dtype", np.float32))
        net_outs = det.session.run(det.output_names, {det.input_name: blob})
        del blob
        return [
            _faces(*self._select(*self._candidates(net_outs, i, scale), img.shape))
            for i, (img, scale) in enumerate(zip(images_bgr, scales, strict=True))
        ]

    def _candidates(
        self, net_outs: list[np.ndarray], i: int, det_scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s boxes above the threshold, as SCRFD.forward + _detect_candidates
        produce them: (n, 5) boxes with scores, best first, and (n, 5, 2) landmarks."""
        det, fmc = self.detector, self.detector.fmc
        scores_list, bboxes_list, kpss_list = [], [], []
        for idx, stride in enumerate(det._feat_stride_fpn):
            scores = net_outs[idx][i]
            keep = np.where(scores >= det.det_thresh)[0]
            centers = self._anchor_centers[stride][keep]
            scores_list.append(scores[keep])
            bboxes_list.append(distance2bbox(centers, net_outs[idx + fmc][i][keep] * stride))
            kpss = distance2kps(centers, net_outs[idx + fmc * 2][i][keep] * stride)
            kpss_list.append(kpss.reshape((kpss.shape[0], kpss.shape[1] // 2, 2)))
        scores = np.vstack(scores_list)
        if not scores.size:
            return np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32)
        order = np.argsort(-scores.ravel(), kind="stable")
        bboxes = np.vstack(bboxes_list) / det_scale
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
        return pre_det, (np.vstack(kpss_list) / det_scale)[order, :, :]

    def _select(
        self, pre_det: np.ndarray, kpss: np.ndarray, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD.detect's last steps: NMS, then at most max_num faces (largest and most
        central first, its "default" metric)."""
        if not len(pre_det):
            return pre_det, kpss
        keep = self.detector.nms(pre_det)
        det, kpss = pre_det[keep, :], kpss[keep, :, :]
        max_num = self.settings.max_faces_per_image
        if max_num > 0 and det.shape[0] > max_num:
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            center_y, center_x = shape[0] // 2, shape[1] // 2
            offsets = np.vstack(
                [(det[:, 0] + det[:, 2]) / 2 - center_x, (det[:, 1] + det[:, 3]) / 2 - center_y]
            )
            values = area - np.sum(np.power(offsets, 2.0), 0) * 2.0
            best = np.argsort(values)[::-1][:max_num]
            det, kpss = det[best, :], kpss[best, :]
        return det, kpss

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


def letterbox(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The image resized keeping its aspect ratio into the top-left of a ``size`` canvas, and
    the scale: SCRFD._detect_candidates' arithmetic exactly (same rounding, same resize)."""
    im_ratio = float(img.shape[0]) / img.shape[1]
    model_ratio = float(size[1]) / size[0]
    if im_ratio > model_ratio:
        new_height = size[1]
        new_width = int(new_height / im_ratio)
    else:
        new_width = size[0]
        new_height = int(new_width * im_ratio)
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    canvas[:new_height, :new_width, :] = cv2.resize(img, (new_width, new_height))
    return canvas, float(new_height) / img.shape[0]


def _faces(bboxes: np.ndarray, kpss: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
    faces = [
        DetectedFace(
            bbox=[round(float(v), 2) for v in box[:4]],
            landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in kps],
            det_score=round(float(box[4]), 4),
        )
        for box, kps in zip(bboxes, kpss, strict=True)
    ]
    return faces, kpss
