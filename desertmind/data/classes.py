"""The Duality AI Falcon off-road class table: the one place that knows the ten classes.

Masks store raw ids (uint16). Training uses train ids 0..9, in raw-id order. Every raw value
that is not in the table maps to :data:`IGNORE_INDEX`, never to a real class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class SegClass:
    """One class: its raw id in the masks, its train id, its name and its display colour."""

    raw_id: int
    train_id: int
    name: str
    color: tuple[int, int, int]


CLASSES: tuple[SegClass, ...] = (
    SegClass(100, 0, "Trees", (34, 139, 34)),
    SegClass(200, 1, "Lush Bushes", (154, 230, 60)),
    SegClass(300, 2, "Dry Grass", (215, 190, 150)),
    SegClass(500, 3, "Dry Bushes", (200, 110, 40)),
    SegClass(550, 4, "Ground Clutter", (128, 128, 0)),
    SegClass(600, 5, "Flowers", (255, 105, 180)),
    SegClass(700, 6, "Logs", (90, 45, 20)),
    SegClass(800, 7, "Rocks", (140, 140, 140)),
    SegClass(7100, 8, "Landscape", (245, 225, 100)),
    SegClass(10000, 9, "Sky", (100, 170, 255)),
)

NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
RAW_IDS: tuple[int, ...] = tuple(c.raw_id for c in CLASSES)


def class_table() -> dict[str, list]:
    """The class table as plain lists, as stored in every checkpoint."""
    return {"names": list(CLASS_NAMES), "raw_ids": list(RAW_IDS)}


def build_lookup_table() -> np.ndarray:
    """Return the 65536-entry uint8 raw-id -> train-id table; unknown raw values -> 255."""
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for c in CLASSES:
        lut[c.raw_id] = c.train_id
    return lut


RAW_TO_TRAIN = build_lookup_table()
RAW_TO_TRAIN.setflags(write=False)

#: train id -> raw id (uint16), for writing predictions back in the dataset's own format.
TRAIN_TO_RAW = np.array(RAW_IDS, dtype=np.uint16)

#: train id -> RGB colour, with row 255 (ignore) black, so ``PALETTE[mask]`` colours any mask.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _c in CLASSES:
    PALETTE[_c.train_id] = _c.color
PALETTE.setflags(write=False)


def remap(raw_mask: np.ndarray) -> np.ndarray:
    """Map a raw-id mask to train ids with one vectorised lookup."""
    return RAW_TO_TRAIN[raw_mask]


def unknown_values(mask: np.ndarray, raw: np.ndarray) -> dict[int, int]:
    """Raw values of ``raw`` outside the class table (ignored in ``mask``) -> pixel counts."""
    unknown = mask == IGNORE_INDEX
    if not unknown.any():
        return {}
    values, counts = np.unique(raw[unknown], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
