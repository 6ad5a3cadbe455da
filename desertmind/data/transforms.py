"""Augmentation presets (albumentations); the network scales its input itself.

Every pipeline ends in ``ToTensorV2`` and keeps the image uint8; masks are only ever
resampled with nearest neighbour (albumentations' default ``mask_interpolation``) and padded
with the ignore index, so labels are never blended.
"""

from __future__ import annotations

from typing import Literal, get_args

import albumentations as A
import cv2
import numpy as np

from desertmind.data.classes import IGNORE_INDEX
from desertmind.errors import check_choice

Preset = Literal["none", "flip_color", "crop", "scale_crop", "strong", "study_flip_color",
                 "domain_random"]
PRESETS: tuple[str, ...] = get_args(Preset)
#: the presets that take a random ``crop_size`` crop (the others ignore it)
CROPPING_PRESETS: tuple[str, ...] = ("crop", "scale_crop", "strong")
#: appearance transfer toward unlabelled target images (albumentations' domain adaptation)
# PixelDistributionAdaptation is left out: in albumentations 2.0.8 it returns zeros on uint8
# and saturates on float images of the synthetic scenes (an ill-conditioned PCA on flat colours)
Transfer = Literal["none", "fda", "histogram"]
TRANSFERS: tuple[str, ...] = get_args(Transfer)
REFERENCE_KEY = "target_reference"  # where a call passes the target image to transfer toward


def _resize(image_size: tuple[int, int] | None) -> list[A.BasicTransform]:
    if image_size is None:
        return []
    h, w = image_size
    return [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]


def _random_crop(size: int) -> list[A.BasicTransform]:
    return [
        A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(size, size),
    ]


def _domain_random() -> list[A.BasicTransform]:
    """Photometric domain randomisation: light, colour cast, lens and sensor, no geometry but
    a flip, so a model cannot lean on one desert's palette."""
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
        A.RandomGamma(gamma_limit=(70, 150), p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=20, p=0.7),
        A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20, p=0.5),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.3),
    ]


def _transfer(kind: str, p: float) -> list[A.BasicTransform]:
    """Move a source image's appearance toward a target image (no target labels): the
    dataset passes one random target image per sample under :data:`REFERENCE_KEY`, as float32
    in [0, 1], so the image goes to float and back around the transfer."""
    check_choice("appearance transfer (data.target_transfer)", kind, TRANSFERS)
    if kind == "none":
        return []
    if kind == "fda":  # the target's low frequencies (overall colour and light)
        step = A.FDA(metadata_key=REFERENCE_KEY, beta_limit=(0.0, 0.05), p=1.0)
    else:  # the target's per-channel histograms
        step = A.HistogramMatching(metadata_key=REFERENCE_KEY, blend_ratio=(0.5, 1.0), p=1.0)
    return [A.Sequential([A.ToFloat(max_value=255), step,
                          A.FromFloat(max_value=255, dtype="uint8")], p=p)]


def build_transform(
    preset: str = "none",
    image_size: tuple[int, int] | None = None,
    crop_size: int = 512,
    seed: int | None = None,
    transfer: str = "none",
    transfer_p: float = 0.5,
    *,
    randomise: bool = False,
) -> A.Compose:
    """Return the training pipeline for ``preset``; ``none`` is also the eval pipeline.

    - ``none``: resize to ``image_size`` (H, W), or keep the full size when it is None.
    - ``flip_color``: + horizontal flip and brightness/contrast, each half the time.
    - ``study_flip_color``: the study's phase 2.2: horizontal flip half the time, and every image
      multiplied in brightness and contrast by factors drawn from U(0.8, 1.2).
    - ``crop``: + random ``crop_size`` square crop and horizontal flip (the study's phase 3).
    - ``scale_crop``: random rescale 0.5-2.0, ``crop_size`` crop and horizontal flip.
    - ``strong``: random rescale 0.5-2.0, crop, flip and photometric distortion
      (MMSegmentation's default recipe).
    - ``domain_random``: flip and photometric domain randomisation (brightness, contrast,
      gamma, hue, saturation, colour cast, blur, noise).

    ``randomise`` adds the ``domain_random`` preset's steps after any preset's own (crops,
    flips), so a phase keeps its recipe and also sees randomised light and colour (the
    domain-generalisation overlay turns it on); ``domain_random`` itself is unchanged by it.

    ``transfer`` (``fda``, ``histogram``) then moves the image's appearance, with
    probability ``transfer_p``, toward the unlabelled target image given with each call under
    :data:`REFERENCE_KEY` (:class:`~desertmind.data.dataset.OffroadDataset` draws it).

    ``seed`` fixes the pipeline's own random state (albumentations ignores global seeds).
    """
    check_choice("augmentation preset (data.train_preset)", preset, PRESETS)
    steps = _resize(image_size)
    if preset == "flip_color":
        steps += [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.2, 0.2, p=0.5)]
    elif preset == "study_flip_color":
        # brightness and contrast factors drawn from U(0.8, 1.2) on every image, the way
        # torchvision's adjust_brightness / adjust_contrast apply them
        steps += [A.HorizontalFlip(p=0.5),
                  A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0, hue=0, p=1.0)]
    elif preset == "crop":
        steps += _random_crop(crop_size) + [A.HorizontalFlip(p=0.5)]
    elif preset in CROPPING_PRESETS:  # scale_crop, strong
        steps += [A.RandomScale(scale_limit=(-0.5, 1.0), p=1.0), *_random_crop(crop_size),
                  A.HorizontalFlip(p=0.5)]
        if preset == "strong":
            steps.append(A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5,
                                       hue=0.05, p=0.8))
    if preset == "domain_random" or randomise:
        steps += _domain_random()
    steps += _transfer(transfer, transfer_p)
    pipeline = A.Compose([*steps, A.ToTensorV2()])
    if seed is not None:
        seed_pipeline(pipeline, seed)
    return pipeline


def seed_pipeline(pipeline: A.BaseCompose, seed: int | None) -> None:
    """Seed ``pipeline`` so that its steps draw independently of each other.

    albumentations' own ``set_random_seed`` (2.0) hands the pipeline's seed to every step, so
    after a reseed all steps draw the same first numbers: whether each one fires, and its
    parameters, move together. Reseeded per sample (as the keys of
    :class:`~desertmind.data.sampling.EpochSampler` do), ``domain_random`` left 18% of 300
    samples with no step at all instead of the 0.4% its probabilities give. Each step gets
    its own seed from a ``numpy.random.SeedSequence`` of ``seed`` instead: still one seed for
    the whole sample (None: fresh entropy, as albumentations does)."""
    pipeline.set_random_seed(seed)
    children = np.random.SeedSequence(seed).spawn(len(pipeline.transforms))
    for step, child in zip(pipeline.transforms, children, strict=True):
        step_seed = int(child.generate_state(1)[0])
        if isinstance(step, A.BaseCompose):
            seed_pipeline(step, step_seed)
        else:
            step.set_random_seed(step_seed)
