"""Architectures from segmentation_models_pytorch (SMP), encoders from SMP and timm.

SMP builds the networks and loads pretrained encoder weights through its own code path (the
Hugging Face Hub for SMP encoders, timm for ``tu-`` encoders); desertmind only wraps the result
in the network contract and turns an offline failure into a message that says what to fetch
and where to put it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from itertools import chain

import segmentation_models_pytorch as smp
import torch
from torch import nn

from desertmind.errors import ConfigError, WeightsUnavailableError
from desertmind.models.network import Scaling, SegmentationNetwork

#: desertmind name -> SMP class name
ARCHITECTURES = {
    "deeplabv3plus": "DeepLabV3Plus",
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
}
TIMM_PREFIX = "tu-"


#: architectures that refuse small inputs: the smallest height and width they take (PAN's
#: feature pyramid attention pools its stride-32 map three times: 64x64 fails, 128x128 works)
MIN_SIZES: dict[type, int] = {smp.PAN: 128}


class SMPNetwork(SegmentationNetwork):
    """An SMP ``SegmentationModel`` under the network contract.

    Encoder: SMP's ``encoder``; head: its ``decoder`` and ``segmentation_head``. SMP networks
    have no auxiliary segmentation head. Inputs are padded to the encoder's output stride when
    the architecture requires it (most do; UNet does not).
    """

    def __init__(self, net: smp.base.SegmentationModel, *,
                 input_scaling: Scaling = "imagenet") -> None:
        stride = int(net.encoder.output_stride)
        super().__init__(size_multiple=stride if net.requires_divisible_input_shape else 1,
                         input_scaling=input_scaling, min_size=MIN_SIZES.get(type(net), 1))
        self.net = net

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.net.decoder.parameters(), self.net.segmentation_head.parameters())

    def forward_padded(self, images: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, None]:
        return self.net(images), None


def encoder_names() -> tuple[str, ...]:
    """SMP's own encoder names; any timm model also works as ``tu-<timm name>``."""
    return tuple(smp.encoders.encoders)


def encoder_weights(backbone: str) -> tuple[str, ...]:
    """The ``weights`` values an encoder accepts: ``none`` and its pretrained variants."""
    if backbone.startswith(TIMM_PREFIX):
        return ("none", "imagenet")  # timm: the model name's default pretrained tag
    return ("none", *smp.encoders.encoders[backbone]["pretrained_settings"])


def check_backbone(arch: str, backbone: str) -> None:
    """Refuse an encoder SMP cannot build, listing the valid names."""
    if backbone.startswith(TIMM_PREFIX):
        import timm

        if not timm.is_model(backbone[len(TIMM_PREFIX):]):
            raise ConfigError(f"unknown timm model {backbone[len(TIMM_PREFIX):]!r} in backbone "
                              f"{backbone!r}; see timm.list_models() for valid names")
        return
    if backbone not in smp.encoders.encoders:
        raise ConfigError(
            f"unknown backbone {backbone!r} for arch {arch}; choose one of "
            f"{', '.join(encoder_names())}, or any timm model as tu-<name> "
            "(e.g. tu-convnext_tiny)")


def _download_command(backbone: str, weights: str) -> str:
    """The command that fetches the weights SMP or timm would read from the Hugging Face Hub."""
    if backbone.startswith(TIMM_PREFIX):
        import timm

        cfg = timm.models.get_pretrained_cfg(backbone[len(TIMM_PREFIX):])
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        return f"hf download {repo}" if repo else f"hf download timm/{backbone[3:]}"
    settings = smp.encoders.encoders[backbone]["pretrained_settings"][weights]
    return f"hf download {settings['repo_id']} --revision {settings['revision']}"


def build_smp(arch: str, backbone: str, *, num_classes: int, weights: str,
              input_scaling: Scaling) -> SMPNetwork:
    """Build ``arch`` with encoder ``backbone``; ``weights`` is ``none`` or a pretrained name."""
    cls = getattr(smp, ARCHITECTURES[arch])
    if weights == "none":
        encoder_weights_arg: str | bool | None = None
    elif backbone.startswith(TIMM_PREFIX):
        encoder_weights_arg = True
    else:
        encoder_weights_arg = weights
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*timm- . encoders are deprecated.*")
            net = cls(encoder_name=backbone, encoder_weights=encoder_weights_arg,
                      classes=num_classes)
    except Exception as e:  # noqa: BLE001 - the Hub and timm raise many types; re-raised below
        if weights == "none":
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsUnavailableError(
            f"cannot load the {weights} encoder weights for {arch} / {backbone} "
            f"({type(e).__name__}: {e}). On a machine with network access run "
            f"`{_download_command(backbone, weights)}` and copy its Hugging Face cache folder "
            f"to {HF_HUB_CACHE} here (the folder follows $HF_HOME / $HF_HUB_CACHE), or use "
            "weights: none."
        ) from e
    return SMPNetwork(net, input_scaling=input_scaling)
