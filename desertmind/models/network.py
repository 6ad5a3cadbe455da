"""The network contract: what the rest of desertmind may assume about a segmentation network.

Every architecture is wrapped in a :class:`SegmentationNetwork`. The LightningModule, the
backbone freezing callback, export, dashboards and benchmarks use only this contract, never
an architecture's internals, so adding an architecture touches :mod:`desertmind.models` only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationNetwork(nn.Module, ABC):
    """A network from normalised images (N, 3, H, W) to class logits (N, C, H, W).

    Subclasses implement :meth:`forward_padded` for inputs whose height and width are
    multiples of :attr:`size_multiple`, and say which parameters are the encoder (frozen by
    ``BackboneFreeze``, the ``backbone`` LR group), the head and the optional auxiliary head.
    This base class makes any input size work, in one place: it pads the images at the bottom
    and right to the multiple with zeros (the mean colour after normalisation) and crops the
    logits back, so masks and metrics never see the padding.
    """

    #: contract properties that TorchScript must not compile (export scripts forward only)
    __jit_unused_properties__ = ["encoder", "has_aux"]

    def __init__(self, size_multiple: int = 1) -> None:
        super().__init__()
        #: height and width the wrapped network needs its input to be divisible by (1: any)
        self.size_multiple = size_multiple

    @property
    @abstractmethod
    def encoder(self) -> nn.Module:
        """The pretrained feature extractor (the ``backbone`` param group)."""

    @abstractmethod
    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Everything after the encoder that produces the main logits (the ``head`` group)."""

    def aux_parameters(self) -> Iterator[nn.Parameter]:
        """The auxiliary head's parameters (the ``aux`` group); none by default."""
        return iter(())

    @property
    def has_aux(self) -> bool:
        """Whether :meth:`forward_with_aux` returns auxiliary logits."""
        return False

    @abstractmethod
    def forward_padded(self, images: torch.Tensor,
                       with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, aux logits or None) at the input's size, for an input of a valid size;
        the aux head runs only when ``with_aux`` is True (training)."""

    def forward_with_aux(self, images: torch.Tensor,
                         with_aux: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, aux logits or None) at the input's size, for any input size."""
        m = self.size_multiple
        if m == 1:
            return self.forward_padded(images, with_aux)
        h, w = images.shape[-2:]
        # always pad (by zero where nothing is needed) so traced exports stay shape-dynamic
        padded = F.pad(images, (0, (m - w % m) % m, 0, (m - h % m) % m))
        logits, aux = self.forward_padded(padded, with_aux)
        return logits[..., :h, :w], None if aux is None else aux[..., :h, :w]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) for normalised images (N, 3, H, W) of any size; no aux head."""
        return self.forward_with_aux(images, with_aux=False)[0]


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every BatchNorm's running-stat momentum (torchvision's MobileNetV3 uses 0.01)."""
    for m in batchnorms(model):
        m.momentum = momentum


def batchnorms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
