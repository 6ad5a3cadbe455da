"""One trained model for single images, from its checkpoint alone (the viewer, scripts)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from desertmind.data.classes import CLASS_NAMES, NUM_CLASSES
from desertmind.data.imageio import MAX_PIXELS_ENV, max_pixels
from desertmind.data.transforms import build_transform
from desertmind.errors import DatasetError
from desertmind.models.evaluation import Evaluation
from desertmind.models.prediction import EvalOptions
from desertmind.models.trained import TrainedSettings, load_trained


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
    limit = max_pixels()  # the readers' limit: an array handed in directly obeys it too
    if h * w > limit:
        raise DatasetError(f"{source}: {w}x{h} pixels ({h * w / 1e6:.0f} MP) is more than the "
                           f"{limit / 1e6:g} MP accepted; downscale it, or raise the limit "
                           f"with {MAX_PIXELS_ENV}=<pixels>")
    return image


class Predictor:
    """The checkpoint's network in eval mode on ``device``, at the image size it was trained
    with (the checkpoint's ``data.image_size``; None: full size), predicting one image at a
    time through its :class:`~desertmind.models.evaluation.Evaluation`.

    ``evaluation`` are the default options of every call: by default whole images and all
    classes (what ``validate`` does unless told otherwise) with the checkpoint's test-time
    adaptation; ``"checkpoint"`` for all of the checkpoint's evaluation options (TTA and class
    restriction too); or an :class:`EvalOptions` of the caller's. A call may pass its own.
    Test-time adaptation needs the images to adapt to: :meth:`adapt` (until then the network
    predicts as trained). Calls are serialised, so one Predictor can serve many threads.
    """

    def __init__(self, ckpt: str | Path, device: str = "cpu", *,
                 evaluation: EvalOptions | str | None = None) -> None:
        trained = load_trained(ckpt)
        self.settings: TrainedSettings = trained.settings
        self.network = trained.network.to(device).eval()
        self.device = torch.device(device)
        self.image_size = self.settings.data.get("image_size")
        saved = self.settings.evaluation
        if evaluation == "checkpoint":
            evaluation = saved
        self.evaluation: Evaluation = trained.evaluation(evaluation or EvalOptions(
            adapt_bn=saved.adapt_bn, class_priors=saved.class_priors))
        #: how many images the network was adapted to (0: predicts as trained)
        self.adapted_to = 0
        self._transform = build_transform("none", self.image_size)
        self._lock = threading.Lock()

    def adapt(self, images: Sequence[np.ndarray], source: str = "images") -> None:
        """Adapt this predictor's network to ``images`` (RGB uint8) as ``test`` does with
        ``evaluation``'s ``adapt_bn`` and ``class_priors: em``: its BatchNorm statistics and
        the class priors of these images, for every later call. The checkpoint is untouched."""
        if not self.evaluation.options.adapts or not images:
            return

        def batches():
            for i, image in enumerate(images):
                check_image(image, f"{source} image {i}")
                yield self._transform(image=image)["image"][None].to(self.device).float()

        with self._lock:
            done = self.evaluation.adapt(batches, len(images))
            self.adapted_to = len(images)
        what = [w for w, on in (("BatchNorm statistics", "batchnorm" in done),
                                ("class priors", "class_priors" in done)) if on]
        print(f"desertmind: adapted to {len(images)} {source} images ({' and '.join(what)})",
              file=sys.stderr)

    def options(self, **changes: object) -> EvalOptions:
        """This predictor's default options with ``changes`` (checked)."""
        return replace(self.evaluation.options, **changes)

    def _input(self, image: np.ndarray) -> torch.Tensor:
        """A checked RGB uint8 image as the network's batch of one, on its device."""
        check_image(image)
        return self._transform(image=image)["image"][None].to(self.device).float()

    def predict(self, image: np.ndarray, options: EvalOptions | None = None) -> np.ndarray:
        """Train-id map (H, W) uint8 of an RGB uint8 image, at the image's own size."""
        x = self._input(image)
        with self._lock:
            return self.evaluation.maps(x, [image.shape[:2]], options)[0].numpy()

    def predict_with_confidence(self, image: np.ndarray, options: EvalOptions | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
        """(train-id map, confidence of its class in [0, 1]) of an RGB uint8 image."""
        x = self._input(image)
        with self._lock:
            labels, confidence = self.evaluation.confidence(x, [image.shape[:2]], options)[0]
        return labels.numpy(), confidence.numpy()


def class_shares(pred: np.ndarray) -> dict[str, float]:
    """Each class's share of the pixels of a train-id map, by class name."""
    counts = np.bincount(pred.ravel(), minlength=256)[:NUM_CLASSES]
    return {name: float(c) / pred.size for name, c in zip(CLASS_NAMES, counts, strict=True)}
