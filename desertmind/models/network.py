"""The network contract: what the rest of desertmind may assume about a segmentation network.

Every architecture is wrapped in a :class:`SegmentationNetwork`. The LightningModule, the
backbone freezing callback, export, the viewer, dashboards and benchmarks use only this
contract, never an architecture's internals, so adding an architecture touches
:mod:`desertmind.models` only.

The network owns what belongs to the trained model rather than to the task: how RGB becomes
its input (``input_scaling``, part of what the weights were trained on, so no caller can
forget or double it) and which of its parts are frozen (its ``train()`` keeps frozen
BatchNorm layers in eval mode, so no per-batch hook has to put them back).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from desertmind.errors import ConfigError, check_choice
from desertmind.models.adapters import LoRA, add_lora, is_lora_parameter, merge_lora

#: how RGB 0-255 becomes the network's input: ImageNet mean/std, or only / 255 (the study's)
Scaling = Literal["imagenet", "unit"]
SCALINGS: tuple[str, ...] = get_args(Scaling)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaling_constants(scaling: str = "imagenet") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (3,), in 0-255 units, that map RGB 0-255 to the network's input:
    ImageNet's, or for ``unit`` 0 and 255 (a division by 255 only)."""
    check_choice("input scaling (model.network.input_scaling)", scaling, SCALINGS)
    if scaling == "unit":
        return torch.zeros(3), torch.full((3,), 255.0)
    return torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255


#: the endings of parameter names that are embeddings or tokens (timm, torchvision, HF names)
_EXEMPT_SUFFIXES = ("token", "tokens", "pos_embed", "position_embeddings",
                    "relative_position_bias_table")


class SegmentationNetwork(nn.Module, ABC):
    """A network from RGB images in 0-255 (float, N x 3 x H x W) to class logits (N, C, H, W).

    Subclasses implement :meth:`forward_padded` for normalised inputs whose height and width
    are multiples of :attr:`size_multiple`, and say which parameters are the encoder, the head
    and the optional auxiliary head. This base class does the rest in one place:

    - scaling: ``(x - mean) / std`` with non-persistent buffers from ``input_scaling`` (not in
      the state dict: a checkpoint rebuilds them from its saved ``input_scaling``, so
      checkpoints from before the network owned them load unchanged);
    - any input size: the normalised images are padded at the bottom and right to the multiple
      (and at least to ``min_size``) with zeros (the mean colour) and the logits cropped back,
      so masks and metrics never see the padding;
    - freezing (:meth:`set_encoder_frozen`, :meth:`set_batchnorm_frozen`) that survives
      Lightning's ``model.train()`` after every validation;
    - low-rank adapters (:meth:`add_lora`): with them, only the adapters of the encoder ever
      train, whatever unfreezes it, and :meth:`merge_lora` folds them back into plain layers.

    What depends on the encoder's kind (the depth order of its layers for layer-wise LR decay,
    gradient checkpointing) is the subclass's: :meth:`encoder_layers`,
    :meth:`set_grad_checkpointing`.

    Two BatchNorm switches, because they are two different rules of the studies: a frozen
    encoder keeps its own BatchNorm statistics (SMP's ``freeze_encoder``; ``train_bn`` lets
    them train while the weights stay), and the study's phase 3 froze every BatchNorm of the
    network for the whole phase while all weights trained (``model.network.freeze_bn``).
    """

    def __init__(self, size_multiple: int = 1, *, input_scaling: Scaling = "imagenet",
                 min_size: int = 1) -> None:
        super().__init__()
        #: height and width the wrapped network needs its input to be divisible by (1: any)
        self.size_multiple = size_multiple
        #: the smallest height and width it takes (smaller inputs are padded up to it)
        self.min_size = min_size
        self.input_scaling = input_scaling
        mean, std = scaling_constants(input_scaling)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        #: NHWC memory format for the input (faster convolutions on recent GPUs)
        self.channels_last = False
        self._encoder_frozen = False
        self._encoder_bn_trains = False
        self._bn_frozen = False
        #: the low-rank adapters in the encoder (None: none)
        self.lora: LoRA | None = None

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
        """(logits, aux logits or None) at the input's size, for a normalised input of a valid
        size; the aux head runs only when ``with_aux`` is True (training)."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest feature map (N, C, h, w) of a normalised input of a valid
        size: what self-supervised pretraining trains (:mod:`desertmind.pretraining`)."""
        raise ConfigError(f"{type(self).__name__} does not say which output of its encoder "
                          "is its feature map (forward_features), so its encoder cannot be "
                          "pretrained")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest feature map (N, C, h, w) for RGB 0-255 of any size (padded as
        :meth:`forward_with_aux` pads)."""
        return self.forward_features(self.pad(self.normalise(images)))

    def plain_vit(self) -> nn.Module | None:
        """The encoder's timm ``VisionTransformer`` when it is one (a plain ViT that masked
        image modelling can mask token by token), else None."""
        return None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised input padded at the bottom and right to :attr:`size_multiple` and
        :attr:`min_size` with zeros (the mean colour)."""
        m = self.size_multiple
        h, w = x.shape[-2:]
        # always pad (by zero where nothing is needed) so traced exports stay shape-dynamic
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        if self.min_size > 1:
            pad_h, pad_w = (max(p, self.min_size - n) for p, n in ((pad_h, h), (pad_w, w)))
        return F.pad(x, (0, pad_w, 0, pad_h))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-255 (N, 3, H, W) -> the input the weights were trained on."""
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_with_aux(self, images: torch.Tensor,
                         with_aux: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, aux logits or None) at the input's size, for RGB 0-255 of any size."""
        x = self.normalise(images)
        if self.size_multiple == 1 and self.min_size == 1:
            return self.forward_padded(x, with_aux)
        h, w = x.shape[-2:]
        logits, aux = self.forward_padded(self.pad(x), with_aux)
        return logits[..., :h, :w], None if aux is None else aux[..., :h, :w]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) for RGB 0-255 images (N, 3, H, W) of any size; no aux head."""
        return self.forward_with_aux(images, with_aux=False)[0]

    def set_encoder_frozen(self, frozen: bool, *, train_bn: bool = False,
                           keep_requires_grad: bool = False) -> None:
        """Freeze or unfreeze the encoder: no gradients (``requires_grad=False``) and, unless
        ``train_bn``, its BatchNorm statistics held. ``keep_requires_grad`` leaves the flags
        alone for DDP, which fixes at wrap time which parameters it synchronises; the caller
        then drops the encoder's gradients itself."""
        self._encoder_frozen, self._encoder_bn_trains = frozen, train_bn
        if not keep_requires_grad:
            for name, p in self.encoder.named_parameters():
                p.requires_grad = not frozen and (self.lora is None or is_lora_parameter(name))
        self.train(self.training)

    def encoder_layers(self) -> list[list[nn.Parameter]]:
        """The encoder's parameters by depth, input side first (for layer-wise LR decay);
        one layer when the encoder's depth order is not known."""
        return [list(self.encoder.parameters())]

    def no_weight_decay(self) -> set[int]:
        """``id``s of the parameters that weight decay must not touch, by the rule the recipes
        cite (BEiT, MMSeg's layer-decay constructor, timm's optimizer factory): every parameter
        of rank <= 1 (norm weights, biases, LayerScale gammas), position embeddings, and
        cls / register / mask tokens. Decaying them pulls a norm's scale or a token toward 0,
        which no prior asks for; :meth:`encoder_no_weight_decay` names the encoder's own."""
        named = set(self.encoder_no_weight_decay())
        exempt = {id(p) for p in self.parameters() if p.ndim <= 1}
        exempt |= {id(p) for n, p in self.encoder.named_parameters()
                   if n in named or n.rsplit(".", 1)[-1].endswith(_EXEMPT_SUFFIXES)}
        return exempt

    def encoder_no_weight_decay(self) -> set[str]:
        """Names (in ``self.encoder``) of parameters its model exempts from weight decay
        beyond the rank and name rule (timm models list theirs); none by default."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's activations in the backward pass instead of keeping them."""
        if enable:
            raise ConfigError(f"gradient checkpointing: the encoder of {type(self).__name__} "
                              "does not offer it (timm encoders, tu-<name>, do)")

    def add_lora(self, options: LoRA) -> None:
        """Low-rank adapters on the encoder's linear layers (``options.targets``); the rest of
        the encoder is frozen for good (see :meth:`set_encoder_frozen`)."""
        add_lora(self.encoder, options)
        self.lora = options
        self.set_encoder_frozen(self._encoder_frozen, train_bn=self._encoder_bn_trains)

    def merge_lora(self) -> SegmentationNetwork:
        """Fold the adapters into the layers they adapt: plain layers, the same outputs, no
        peft needed (export). The network can no longer train its adapters."""
        if self.lora is not None:
            merge_lora(self.encoder)
            self.lora = None
        return self

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def set_batchnorm_frozen(self, frozen: bool) -> None:
        """Keep every BatchNorm layer in eval mode while training (running statistics held,
        affine parameters still trained)."""
        self._bn_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationNetwork:
        super().train(mode)
        if mode:
            held = (batchnorms(self) if self._bn_frozen else
                    batchnorms(self.encoder) if self._encoder_frozen
                    and not self._encoder_bn_trains else {})
            for bn in held.values():
                bn.eval()
        return self


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every BatchNorm's running-stat momentum (torchvision's MobileNetV3 uses 0.01)."""
    for m in batchnorms(model).values():
        m.momentum = momentum


def batchnorms(module: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer inside ``module``, by name (the one enumeration: freezing,
    momentum and test-time adaptation all use it)."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}
