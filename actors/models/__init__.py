"""Face models: one base class, one module per runtime."""

from actors.models.base import DetectedFace, FaceModel, ImageFaces
from actors.models.packs import ModelPack, resolve_pack
from actors.models.telemetry import switch_off_runtime_telemetry
from core.settings import Settings

# Before a runtime module of this package (they import onnxruntime, insightface, openvino).
switch_off_runtime_telemetry()

__all__ = [
    "DetectedFace",
    "FaceModel",
    "ImageFaces",
    "ModelPack",
    "load_face_model",
    "resolve_pack",
]


def load_face_model(settings: Settings) -> FaceModel:
    """The configured model pack on the configured runtime (onnxruntime today), with every
    ``model.*`` setting: providers, threads, batched detection, the decode pool and budget."""
    from actors.models.insightface_onnx import InsightFaceOnnx

    return InsightFaceOnnx(resolve_pack(settings.model.folder, settings.cache_dir), settings.model)
