"""torchvision DeepLabV3 builders with the seed's backbones and offline-safe pretrained weights."""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
)
from torchvision.models._api import WeightsEnum
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)

from desertmind.errors import ConfigError

_BUILDERS = {
    "mobilenet_v3_large": (deeplabv3_mobilenet_v3_large,
                           DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
                           MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "resnet50": (deeplabv3_resnet50, DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
                 ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (deeplabv3_resnet101, DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
                  ResNet101_Weights.IMAGENET1K_V1),
}
BACKBONES = tuple(_BUILDERS)
WEIGHTS = ("none", "imagenet", "coco")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded; the message says which file and where it goes."""


def _weights_file(w: WeightsEnum) -> str:
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.join(checkpoints, os.path.basename(w.url))


def build_deeplabv3(
    backbone: str = "mobilenet_v3_large",
    num_classes: int = 10,
    weights: str = "none",
    aux_loss: bool = False,
) -> nn.Module:
    """DeepLabV3 with ``num_classes`` outputs.

    ``weights``: ``none`` (random), ``imagenet`` (backbone only) or ``coco`` (torchvision's
    COCO-with-VOC-labels segmentation weights, the seed's ``weights="DEFAULT"``; the last layer
    of the classifier and of the aux head are replaced for ``num_classes``). Weights that cannot
    be downloaded raise :class:`WeightsUnavailableError`; there is no fallback to random ones.
    """
    if backbone not in _BUILDERS:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    if weights not in WEIGHTS:
        raise ConfigError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    builder, coco, imagenet = _BUILDERS[backbone]
    try:
        if weights == "coco":
            model = builder(weights=coco, aux_loss=True)
            model.classifier[-1] = _replace_conv(model.classifier[-1], num_classes)
            if aux_loss:
                model.aux_classifier[-1] = _replace_conv(model.aux_classifier[-1], num_classes)
            else:
                model.aux_classifier = None
        else:
            model = builder(weights=None, num_classes=num_classes, aux_loss=aux_loss,
                            weights_backbone=imagenet if weights == "imagenet" else None)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; hash and load failures too
        w = coco if weights == "coco" else imagenet
        raise WeightsUnavailableError(
            f"cannot load the {weights} weights for {backbone} ({e}). Download {w.url} on a "
            f"machine with network access and place it at {_weights_file(w)} (the folder "
            "follows $TORCH_HOME, default ~/.cache/torch), or use weights: none."
        ) from e
    return model


def _replace_conv(conv: nn.Conv2d, num_classes: int) -> nn.Conv2d:
    return nn.Conv2d(conv.in_channels, num_classes, kernel_size=conv.kernel_size)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every BatchNorm's running-stat momentum (torchvision's MobileNetV3 uses 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
