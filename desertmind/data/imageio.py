"""Reading and writing the dataset's PNG files, with errors that name the file.

Images are read with OpenCV and returned in RGB order. Masks are read with
``cv2.IMREAD_UNCHANGED``: any other flag converts the uint16 raw ids to 8 bits and destroys them.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from desertmind.errors import ConfigError, DatasetError
from desertmind.files import write_bytes

# OpenCV threads fight with DataLoader worker processes; the workers are the parallelism.
cv2.setNumThreads(0)

#: the environment variable that raises (or lowers) :func:`max_pixels`; an environment
#: variable rather than an option, so that every reader (fit's DataLoader workers, predict,
#: check-data's worker pool, the viewer) obeys one value without being handed it
MAX_PIXELS_ENV = "DESERTMIND_MAX_PIXELS"
#: the largest image any reader decodes by default, in pixels: a dataset frame is 0.5 MP and a
#: 6K photo 20 MP; a PNG of a few MB can declare 400 MP, which would take minutes and tens of
#: GB to decode
DEFAULT_MAX_PIXELS = 25_000_000


def max_pixels() -> int:
    """The pixel limit in force: ``$DESERTMIND_MAX_PIXELS`` if set, else 25 MP."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or not value.strip():
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ConfigError(f"{MAX_PIXELS_ENV}={value!r}: a positive number of pixels, e.g. "
                          "60000000 for 60 MP")
    return limit


def read_header(source: str | Path | io.BytesIO, what: str = "image",
                name: str | Path | None = None) -> tuple[int, int]:
    """The (width, height) a file's header declares (PIL reads no pixel data to open it),
    refused when the file is no image or declares more than :func:`max_pixels`: checked
    before anything is decoded."""
    name = source if name is None else name
    limit = max_pixels()
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        w = h = 0  # over PIL's hard limit (179 MP): over ours too
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{name}: cannot decode {what} (unreadable, truncated or not an "
                           "image in a format this package reads: PNG, JPEG, BMP, TIFF, WebP)"
                           ) from e
    if not w or w * h > limit:
        size = (f" {w}x{h} pixels ({w * h / 1e6:.0f} MP)," if w else
                f" over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP,")
        raise DatasetError(f"{name}:{size} larger than the {limit / 1e6:g} MP any reader "
                           f"decodes; downscale it, or raise the limit with "
                           f"{MAX_PIXELS_ENV}=<pixels>")
    return w, h


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as an (H, W, 3) uint8 array (refused, from its header, when it is
    larger than :func:`max_pixels`)."""
    data = _read_bytes(path, "image")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (unreadable, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a raw-id mask as an (H, W) uint16 array, refusing anything else (and, from its
    header, anything larger than :func:`max_pixels`)."""
    data = _read_bytes(path, "mask")
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


def _read_bytes(path: str | Path, what: str) -> np.ndarray:
    # imdecode on the file's bytes instead of imread: a missing file and a corrupt one give
    # different, precise messages, and libpng's truncation error surfaces as a None result.
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file ({e.strerror or e})") from e
    if not raw:
        raise DatasetError(f"{path}: file is empty")
    read_header(io.BytesIO(raw), what, path)
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
