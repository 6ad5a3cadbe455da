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
    "dpt": "DPT",  # plain ViTs only (models.dpt makes it work at any patch size and input)
}
TIMM_PREFIX = "tu-"
#: timm modules whose models are plain (single-scale) ViTs: only DPT takes them
PLAIN_VIT_MODULES = ("vision_transformer", "eva", "beit", "deit", "vision_transformer_relpos")
#: the ``weights`` value meaning a timm model's default tag, when that tag is ImageNet's
IMAGENET = "imagenet"


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

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(images)[-1]  # SMP encoders: every stage's map, deepest last

    def _timm_model(self) -> nn.Module | None:
        """The timm model inside a ``tu-`` encoder (None for SMP's own encoders)."""
        model = getattr(self.net.encoder, "model", None)
        return model if hasattr(model, "set_grad_checkpointing") else None

    def encoder_layers(self) -> list[list[nn.Parameter]]:
        """A timm encoder's layers as timm groups them for layer-wise decay (a ViT: the patch
        embedding and tokens, then each block, the final norm with the last block), or for
        timm's multi-scale feature wrappers, their stem and stages in order (the wrapper lists a
        stem's conv and its norm apart: ConvNeXt's stem_0 / stem_1, ResNet's conv1 / bn1; a
        child holding only norm parameters joins the layer before it)."""
        model = self._timm_model()
        if model is None:
            return super().encoder_layers()
        if hasattr(model, "group_matcher"):
            from timm.models import group_parameters

            groups = group_parameters(model, model.group_matcher(coarse=False))
            names = [groups[k] for k in sorted(groups)]
        else:  # the wrapper's children in order; a norm belongs to the layer before it
            names = []
            for child, module in model.named_children():
                params = list(module.named_parameters())
                own = [f"{child}.{n}" for n, _ in params]
                if names and params and all(p.ndim <= 1 for _, p in params):
                    names[-1] += own  # a stem's norm (stem_1 of ConvNeXt, bn1 of ResNet)
                else:
                    names.append(own)
        params = dict(model.named_parameters())
        layers = [[params[n] for n in group] for group in names if group]
        covered = {id(p) for layer in layers for p in layer}
        layers[-1].extend(p for p in self.encoder.parameters() if id(p) not in covered)
        return layers

    def encoder_no_weight_decay(self) -> set[str]:
        """timm's own list (``no_weight_decay()``: a ViT's pos_embed, cls and register
        tokens), as names in the encoder."""
        model = self._timm_model()
        if model is None or not hasattr(model, "no_weight_decay"):
            return set()
        prefix = next(n for n, m in self.encoder.named_modules() if m is model)
        return {f"{prefix}.{n}" if prefix else n for n in model.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        model = self._timm_model()
        if model is None:
            return super().set_grad_checkpointing(enable)
        model.set_grad_checkpointing(enable)


def encoder_names() -> tuple[str, ...]:
    """SMP's own encoder names; any timm model also works as ``tu-<timm name>``."""
    return tuple(smp.encoders.encoders)


def timm_name(backbone: str) -> str | None:
    """The timm model name of a ``tu-`` backbone, None for SMP's own encoders."""
    return backbone[len(TIMM_PREFIX):] if backbone.startswith(TIMM_PREFIX) else None


def timm_tags(model: str) -> tuple[str, ...]:
    """The pretrained tags timm has for ``model`` (``lvd1689m``, ``dinov3_lvd1689m``,
    ``fb_in1k``, ...), the default first."""
    import timm

    default = timm.models.get_pretrained_cfg(model)
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{model}.*")]
    first = [default.tag] if default is not None and default.tag in tags else []
    return (*first, *(t for t in tags if t not in first))


def _is_imagenet(tag: str) -> bool:
    return any(part in tag for part in ("in1k", "in12k", "in21k", "in22k"))


def timm_tag(model: str, weights: str) -> str:
    """The timm tag ``weights`` names: itself, or for ``imagenet`` the default tag."""
    return timm_tags(model)[0] if weights == IMAGENET else weights


def encoder_weights(backbone: str) -> tuple[str, ...]:
    """The ``weights`` values an encoder accepts: ``none`` and its pretrained variants: for a
    timm encoder each of timm's tags, and ``imagenet`` for the default tag when it is an
    ImageNet one (as before tags could be named)."""
    model = timm_name(backbone)
    if model is not None:
        tags = timm_tags(model)
        alias = (IMAGENET,) if tags and _is_imagenet(tags[0]) and IMAGENET not in tags else ()
        return ("none", *alias, *tags)
    return ("none", *smp.encoders.encoders[backbone]["pretrained_settings"])


def is_plain_vit(model: str) -> bool:
    """Whether timm's ``model`` is a plain ViT (one token grid, no feature pyramid)."""
    from timm.models import is_model_in_modules

    return is_model_in_modules(model, PLAIN_VIT_MODULES)


def check_backbone(arch: str, backbone: str) -> None:
    """Refuse an encoder SMP cannot build with ``arch``, listing the valid names."""
    model = timm_name(backbone)
    if model is not None:
        import timm

        if not timm.is_model(model):
            raise ConfigError(f"unknown timm model {model!r} in backbone {backbone!r}; see "
                              "timm.list_models() for valid names")
        if "." in model:
            raise ConfigError(f"backbone {backbone!r}: give the pretrained tag as "
                              f"model.network.weights (backbone tu-{model.split('.')[0]}, weights "
                              f"{model.split('.', 1)[1]})")
        if arch == "dpt" and not is_plain_vit(model):
            raise ConfigError(f"arch dpt takes a plain ViT encoder (e.g. "
                              f"tu-vit_small_patch16_dinov3, tu-vit_small_patch14_reg4_dinov2), "
                              f"not {backbone}; a CNN encoder such as {backbone} works with "
                              "upernet, fpn, deeplabv3plus or unet")
        if arch != "dpt" and is_plain_vit(model):
            raise ConfigError(f"{backbone} is a plain ViT (one token grid, no feature pyramid), "
                              f"which {arch} cannot use: use --model.network.arch dpt")
        return
    if arch == "dpt":
        raise ConfigError(f"arch dpt takes a timm ViT encoder as tu-<name> (e.g. "
                          f"tu-vit_small_patch16_dinov3), not {backbone!r}")
    if backbone not in smp.encoders.encoders:
        raise ConfigError(
            f"unknown backbone {backbone!r} for arch {arch}; choose one of "
            f"{', '.join(encoder_names())}, or any timm model as tu-<name> "
            "(e.g. tu-convnext_tiny)")


def _timm_cfg(backbone: str, weights: str):
    """timm's pretrained config of a timm encoder's ``weights`` (None for SMP's encoders)."""
    model = timm_name(backbone)
    if model is None or weights == "none":
        return None
    import timm

    return timm.models.get_pretrained_cfg(f"{model}.{timm_tag(model, weights)}")


def weights_source(backbone: str, weights: str) -> tuple[str, str]:
    """(Hugging Face repository, command that fetches it) of pretrained ``weights``."""
    model = timm_name(backbone)
    if model is not None:
        repo = (getattr(_timm_cfg(backbone, weights), "hf_hub_id", None)
                or f"timm/{model}.{timm_tag(model, weights)}")
        return repo, f"hf download {repo}"
    settings = smp.encoders.encoders[backbone]["pretrained_settings"][weights]
    repo = settings["repo_id"]
    return repo, f"hf download {repo} --revision {settings['revision']}"


def weights_licence(backbone: str, weights: str) -> str | None:
    """The licence timm records for a timm encoder's pretrained ``weights``, if any."""
    return getattr(_timm_cfg(backbone, weights), "license", None)


def create_smp(arch: str, backbone: str, *, num_classes: int, weights: str,
               **kwargs: object) -> smp.base.SegmentationModel:
    """SMP's ``arch`` with encoder ``backbone``; ``weights`` is ``none`` or a pretrained name
    (an SMP variant, or a timm tag); ``kwargs`` go to SMP's class. Pretrained weights that
    cannot be loaded stop with what to fetch and where to put it."""
    cls = getattr(smp, ARCHITECTURES[arch])
    model = timm_name(backbone)
    name = backbone
    if weights == "none":
        encoder_weights_arg: str | bool | None = None
    elif model is not None:
        name, encoder_weights_arg = f"{TIMM_PREFIX}{model}.{timm_tag(model, weights)}", True
    else:
        encoder_weights_arg = weights
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*timm- . encoders are deprecated.*")
            return cls(encoder_name=name, encoder_weights=encoder_weights_arg,
                       classes=num_classes, **kwargs)
    except Exception as e:  # noqa: BLE001 - the Hub and timm raise many types; re-raised below
        if weights == "none":
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        repo, command = weights_source(backbone, weights)
        licence = weights_licence(backbone, weights)
        gated = (" DINOv3 weights are under Meta's DINOv3 licence: if the repository asks, "
                 f"accept it on https://huggingface.co/{repo} and log in (`hf auth login`) "
                 "before downloading." if licence == "dinov3-license" else "")
        raise WeightsUnavailableError(
            f"cannot load the {weights} encoder weights for {arch} / {backbone} from the "
            f"Hugging Face repository {repo} ({type(e).__name__}: {e}). On a machine with "
            f"network access run `{command}` and copy its Hugging Face cache folder to "
            f"{HF_HUB_CACHE} here (the folder follows $HF_HOME / $HF_HUB_CACHE), or use "
            f"weights: none.{gated}"
        ) from e


def build_smp(arch: str, backbone: str, *, num_classes: int, weights: str,
              input_scaling: Scaling) -> SMPNetwork:
    """SMP's ``arch`` with encoder ``backbone`` under the network contract."""
    net = create_smp(arch, backbone, num_classes=num_classes, weights=weights)
    return SMPNetwork(net, input_scaling=input_scaling)
