"""Low-rank adapters (LoRA) on an encoder's linear layers, through ``peft``.

Fine-tuning a foundation model's encoder whole on a few thousand images of one desert can
wash out the features that make it hold up in another; low-rank adapters (Hu et al. 2021;
SoMA, CVPR 2025, for domain-generalised segmentation) train a small update beside each frozen
weight instead. ``peft`` injects them in place (no wrapper model, so the network keeps its
shape and its other parts their names); a trained network folds them back into plain layers
(:func:`merge_lora`) for export, where nothing of peft is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from desertmind.errors import ConfigError

#: the linear layers of timm's ViT and ConvNeXt blocks: attention in and out, MLP in and out
#: (fc1_g and fc1_x: the gated MLP of the largest DINOv3 ViTs)
DEFAULT_TARGETS = ("qkv", "attn.proj", "fc1", "fc2", "fc1_g", "fc1_x")


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on the encoder (``rank`` 0: none, the encoder trains whole).

    Args:
        rank: the rank of each adapter's update (``peft``'s ``r``); 0 switches them off.
        alpha: scaling numerator: the update is multiplied by ``alpha / rank``.
        dropout: dropout on the adapters' input.
        targets: names (or dotted name suffixes) of the encoder's linear layers to adapt.
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"model.network.lora.rank={self.rank}: must be >= 0 (0: no adapters)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.network.lora.dropout={self.dropout}: must be in [0, 1)")
        if self.rank and not self.targets:
            raise ConfigError("model.network.lora.targets: name at least one layer to adapt")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def is_lora_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` belongs to an adapter."""
    return "lora_" in name


def add_lora(encoder: nn.Module, options: LoRA) -> None:
    """Inject adapters into ``encoder``'s target layers, in place."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=list(options.targets), bias="none")
    try:
        inject_adapter_in_model(config, encoder)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules()
                         if isinstance(m, nn.Linear)})
        raise ConfigError(f"model.network.lora.targets={list(options.targets)}: {e}; the encoder's "
                          f"linear layers are named {', '.join(linear) or '(none)'}") from e


def merge_lora(encoder: nn.Module) -> None:
    """Fold every adapter of ``encoder`` into its base layer and put the plain layer back."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, m) for name, m in encoder.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent) if parent else encoder, child,
                layer.get_base_layer())


def plain_to_lora(weights: dict, own: dict) -> dict:
    """``weights`` keyed as a network with adapters (``own``, its state dict). Weights of a
    network without adapters go to the base layers and the adapters keep their own fresh
    values (a phase that adds adapters to a previous phase's network); weights that have
    adapters keep them (a phase that continues an adapted one, or self-training's teacher)."""
    base = {key.replace(".base_layer.", "."): key for key in own if ".base_layer." in key}
    moved = {base.get(key, key): value for key, value in weights.items()}
    moved.update({key: value for key, value in own.items()
                  if is_lora_parameter(key) and key not in moved})
    return moved
