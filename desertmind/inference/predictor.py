"""One trained model for single images, from its checkpoint alone (the viewer, scripts)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from desertmind.data.classes import CLASS_NAMES, NUM_CLASSES
from desertmind.data.transforms import build_transform
from desertmind.errors import DatasetError
from desertmind.inference.trained import TrainedSettings, load_trained
from desertmind.models.prediction import EvalOptions, predict_maps

#: the largest image accepted, in pixels (a 960x540 frame is 0.5 MP): beyond this a single
#: forward pass would take minutes and gigabytes on a CPU
MAX_PIXELS = 25_000_000


def check_image(image: np.ndarray, source: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or a :class:`DatasetError` saying what is wrong."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise DatasetError(f"{source}: expected an RGB image (H x W x 3, 8 bits), got shape "
                           f"{shape} of {dtype}")
    h, w = image.shape[:2]
    if h < 16 or w < 16:
        raise DatasetError(f"{source}: {w}x{h} pixels is too small (at least 16x16)")
    if h * w > MAX_PIXELS:
        raise DatasetError(f"{source}: {w}x{h} pixels ({h * w / 1e6:.0f} MP) is more than the "
                           f"{MAX_PIXELS / 1e6:.0f} MP accepted; downscale it first")
    return image


class Predictor:
    """The checkpoint's network in eval mode on ``device``, at the image size it was trained
    with (the checkpoint's ``data.image_size``; None: full size), predicting one image at a
    time through the one prediction path (:mod:`desertmind.models.prediction`).

    ``evaluation`` are the default options of every call: ``EvalOptions()`` (whole images, all
    classes: what ``validate`` does unless told otherwise), or ``"checkpoint"`` for the TTA and
    class restriction the checkpoint was trained to be evaluated with. A call may pass its own.
    Calls are serialised, so one Predictor can serve many threads.
    """

    def __init__(self, ckpt: str | Path, device: str = "cpu", *,
                 evaluation: EvalOptions | str | None = None) -> None:
        module, settings = load_trained(ckpt)
        self.settings: TrainedSettings = settings
        self.network = module.model.to(device).eval()
        self.device = torch.device(device)
        self.image_size = settings.data.get("image_size")
        if evaluation == "checkpoint":
            evaluation = settings.evaluation
        self.evaluation: EvalOptions = evaluation or EvalOptions()
        self._transform = build_transform("none", self.image_size)
        self._lock = threading.Lock()

    def options(self, **changes: object) -> EvalOptions:
        """This predictor's default options with ``changes`` (checked)."""
        return replace(self.evaluation, **changes)

    def predict(self, image: np.ndarray, options: EvalOptions | None = None) -> np.ndarray:
        """Train-id map (H, W) uint8 of an RGB uint8 image, at the image's own size."""
        check_image(image)
        x = self._transform(image=image)["image"][None].to(self.device).float()
        with self._lock:
            return predict_maps(self.network, x, [image.shape[:2]],
                                options or self.evaluation)[0].numpy()


def class_shares(pred: np.ndarray) -> dict[str, float]:
    """Each class's share of the pixels of a train-id map, by class name."""
    counts = np.bincount(pred.ravel(), minlength=256)[:NUM_CLASSES]
    return {name: float(c) / pred.size for name, c in zip(CLASS_NAMES, counts, strict=True)}
