"""Synthetic off-road scenes in exactly the Duality format, for tests, demos and benchmarks.

Each scene has a wavy horizon, sky above and landscape below, and objects of the eight other
classes, each with its own colour and texture so that a model can learn them. Output is
deterministic for a seed: sample ``i`` of a split draws from ``SeedSequence([seed, split, i])``.

Three domains, like the real train and test deserts:

- ``source`` (train / val): every class, daylight.
- ``shifted`` (the ``test_shifted`` split): what is known of the real test desert. Darker, with
  the test set's colour cast (its mean RGB is about [0.83, 0.81, 0.88] of train's); no Ground
  Clutter, Flowers or Logs and almost no Lush Bushes; rocks everywhere, larger and of another
  stone; coarser ground texture, redder sand and a hazy sky. Same shapes, so the classes stay
  learnable: what changes is appearance and class balance.
- ``dusk`` (the ``test_dusk`` split): a second, different shift, so that no label-free tool
  is judged on one desert only. A barren grey-soil desert at dusk: warm, dim light, haze that
  thickens toward the horizon, a pale grey-brown soil and paler grass; no Trees, Lush Bushes or
  Flowers (another set of absent classes than ``shifted``'s), Ground Clutter and Logs kept.
- ``sealed`` (the ``test_sealed`` split): a desert no tool was chosen on. The two deserts
  above are *development* deserts: the label-free tools were compared and the domain overlay
  was chosen on their labelled scores, so their figures are post-selection. The sealed desert
  is for confirming that choice once, afterwards (``benchmarks/domain_gap.py``): an overcast
  morning over dark volcanic ground, olive grass and rust-red rocks in cool, flattened light;
  no Lush Bushes, Dry Bushes or Logs (a third set); and another camera: half the resolution,
  upsampled, then JPEG-compressed (8x8 blocking) with sensor noise. It is rendered by its own
  code path (:func:`_sealed_camera`) from its own seed stream, and nothing in the package was
  tuned on it; if a choice is ever made on it, a new sealed desert is needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from desertmind.data.classes import TRAIN_TO_RAW
from desertmind.data.imageio import write_png
from desertmind.data.layout import IMAGE_DIR, MASK_DIR
from desertmind.errors import DatasetError

TREES, LUSH, DRY_GRASS, DRY_BUSH, CLUTTER, FLOWERS, LOGS, ROCKS, LANDSCAPE, SKY = range(10)
OBJECT_CLASSES = (DRY_GRASS, CLUTTER, ROCKS, LOGS, DRY_BUSH, LUSH, FLOWERS, TREES)  # back to front

# Scene colours (RGB) and texture: noise amplitude, stripe amplitude along x and along y.
_BASE = np.array([
    (40, 95, 35),     # Trees: dark green, coarse noise
    (90, 185, 70),    # Lush Bushes: bright green
    (196, 178, 96),   # Dry Grass: straw, vertical stripes
    (125, 92, 58),    # Dry Bushes: brown
    (150, 138, 122),  # Ground Clutter: grey-brown speckle
    (235, 70, 170),   # Flowers: magenta
    (78, 48, 28),     # Logs: dark brown, horizontal grain
    (122, 124, 132),  # Rocks: blue-grey
    (205, 172, 125),  # Landscape: sand
    (120, 175, 230),  # Sky: blue, vertical gradient
], dtype=np.float32)
_TEXTURE = np.array([
    (28, 0, 0), (14, 0, 0), (8, 24, 0), (18, 0, 0), (40, 0, 0),
    (20, 0, 0), (8, 0, 18), (10, 0, 0), (12, 0, 0), (3, 0, 0),
], dtype=np.float32)


DOMAINS = ("source", "shifted", "dusk", "sealed")
SHIFTED_ABSENT = (CLUTTER, FLOWERS, LOGS)
DUSK_ABSENT = (TREES, LUSH, FLOWERS)
SEALED_ABSENT = (LUSH, DRY_BUSH, LOGS)
#: the classes each domain never draws
ABSENT = {"source": (), "shifted": SHIFTED_ABSENT, "dusk": DUSK_ABSENT,
          "sealed": SEALED_ABSENT}
# the shifted desert's own appearance: colours that change, texture, light
_SHIFTED_BASE = {ROCKS: (150, 112, 92), LANDSCAPE: (185, 130, 95), DRY_GRASS: (176, 160, 100),
                 SKY: (160, 152, 142)}  # a hazy sky
_SHIFTED_TEXTURE = {LANDSCAPE: (30, 0, 0), ROCKS: (24, 0, 0)}
_SHIFTED_LIGHT = np.array([0.83, 0.81, 0.88], dtype=np.float32)
# the dusk desert's: grey soil, pale grass, dull rocks; warm dim light and a haze colour
_DUSK_BASE = {LANDSCAPE: (150, 140, 128), DRY_GRASS: (214, 204, 160), ROCKS: (104, 98, 92),
              DRY_BUSH: (110, 84, 62), SKY: (236, 150, 96)}
_DUSK_TEXTURE = {LANDSCAPE: (20, 0, 10)}
_DUSK_LIGHT = np.array([1.0, 0.8, 0.62], dtype=np.float32) * 0.72
_DUSK_HAZE = np.array([190, 150, 130], dtype=np.float32)
# the sealed desert's: dark volcanic ground, olive grass, rust rocks, a pale sky
_SEALED_BASE = {LANDSCAPE: (92, 84, 80), DRY_GRASS: (150, 150, 84), ROCKS: (150, 82, 60),
                TREES: (60, 80, 50), CLUTTER: (120, 110, 104), SKY: (205, 210, 215)}
_SEALED_TEXTURE = {LANDSCAPE: (16, 0, 0), ROCKS: (14, 10, 0)}
_SEALED_LIGHT = np.array([0.92, 0.97, 1.06], dtype=np.float32)
#: the sealed desert's seed stream: never the other splits' ``[seed, split id, i]``
SEALED_STREAM = 0x5EA1ED


def _palette(domain: str) -> tuple[np.ndarray, np.ndarray]:
    base, texture = _BASE.copy(), _TEXTURE.copy()
    colours, textures = {"shifted": (_SHIFTED_BASE, _SHIFTED_TEXTURE),
                         "dusk": (_DUSK_BASE, _DUSK_TEXTURE),
                         "sealed": (_SEALED_BASE, _SEALED_TEXTURE)}.get(domain, ({}, {}))
    for c, rgb in colours.items():
        base[c] = rgb
    for c, tex in textures.items():
        texture[c] = tex
    return base, texture


def _object_classes(rng: np.random.Generator, force: int | None, domain: str) -> list[int]:
    """The classes drawn in a scene, back to front (``force`` last)."""
    if domain == "shifted":  # rocks always, almost never lush bushes, never the absent three
        classes = [c for c in OBJECT_CLASSES if c != force and c not in SHIFTED_ABSENT
                   and (c == ROCKS or rng.random() < (0.02 if c == LUSH else 0.7))]
    else:
        classes = [c for c in OBJECT_CLASSES if c != force and c not in ABSENT[domain]
                   and rng.random() < 0.7]
    return classes if force is None else [*classes, force]


def render_scene(rng: np.random.Generator, height: int, width: int,
                 force: int | None = None, domain: str = "source") -> tuple[np.ndarray, np.ndarray]:
    """One scene as (RGB uint8 image, uint16 raw-id mask); class ``force`` is drawn last."""
    label = np.full((height, width), LANDSCAPE, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    horizon = (rng.uniform(0.3, 0.5) * height
               + rng.uniform(0.0, 0.05) * height
               * np.sin(2 * np.pi * xs[0] / (width * rng.uniform(0.5, 1.5)) + rng.uniform(0, 6.3)))
    label[ys < horizon[None, :]] = SKY
    s = height / 60.0  # size unit; objects must stay learnable at small image sizes

    rocky = domain == "shifted"
    for c in _object_classes(rng, force, domain):
        many = rocky and c == ROCKS
        for _ in range(int(rng.integers(3, 8) if many else rng.integers(1, 4))):
            x = int(rng.uniform(0, width))
            top = horizon[min(x, width - 1)] + 2 * s
            y = int(rng.uniform(top, height))
            depth = 0.6 + 1.6 * (y - top) / max(height - top, 1.0)  # nearer is bigger
            _draw(label, c, rng, x, y, s * depth * (1.6 if many else 1.0))

    base, texture = _palette(domain)
    image = base[label].copy()
    noise = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
    tex = texture[label]
    image += (tex[..., 0] * noise)[..., None]
    image += (tex[..., 1] * np.sin(xs * (2.2 / max(s, 0.5))))[..., None]
    image += (tex[..., 2] * np.sin(ys * (1.6 / max(s, 0.5))))[..., None]
    sky = label == SKY
    image[sky] -= (50.0 * (1.0 - ys[sky] / max(horizon.max(), 1.0)))[:, None] * np.array(
        [1.0, 0.6, 0.0], dtype=np.float32)
    image *= rng.uniform(0.85, 1.15)
    if domain == "shifted":
        image *= _SHIFTED_LIGHT * rng.uniform(0.92, 1.05)
    elif domain == "dusk":  # dim warm light, and haze thickening toward the horizon
        image *= _DUSK_LIGHT * rng.uniform(0.9, 1.1)
        near = np.clip((ys - horizon[None, :]) / np.maximum(height - horizon[None, :], 1), 0, 1)
        haze = np.where(sky, 0.55, 0.5 * (1.0 - near))[..., None]
        image = image * (1 - haze) + _DUSK_HAZE * 0.72 * haze
    elif domain == "sealed":
        return _sealed_camera(image, rng), TRAIN_TO_RAW[label]
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, TRAIN_TO_RAW[label]


def _sealed_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sealed desert's light and camera: flat cool overcast light (contrast pulled toward
    the mean), half the resolution upsampled back, sensor noise, then JPEG blocking."""
    image = image * _SEALED_LIGHT * rng.uniform(0.9, 1.05)
    image = image.mean((0, 1)) + 0.7 * (image - image.mean((0, 1)))
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    image = image + rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else image


def _draw(label: np.ndarray, c: int, rng: np.random.Generator, x: int, y: int,
          s: float) -> None:
    def r(lo: float, hi: float) -> int:
        return max(1, int(rng.uniform(lo, hi) * s))

    if c == TREES:
        trunk_h, trunk_w = r(5, 9), r(0.8, 1.5)
        cv2.rectangle(label, (x - trunk_w, y - trunk_h), (x + trunk_w, y), TREES, -1)
        cv2.ellipse(label, (x, y - trunk_h), (r(3.5, 7), r(5, 9)), 0, 0, 360, TREES, -1)
    elif c == LUSH:
        cv2.ellipse(label, (x, y), (r(5, 10), r(3, 6)), 0, 180, 360, LUSH, -1)
    elif c == DRY_GRASS:
        cv2.ellipse(label, (x, y), (r(12, 25), r(2, 5)), rng.uniform(-10, 10), 0, 360,
                    DRY_GRASS, -1)
    elif c == DRY_BUSH:
        for _ in range(int(rng.integers(3, 6))):
            cv2.circle(label, (x + r(-4, 4) - r(-4, 4), y - r(0, 3)), r(1.5, 3.5), DRY_BUSH, -1)
    elif c == CLUTTER:
        for _ in range(int(rng.integers(6, 12))):
            cv2.circle(label, (x + int(rng.normal(0, 3 * s)), y + int(rng.normal(0, 1.2 * s))),
                       r(0.6, 1.3), CLUTTER, -1)
    elif c == FLOWERS:
        for _ in range(int(rng.integers(5, 10))):
            cv2.circle(label, (x + int(rng.normal(0, 2 * s)), y + int(rng.normal(0, 0.8 * s))),
                       r(0.8, 1.5), FLOWERS, -1)
    elif c == LOGS:
        box = ((float(x), float(y)), (float(r(10, 20)), float(r(1.5, 3))), rng.uniform(-20, 20))
        cv2.fillPoly(label, [cv2.boxPoints(box).astype(np.int32)], LOGS)
    elif c == ROCKS:
        pts = np.stack([x + rng.normal(0, 3 * s, 7), y + rng.normal(0, 2 * s, 7)], axis=1)
        cv2.fillPoly(label, [cv2.convexHull(pts.astype(np.int32))], ROCKS)


SHIFTED_SPLIT = "test_shifted"
DUSK_SPLIT = "test_dusk"
SEALED_SPLIT = "test_sealed"


def generate(out: str | Path, n_train: int = 40, n_val: int = 10, height: int = 540,
             width: int = 960, seed: int = 0, overwrite: bool = False, n_shifted: int = 0,
             domain: str = "source", n_dusk: int = 0, n_sealed: int = 0) -> Path:
    """Write ``OUT/{train,val}/{Color_Images,Segmentation}/NAME.png`` in ``domain``, and
    ``n_shifted`` scenes of the shifted domain, with masks, in ``OUT/test_shifted`` (and
    ``n_dusk`` of the dusk domain in ``OUT/test_dusk``, ``n_sealed`` of the sealed one in
    ``OUT/test_sealed``); return ``OUT``. A split asked for 0
    scenes is neither written nor checked.

    Within a split, image ``i`` always contains class ``i mod 8`` among the object classes (in
    the shifted domain, among those it has), so any split of at least 8 images uses every class
    its domain has.
    """
    if domain not in DOMAINS or domain == "sealed":  # never trained or validated on
        raise DatasetError(f"domain {domain!r}: one of "
                           f"{', '.join(d for d in DOMAINS if d != 'sealed')}")
    out = Path(out)
    splits = [(split, n, dom, split_id) for split_id, (split, n, dom) in enumerate(
        (("train", n_train, domain), ("val", n_val, domain),
         (SHIFTED_SPLIT, n_shifted, "shifted"), (DUSK_SPLIT, n_dusk, "dusk"),
         (SEALED_SPLIT, n_sealed, "sealed"))) if n > 0]
    if not splits:
        raise DatasetError("nothing to generate: every split was asked for 0 scenes; give "
                           "--n-train, --n-val, --n-shifted, --n-dusk or --n-sealed a positive "
                           "number")
    for split, *_ in splits:
        if (out / split).exists() and not overwrite:
            raise DatasetError(f"{out / split} already exists; pass --overwrite to replace it")
    for split, *_ in splits:  # replace, not add to: old files of another size would remain
        shutil.rmtree(out / split, ignore_errors=True)
    for split, n, dom, split_id in splits:
        present = [c for c in OBJECT_CLASSES if c not in ABSENT[dom]]
        for i in tqdm(range(n), desc=f"writing {split}", unit="img", leave=False,
                      disable=None):  # a bar on a terminal only
            stream = [seed, split_id, i] if dom != "sealed" else [SEALED_STREAM, seed, i]
            rng = np.random.default_rng(np.random.SeedSequence(stream))
            image, mask = render_scene(rng, height, width, present[i % len(present)], dom)
            name = f"synth_{split}_{i:05d}.png"
            write_png(out / split / IMAGE_DIR / name, image, rgb=True)
            write_png(out / split / MASK_DIR / name, mask)
    return out
