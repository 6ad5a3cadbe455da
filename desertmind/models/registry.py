"""Networks by name: ``model.network`` as a config gives it (:class:`Network`), checked and
built in one place (:func:`build`): the module, a trained model read from its checkpoint and
the benchmarks all get their network from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

from desertmind.data.classes import NUM_CLASSES
from desertmind.errors import ConfigError, check_choice
from desertmind.models import deeplabv3, dpt, smp
from desertmind.models.adapters import LoRA
from desertmind.models.network import SCALINGS, Scaling, SegmentationNetwork, set_bn_momentum

DEFAULT_ARCH = "deeplabv3"
#: every architecture name: torchvision's DeepLabV3, then SMP's
ARCHITECTURES: tuple[str, ...] = (DEFAULT_ARCH, *smp.ARCHITECTURES)
#: architectures added with :func:`register` (a plug-in's, or the tests' tiny network):
#: name -> ``builder(backbone, aux_loss=..., input_scaling=...)``
REGISTERED: dict[str, Callable[..., SegmentationNetwork]] = {}


def architectures() -> tuple[str, ...]:
    """Every architecture name :func:`build` accepts."""
    return (*ARCHITECTURES, *REGISTERED)


def register(arch: str, builder: Callable[..., SegmentationNetwork]) -> None:
    """Make ``arch`` buildable by :func:`build` (its backbone and weights are the builder's to
    check): ``builder(backbone, aux_loss=bool, input_scaling=str)`` returns the network."""
    if arch in ARCHITECTURES:
        raise ConfigError(f"architecture {arch!r} is built in; register another name")
    REGISTERED[arch] = builder


@dataclass(frozen=True)
class Network:
    """Which network a run trains (``model.network``); part of the trained model, so what a
    checkpoint says is always what loads it.

    Args:
        arch: ``deeplabv3`` (torchvision) or an SMP architecture (``deeplabv3plus``, ``unet``,
            ``unetplusplus``, ``fpn``, ``upernet``, ``segformer``, ``dpt``, ...).
        backbone: for deeplabv3 ``mobilenet_v3_large``, ``resnet50`` or ``resnet101``; for SMP
            architectures any SMP encoder (``resnet18``, ``mit_b0``..``mit_b5``, ...) or
            ``tu-<timm model>``.
        weights: ``none``; ``imagenet`` (encoder); for deeplabv3 also ``coco`` (whole model
            but the last layers); for SMP encoders any of their pretrained variants.
        input_scaling: how RGB becomes the network's input: ``imagenet`` (mean/std, what
            pretrained encoders expect) or ``unit`` (/ 255 only, the study's).
        aux_weight: weight of torchvision's auxiliary FCN head's loss (deeplabv3 only);
            0 builds no aux head.
        lora: low-rank adapters on the encoder's linear layers
            (:class:`~desertmind.models.adapters.LoRA`; ``rank`` 0: none); with them only the
            adapters of the encoder train.
        bn_momentum: override BatchNorm momentum (torchvision's MobileNetV3 uses 0.01, too
            slow for short runs from random weights); None keeps the model's.
        freeze_bn: keep every BatchNorm layer in eval mode while training (running statistics
            frozen, affine parameters still trained), as the study's phase 3 did.
    """

    arch: str = DEFAULT_ARCH
    backbone: str = "mobilenet_v3_large"
    weights: str = "none"
    input_scaling: Scaling = "imagenet"
    aux_weight: float = 0.0
    lora: LoRA = field(default_factory=LoRA)
    bn_momentum: float | None = None
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # from saved hyperparameters
            object.__setattr__(self, "lora", LoRA(**self.lora))
        check_choice("model.network.arch", self.arch, architectures())
        check_choice("model.network.input_scaling", self.input_scaling, SCALINGS)
        if self.aux_weight < 0:
            raise ConfigError(f"model.network.aux_weight={self.aux_weight}: must be >= 0 (0: "
                              "no aux head)")

    def as_dict(self) -> dict:
        """Plain values, as checkpoints keep them (read with ``weights_only=True``)."""
        return asdict(self)


def build(network: Network) -> SegmentationNetwork:
    """The network ``network`` describes, its adapters, BatchNorm momentum and freezing set."""
    if network.arch in REGISTERED:
        net = REGISTERED[network.arch](network.backbone, aux_loss=network.aux_weight > 0,
                                       input_scaling=network.input_scaling)
    else:
        net = build_network(network.arch, network.backbone, weights=network.weights,
                            aux_loss=network.aux_weight > 0,
                            input_scaling=network.input_scaling)
    if network.bn_momentum is not None:
        set_bn_momentum(net, network.bn_momentum)
    net.set_batchnorm_frozen(network.freeze_bn)
    if network.lora.enabled:
        net.add_lora(network.lora)
    return net


def weights_choices(arch: str, backbone: str) -> tuple[str, ...]:
    """The ``weights`` values ``arch`` with ``backbone`` accepts."""
    return deeplabv3.WEIGHTS if arch == DEFAULT_ARCH else smp.encoder_weights(backbone)


def check_network(arch: str, backbone: str, weights: str) -> None:
    """Refuse an unknown architecture, backbone or weights name, listing the valid ones."""
    check_choice("model.network.arch", arch, ARCHITECTURES)
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
    check_choice("model.network.input_scaling", input_scaling, SCALINGS)
    if arch == DEFAULT_ARCH:
        return deeplabv3.build_deeplabv3(backbone, num_classes=NUM_CLASSES, weights=weights,
                                         aux_loss=aux_loss, input_scaling=input_scaling)
    if aux_loss:
        raise ConfigError(f"aux_loss: arch {arch} has no auxiliary head (only deeplabv3 has)")
    build = dpt.build_dpt if arch == "dpt" else partial(smp.build_smp, arch)
    return build(backbone, num_classes=NUM_CLASSES, weights=weights, input_scaling=input_scaling)
