"""Reading and writing the dataset's PNG files, with errors that name the file.

Images are read with OpenCV and returned in RGB order. Masks are read with
``cv2.IMREAD_UNCHANGED``: any other flag converts the uint16 raw ids to 8 bits and destroys them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from desertmind.errors import DatasetError
from desertmind.files import write_bytes

# OpenCV threads fight with DataLoader worker processes; the workers are the parallelism.
cv2.setNumThreads(0)


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as an (H, W, 3) uint8 array."""
    data = _read_bytes(path)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (unreadable, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a raw-id mask as an (H, W) uint16 array, refusing anything else."""
    data = _read_bytes(path)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"{path}: cannot decode mask (unreadable, truncated or not an image)")
    if mask.ndim != 2 or mask.dtype != np.uint16:
        raise DatasetError(
            f"{path}: mask must be single-channel 16-bit (uint16 raw class ids), found shape "
            f"{mask.shape} dtype {mask.dtype}. Colourised (RGB) or 8-bit masks do not hold the "
            "raw ids (100, 200, ..., 10000); use the dataset's original Segmentation PNGs."
        )
    return mask


def _read_bytes(path: str | Path) -> np.ndarray:
    # imdecode on the file's bytes instead of imread: a missing file and a corrupt one give
    # different, precise messages, and libpng's truncation error surfaces as a None result.
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file ({e.strerror or e})") from e
    if not raw:
        raise DatasetError(f"{path}: file is empty")
    return np.frombuffer(raw, dtype=np.uint8)


def write_png(path: str | Path, array: np.ndarray, rgb: bool = False) -> None:
    """Write a PNG atomically (see :mod:`desertmind.files`)."""
    path = Path(path)
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed for array {array.shape} {array.dtype}")
    write_bytes(path, buf.tobytes())
