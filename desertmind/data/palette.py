"""Masks as pictures: class colours, an image with its prediction over it, error maps.

Shared by prediction files, the viewer, TensorBoard images and the report's figures.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from desertmind.data.classes import IGNORE_INDEX, PALETTE


def colorize(mask: np.ndarray) -> np.ndarray:
    """Train-id mask (H, W) -> RGB uint8 in the class colours (ignore: black)."""
    return PALETTE[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            classes: Collection[int] | None = None) -> np.ndarray:
    """The RGB image blended with the class colours (``alpha`` of colour); with ``classes``,
    only those train ids are coloured and the rest of the image is left as it is."""
    mask = np.asarray(mask, dtype=np.uint8)
    blended = (image.astype(np.float32) * (1 - alpha) + PALETTE[mask] * alpha).round()
    out = blended.astype(np.uint8)
    if classes is not None:
        hidden = ~np.isin(mask, list(classes))
        out[hidden] = image[hidden]
    return out


#: the error map's colours: correct pixels dark grey, wrong ones red (ignored ones black)
CORRECT_COLOR = (60, 60, 60)
ERROR_COLOR = (230, 30, 30)


def error_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB: correct pixels dark grey, wrong ones red, ignored ones black."""
    out = np.full((*target.shape, 3), CORRECT_COLOR, dtype=np.uint8)
    out[pred != target] = ERROR_COLOR
    out[target == IGNORE_INDEX] = 0
    return out
