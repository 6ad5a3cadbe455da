"""Networks by name: ``arch`` and ``backbone`` as a config gives them, checked in one place."""

from __future__ import annotations

from functools import partial
from typing import Literal

from desertmind.data.classes import NUM_CLASSES
from desertmind.errors import ConfigError, check_choice
from desertmind.models import deeplabv3, dpt, smp
from desertmind.models.network import SCALINGS, Scaling, SegmentationNetwork

DEFAULT_ARCH = "deeplabv3"
#: every architecture name: torchvision's DeepLabV3, then SMP's
ARCHITECTURES: tuple[str, ...] = (DEFAULT_ARCH, *smp.ARCHITECTURES)
Arch = Literal[ARCHITECTURES]  # the config's type, so a bad name lists the valid ones


def weights_choices(arch: str, backbone: str) -> tuple[str, ...]:
    """The ``weights`` values ``arch`` with ``backbone`` accepts."""
    return deeplabv3.WEIGHTS if arch == DEFAULT_ARCH else smp.encoder_weights(backbone)


def check_network(arch: str, backbone: str, weights: str) -> None:
    """Refuse an unknown architecture, backbone or weights name, listing the valid ones."""
    check_choice("model.arch", arch, ARCHITECTURES)
    if arch == DEFAULT_ARCH:
        if backbone not in deeplabv3.BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r} for arch {arch}; choose one of "
                              f"{', '.join(deeplabv3.BACKBONES)} (other backbones: use an SMP "
                              "architecture such as deeplabv3plus)")
    else:
        smp.check_backbone(arch, backbone)
    check_choice(f"weights for {arch} / {backbone}", weights, weights_choices(arch, backbone))


def build_network(arch: str = DEFAULT_ARCH, backbone: str = "mobilenet_v3_large", *,
                  weights: str = "none", aux_loss: bool = False,
                  input_scaling: Scaling = "imagenet") -> SegmentationNetwork:
    """Build a network by name, with one output per class of the class table; pretrained
    weights never fall back silently to random ones. ``input_scaling`` is how the network
    turns RGB 0-255 into its input (see :class:`SegmentationNetwork`)."""
    check_network(arch, backbone, weights)
    check_choice("model.input_scaling", input_scaling, SCALINGS)
    if arch == DEFAULT_ARCH:
        return deeplabv3.build_deeplabv3(backbone, num_classes=NUM_CLASSES, weights=weights,
                                         aux_loss=aux_loss, input_scaling=input_scaling)
    if aux_loss:
        raise ConfigError(f"aux_loss: arch {arch} has no auxiliary head (only deeplabv3 has)")
    build = dpt.build_dpt if arch == "dpt" else partial(smp.build_smp, arch)
    return build(backbone, num_classes=NUM_CLASSES, weights=weights, input_scaling=input_scaling)
