"""The optimizer and scheduler of a fit: named parameter groups with their own learning rates,
built for the injected optimizer (LightningCLI's automatic ``--optimizer`` would put every
parameter in one group)."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau

from desertmind.errors import ConfigError
from desertmind.models.network import SegmentationNetwork
from desertmind.training.metrics import followed_monitor
from desertmind.training.schedulers import PolyLR

#: the suffix of a group's exempt half (norms, biases, tokens: no weight decay)
NO_DECAY = "no_decay"


@dataclass(frozen=True)
class ParamGroups:
    """How the network's learning rates differ (``model.param_groups``); checked on creation.

    Args:
        backbone_lr_mult: the encoder's LR relative to the head's (0 freezes its updates).
        layer_decay: layer-wise LR decay of the encoder (BEiT; MMSeg's
            ``LayerDecayOptimizerConstructor``): of an encoder of ``n`` layers in depth order
            (a ViT: the patch embedding, then its L blocks; ``n = L + 1``), layer ``k`` trains
            at LR x ``backbone_lr_mult`` x ``layer_decay ** (n - k)``, so block ``i`` of L at
            ``decay ** (L - i)`` and the head at the full LR. 1 (default): one encoder group.
            Needs an encoder whose depth order is known (timm encoders, ``tu-<name>``).
    """

    backbone_lr_mult: float = 1.0
    layer_decay: float = 1.0

    def __post_init__(self) -> None:
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"model.param_groups.backbone_lr_mult={self.backbone_lr_mult}: "
                              "must be >= 0 (0 freezes the encoder's updates; a negative LR "
                              "would ascend)")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"model.param_groups.layer_decay={self.layer_decay}: must be in "
                              "(0, 1] (1: off; 0.65-0.9 are usual for ViTs)")

    def check(self, network: SegmentationNetwork, name: str) -> None:
        """Refuse layer decay for an encoder (of network ``name``) whose layer order is not
        known."""
        if self.layer_decay != 1 and len(network.encoder_layers()) < 2:
            raise ConfigError(f"model.param_groups.layer_decay={self.layer_decay}: the encoder "
                              f"of {name} has no known layer order; use a timm encoder "
                              "(tu-<name>) or layer_decay 1")

    def groups(self, network: SegmentationNetwork) -> list[dict]:
        """Named groups: backbone (the encoder, with ``lr_mult``; with layer decay one
        ``backbone.<k>`` per encoder layer), head and, if any, aux; each beside its
        ``.no_decay`` half (norms, biases, embeddings and tokens, weight decay 0)."""
        mult, decay = self.backbone_lr_mult, self.layer_decay
        if decay == 1:
            groups = [{"name": "backbone", "params": list(network.encoder.parameters()),
                       "lr_mult": mult}]
        else:
            layers = network.encoder_layers()
            groups = [{"name": f"backbone.{k}", "params": layer,
                       "lr_mult": mult * decay ** (len(layers) - k)}
                      for k, layer in enumerate(layers)]
        groups.append({"name": "head", "params": list(network.head_parameters()),
                       "lr_mult": 1.0})
        aux = list(network.aux_parameters())
        if aux:
            groups.append({"name": "aux", "params": aux, "lr_mult": 1.0})
        return _without_decay(groups, network.no_weight_decay())


def _without_decay(groups: list[dict], exempt: set[int]) -> list[dict]:
    """Each group split in two: its parameters that weight decay applies to, under its own
    name, and those the rule exempts (:meth:`SegmentationNetwork.no_weight_decay`) in
    ``<name>.no_decay`` with ``weight_decay`` 0 and the same LR; empty halves are left out."""
    split = []
    for group in groups:
        decayed = [p for p in group["params"] if id(p) not in exempt]
        kept = [p for p in group["params"] if id(p) in exempt]
        if decayed:
            split.append({**group, "params": decayed})
        if kept:
            split.append({**group, "name": f"{group['name']}.{NO_DECAY}", "params": kept,
                          "weight_decay": 0.0})
    return split


def describe(network: SegmentationNetwork, groups: ParamGroups,
             optimizer: OptimizerCallable) -> str:
    """The optimizer's parameter groups as a markdown table (``fit --print_param_groups``):
    each group's learning rate and weight decay as the optimizer holds them, how many tensors
    and values, and its first tensor's name."""
    opt = configure(network, groups, optimizer, None, None)["optimizer"]
    names = {id(p): n for n, p in network.named_parameters()}
    lines = ["| group | lr | weight decay | tensors | values | first tensor |",
             "|---|---:|---:|---:|---:|---|"]
    for group in opt.param_groups:
        params = group["params"]
        lines.append(f"| {group['name']} | {group['lr']:.3g} | {group.get('weight_decay', 0):g} "
                     f"| {len(params)} | {sum(p.numel() for p in params):,} "
                     f"| {names.get(id(params[0]), '?')} |")
    return "\n".join(lines)


def check_optimizer(optimizer: OptimizerCallable, scheduler: LRSchedulerCallable | None) -> None:
    """Build the optimizer (and scheduler) once over a stand-in parameter, so that a value
    torch refuses (``lr: -1``, a bad beta) is one line before a run folder exists, not a
    traceback from inside ``fit``."""
    try:
        opt = optimizer([torch.nn.Parameter(torch.zeros(1))])
        if scheduler is not None:
            scheduler(opt)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.optimizer / model.scheduler: {e}") from e


def configure(network: SegmentationNetwork, groups: ParamGroups,
              optimizer: OptimizerCallable, scheduler: LRSchedulerCallable | None,
              trainer: L.Trainer | None) -> dict:
    """What ``configure_optimizers`` returns: the optimizer over ``groups`` (each group's LR
    its ``lr_mult`` times the optimizer's), and the scheduler, if any: a poly schedule steps
    per batch, others per epoch, reduce-on-plateau on the metric the checkpoint follows."""
    opt = optimizer(groups.groups(network))
    for group in opt.param_groups:
        group["lr"] = group["lr"] * group["lr_mult"]
    if scheduler is None:
        return {"optimizer": opt}
    sched = scheduler(opt)
    interval = "epoch"
    if isinstance(sched, PolyLR):
        if sched.total_steps is None:
            sched.total_steps = int(trainer.estimated_stepping_batches)
        interval = "step"
    monitor, mode = followed_monitor(trainer)
    if isinstance(sched, ReduceLROnPlateau) and sched.mode != mode:
        raise ConfigError(f"ReduceLROnPlateau follows {monitor}, the checkpoint's monitor, "
                          f"which is {mode}imised: set mode: {mode} in its init_args")
    return {"optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": monitor}}
