"""torchvision DeepLabV3 with the study's backbones and offline-safe pretrained weights."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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

from desertmind.errors import WeightsUnavailableError
from desertmind.models.network import Scaling, SegmentationNetwork

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


class TorchvisionDeepLabV3(SegmentationNetwork):
    """torchvision's DeepLabV3 under the network contract.

    It adopts the torchvision model's ``backbone``, ``classifier`` and ``aux_classifier``
    under the same names, so checkpoint keys (``model.backbone.*``, ``model.classifier.4.*``)
    are those of earlier desertmind versions and of plain torchvision. The forward returns
    tensors instead of torchvision's ``{"out", "aux"}`` dict. DeepLabV3 upsamples to the input
    size itself, so any input size works without padding.
    """

    def __init__(self, model: nn.Module, *, input_scaling: Scaling = "imagenet") -> None:
        super().__init__(size_multiple=1, input_scaling=input_scaling)
        self.backbone = model.backbone
        self.classifier = model.classifier
        self.aux_classifier = model.aux_classifier

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.classifier.parameters()

    def aux_parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.aux_classifier is None else self.aux_classifier.parameters()

    @property
    def has_aux(self) -> bool:
        return self.aux_classifier is not None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)["out"]

    def forward_padded(self, images: torch.Tensor,
                       with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = images.shape[-2:]
        features = self.backbone(images)
        logits = F.interpolate(self.classifier(features["out"]), size=size, mode="bilinear",
                               align_corners=False)
        aux = None
        if with_aux and self.aux_classifier is not None:
            aux = F.interpolate(self.aux_classifier(features["aux"]), size=size,
                                mode="bilinear", align_corners=False)
        return logits, aux


def _weights_file(w: WeightsEnum) -> str:
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.join(checkpoints, os.path.basename(w.url))


def build_deeplabv3(backbone: str, *, num_classes: int, weights: str, aux_loss: bool,
                    input_scaling: Scaling) -> TorchvisionDeepLabV3:
    """DeepLabV3 with ``num_classes`` outputs; names are checked by the registry.

    ``weights``: ``none`` (random), ``imagenet`` (backbone only) or ``coco`` (torchvision's
    COCO-with-VOC-labels segmentation weights, the study's ``weights="DEFAULT"``; the last layer
    of the classifier and of the aux head are replaced for ``num_classes``). Weights that cannot
    be downloaded raise :class:`WeightsUnavailableError`; there is no fallback to random ones.
    """
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
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # URLError is an OSError; hash failures, truncated and corrupt files are the others
        w = coco if weights == "coco" else imagenet
        cached = _weights_file(w)
        if os.path.isfile(cached):
            raise WeightsUnavailableError(
                f"cannot load the {weights} weights for {backbone}: the downloaded file "
                f"{cached} cannot be read (corrupt or truncated: {str(e).splitlines()[0]}). "
                f"Delete it to download it again, or replace it with a good copy of {w.url}."
            ) from e
        raise WeightsUnavailableError(
            f"cannot load the {weights} weights for {backbone} ({e}). Download {w.url} on a "
            f"machine with network access and place it at {_weights_file(w)} (the folder "
            "follows $TORCH_HOME, default ~/.cache/torch), or use weights: none."
        ) from e
    return TorchvisionDeepLabV3(model, input_scaling=input_scaling)


def _replace_conv(conv: nn.Conv2d, num_classes: int) -> nn.Conv2d:
    return nn.Conv2d(conv.in_channels, num_classes, kernel_size=conv.kernel_size)
