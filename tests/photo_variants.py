"""Degraded copies of the sample photos, laid out for ``facestream eval`` (test helper).

Generated at test time from the sample photos (never committed). For each person, every
photo of theirs becomes four copies: rotated +30 and -30 degrees (expanded canvas, white
fill), mirrored, and half-size at JPEG quality 35. The person is enrolled from the +30
rotation of their first photo, which is therefore first by name in their folder::

    labelled/obama/obama-00-obama-rot-p30.jpg      <- enrolled
    labelled/obama/obama-01-obama-rot-m30.jpg      <- genuine queries...
    impostors/impostor-t1.jpg                      <- faces of people not enrolled

File stems are unique across the whole set (``facestream produce`` names an image after its
file stem), so that an outcome event leads back to its photo.

Yao Ming is one of the 22 faces of ``players.jpg`` (the tallest player, number 13): his face
is cut out of it as a genuine photo of his, and painted over in the impostor copy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

# person -> their sample photos; the first defines them (enrolled from its +30 rotation).
PEOPLE = {
    "obama": ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"],
    "biden": ["biden.jpg", "biden2.jpg"],
    "yao-ming": ["yaoming.jpg", "players.jpg#yao"],
}
ENROL_VARIANT = "rot-p30"
VARIANTS = ["rot-p30", "rot-m30", "mirror", "half-q35"]
# Yao Ming's face box in players.jpg (x1, y1, x2, y2), checked by eye: the detector finds
# it at (721, 142, 765, 192).
YAO_IN_PLAYERS = (721, 142, 765, 192)
IMPOSTORS = ["players.jpg", "t1.jpg", "gdp.jpg"]  # players.jpg without Yao Ming


@dataclass(frozen=True)
class VariantSet:
    labelled: Path  # one subfolder per person
    impostors: Path
    enrol: dict[str, Path]  # person -> the photo they are enrolled from
    genuine: dict[str, str]  # file stem of every genuine query -> its person
    impostor_photos: list[Path]

    def person_of(self, stem: str) -> str | None:
        return self.genuine.get(stem)


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def variant(img: Image.Image, kind: str) -> bytes:
    if kind in ("rot-p30", "rot-m30"):
        degrees = 30 if kind == "rot-p30" else -30
        out = img.rotate(degrees, expand=True, fillcolor=(255, 255, 255), resample=Image.BICUBIC)
        return jpeg(out)
    if kind == "mirror":
        return jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if kind == "half-q35":
        half = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.LANCZOS)
        return jpeg(half, quality=35)
    raise ValueError(kind)


def _source(samples: Path, name: str) -> Image.Image:
    if name == "players.jpg#yao":  # Yao Ming cut out of the team photo, with margin
        x1, y1, x2, y2 = YAO_IN_PLAYERS
        m = x2 - x1
        img = Image.open(samples / "players.jpg").convert("RGB")
        return img.crop((x1 - m, y1 - m, x2 + m, y2 + m))
    return Image.open(samples / name).convert("RGB")


def players_without_yao(samples: Path) -> Image.Image:
    img = Image.open(samples / "players.jpg").convert("RGB")
    x1, y1, x2, y2 = YAO_IN_PLAYERS
    m = (x2 - x1) // 3
    ImageDraw.Draw(img).rectangle((x1 - m, y1 - m, x2 + m, y2 + m), fill=(255, 255, 255))
    return img


def make_variant_set(samples: Path, dest: Path) -> VariantSet:
    labelled, impostors = dest / "labelled", dest / "impostors"
    enrol: dict[str, Path] = {}
    genuine: dict[str, str] = {}
    for person, names in PEOPLE.items():
        folder = labelled / person
        folder.mkdir(parents=True, exist_ok=True)
        index = 1
        for n, name in enumerate(names):
            img = _source(samples, name)
            file, _, part = name.partition("#")
            stem = Path(file).stem + (f"-{part}" if part else "")
            for kind in VARIANTS:
                if n == 0 and kind == ENROL_VARIANT:
                    path = folder / f"{person}-00-{stem}-{kind}.jpg"
                    enrol[person] = path
                else:
                    path = folder / f"{person}-{index:02d}-{stem}-{kind}.jpg"
                    genuine[path.stem] = person
                    index += 1
                path.write_bytes(variant(img, kind))
    impostors.mkdir(parents=True, exist_ok=True)
    photos = []
    for name in IMPOSTORS:
        img = players_without_yao(samples) if name == "players.jpg" else _source(samples, name)
        path = impostors / f"impostor-{Path(name).stem}.jpg"
        path.write_bytes(jpeg(img))
        photos.append(path)
    return VariantSet(labelled, impostors, enrol, genuine, photos)
