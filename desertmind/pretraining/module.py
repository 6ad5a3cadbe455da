"""Self-distillation of a segmentation network's encoder on unlabelled images (DINO, plus
iBOT's masked patches for plain ViTs), with ``lightly``'s losses, heads and EMA update.

A student and a teacher (the student's exponential moving average) see multi-crop views of
the same images; the student learns to match the teacher's output distribution over
``objective.output_dim`` prototypes, for the image as a whole (DINO: the two global crops
against every other crop) and, where the encoder is a timm ``VisionTransformer`` that
``lightly``'s masking wraps, for each masked patch of the global crops (iBOT, as in DINOv2).
Only the encoder and its projection head train; the decoder the network is built with is
never used. The teacher's encoder is what a segmentation phase starts from
(``--model.init_from``): the checkpoint holds it as a plain encoder (adapters merged) under
:data:`~desertmind.models.trained.PRETRAINED_ENCODER_KEY`, with the folders its images
came from (:data:`~desertmind.models.trained.PRETRAINING_KEY`).

From random weights (``weights: none``) the whole encoder trains. From pretrained weights
the encoder continues parameter-efficiently, as ExPLoRA does: low-rank adapters on its
linear layers (``adapters``) and its last ``unfrozen_blocks`` layers unfrozen; the rest
stays as it was trained.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from desertmind.errors import ConfigError
from desertmind.models import registry
from desertmind.models.adapters import LoRA, merge_lora
from desertmind.models.network import SegmentationNetwork
from desertmind.models.registry import Network
from desertmind.models.trained import PRETRAINED_ENCODER_KEY, PRETRAINING_KEY
from desertmind.pretraining.data import UnlabelledDataModule


@dataclass(frozen=True)
class Objective:
    """The self-distillation objective (DINO's defaults where they fit a small dataset).

    Args:
        output_dim: prototypes of the projection head (DINO: 65536 for ImageNet; thousands
            suffice for a few thousand images).
        hidden_dim: width of the head's hidden layers.
        bottleneck_dim: width before the head's last, weight-normalised layer.
        teacher_temp: the teacher's softmax temperature (sharpening).
        warmup_teacher_temp: the teacher's temperature at the first epoch, rising linearly to
            ``teacher_temp`` over ``warmup_teacher_temp_epochs``.
        warmup_teacher_temp_epochs: epochs of that warm-up (0: none).
        student_temp: the student's softmax temperature.
        center_momentum: momentum of the teacher's centre (the running mean of its outputs
            that is subtracted before sharpening; DINO's 0.9, for batches of 1024). Small
            batches collapse DINO whatever it is: see docs/pretrain.md ("Watching it").
        momentum: the teacher's EMA momentum at the first step, rising to 1 on a cosine.
        patch_weight: weight of iBOT's masked-patch loss beside DINO's (plain timm ViTs
            only; 0: DINO alone).
        mask_ratio: the smallest and largest share of a global crop's patches masked.
    """

    output_dim: int = 4096
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum: float = 0.996
    patch_weight: float = 1.0
    mask_ratio: tuple[float, float] = (0.1, 0.5)

    def __post_init__(self) -> None:
        if not 0 <= self.momentum <= 1:
            raise ConfigError(f"model.objective.momentum={self.momentum}: must be in [0, 1]")
        low, high = self.mask_ratio
        if not 0 < low <= high < 1:
            raise ConfigError(f"model.objective.mask_ratio={list(self.mask_ratio)}: need "
                              "0 < smallest <= largest < 1")
        for name in ("output_dim", "hidden_dim", "bottleneck_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.objective.{name}={getattr(self, name)}: must be >= 1")
        object.__setattr__(self, "mask_ratio", tuple(self.mask_ratio))


class PretrainModule(L.LightningModule):
    """Self-distillation of ``network``'s encoder (see the module doc).

    Args:
        network: the segmentation network whose encoder is pretrained (the phases later
            built from it must name the same architecture, backbone and input scaling);
            ``network.lora`` stays 0 here (the pretraining's adapters are ``adapters``).
        objective: the DINO / iBOT settings (:class:`Objective`).
        adapters: the low-rank adapters the encoder trains through (``rank`` 0: none, the
            whole encoder trains); None (the default) chooses: rank 16 for pretrained
            ``network.weights`` (ExPLoRA), none for ``weights: none`` (a random encoder has
            nothing worth keeping frozen).
        unfrozen_blocks: with adapters: how many of the encoder's last layers (its depth
            order, as layer-wise LR decay sees it) train whole beside them (ExPLoRA: 1 or 2).
        optimizer: the optimizer class and its arguments (weight decay spares norms, biases,
            tokens and position embeddings).
    """

    def __init__(self, network: Network = Network(),  # noqa: B008 - frozen: a safe default
                 *, objective: Objective = Objective(),  # noqa: B008 - frozen
                 adapters: LoRA | None = None, unfrozen_blocks: int = 1,
                 optimizer: OptimizerCallable = torch.optim.AdamW) -> None:
        super().__init__()
        network = Network(**network) if isinstance(network, dict) else network
        objective = Objective(**objective) if isinstance(objective, dict) else objective
        adapters = LoRA(**adapters) if isinstance(adapters, dict) else adapters
        if adapters is None:
            adapters = LoRA(rank=16 if network.weights != "none" else 0)
        if network.lora.enabled:
            raise ConfigError("model.network.lora is for the segmentation phases; the "
                              "adapters pretraining continues a pretrained encoder with are "
                              "model.adapters")
        if unfrozen_blocks < 0:
            raise ConfigError(f"model.unfrozen_blocks={unfrozen_blocks}: must be 0 or more")
        self.save_hyperparameters(ignore=["optimizer"])
        self.hparams.update(network=network.as_dict(), objective=asdict(objective),
                            adapters=asdict(adapters))
        self.network, self.objective, self.optimizer = network, objective, optimizer
        self.student: SegmentationNetwork = registry.build(network)
        self.continued = adapters.enabled
        if self.continued:
            self.student.add_lora(adapters)  # freezes the rest of the encoder
            layers = self.student.encoder_layers()
            for layer in layers[len(layers) - unfrozen_blocks:] if unfrozen_blocks else []:
                for p in layer:
                    p.requires_grad = True
        for p in (*self.student.head_parameters(), *self.student.aux_parameters()):
            p.requires_grad = False  # the decoder is not pretrained
        vit = self.student.plain_vit() if objective.patch_weight > 0 else None
        #: whether the patch objective runs (the ViT stays the student's, not a submodule here)
        self.masked = vit is not None
        width = vit.embed_dim if vit is not None else _feature_width(self.student)
        from lightly.loss import DINOLoss, IBOTPatchLoss
        from lightly.models.modules import DINOProjectionHead

        def head() -> nn.Module:
            return DINOProjectionHead(width, objective.hidden_dim, objective.bottleneck_dim,
                                      objective.output_dim)

        self.head = head()
        self.teacher = copy.deepcopy(self.student)
        self.teacher_head = head()  # its weight norm cannot be deep-copied: the same values
        self.teacher_head.load_state_dict(self.head.state_dict())
        for p in (*self.teacher.parameters(), *self.teacher_head.parameters()):
            p.requires_grad = False
        self.dino_loss = DINOLoss(objective.output_dim, objective.warmup_teacher_temp,
                                  objective.teacher_temp, objective.warmup_teacher_temp_epochs,
                                  objective.student_temp, objective.center_momentum)
        self.mask_token: nn.Parameter | None = None
        if vit is not None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
            nn.init.normal_(self.mask_token, std=0.02)
            self.patch_loss = IBOTPatchLoss(objective.output_dim, objective.teacher_temp,
                                            objective.student_temp,
                                            center_momentum=objective.center_momentum)

    @property
    def method(self) -> str:
        """The objective in words, as checkpoints record it."""
        return "dino+ibot" if self.masked else "dino"

    # the two embeddings ----------------------------------------------------------------------
    def _tokens(self, net: SegmentationNetwork, images: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """A plain ViT's output tokens (N, prefix + patches, D), patches replaced by the mask
        token where ``mask`` (N, patches) is True (lightly's masked-ViT wrapper, built over
        ``net``'s own ViT each call: it holds no weights of its own)."""
        from lightly.models.modules import MaskedVisionTransformerTIMM

        vit = net.plain_vit()
        wrapper = MaskedVisionTransformerTIMM(vit, mask_token=self.mask_token,
                                              weight_initialization="skip",
                                              pos_embed_initialization="skip")
        if mask is not None:  # the prefix tokens (class, registers) are never masked
            prefix = mask.new_zeros(mask.shape[0], vit.num_prefix_tokens)
            mask = torch.cat([prefix, mask], dim=1)
        return wrapper.encode(net.pad(net.normalise(images)), mask=mask)

    def _global(self, net: SegmentationNetwork, tokens: Tensor | None,
                images: Tensor) -> Tensor:
        """One vector per image: a ViT's class token (the mean patch token without one), or
        a feature map's global average."""
        if tokens is None:
            return net.features(images).mean(dim=(2, 3))
        vit = net.plain_vit()
        return tokens[:, 0] if vit.cls_token is not None else tokens[
            :, vit.num_prefix_tokens:].mean(1)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        views: list[Tensor] = batch["views"]
        global_views, local_views = views[:2], views[2:]
        masks: list[Tensor | None] = [None, None]
        if self.masked:
            masks = [self._mask(v) for v in global_views]
        with torch.no_grad():
            t_tokens = [self._tokens(self.teacher, v) if self.masked else None
                        for v in global_views]
            t_out = [self.teacher_head(self._global(self.teacher, t, v))
                     for t, v in zip(t_tokens, global_views, strict=True)]
        s_tokens = [self._tokens(self.student, v, m) if self.masked else None
                    for v, m in zip(views, [*masks, *[None] * len(local_views)], strict=True)]
        s_out = [self.head(self._global(self.student, t, v))
                 for t, v in zip(s_tokens, views, strict=True)]
        n = global_views[0].shape[0]
        self.log("train/teacher_entropy", self._teacher_entropy(t_out), on_step=True,
                 on_epoch=True, batch_size=n)
        loss = self.dino_loss(t_out, s_out, epoch=self.current_epoch)
        self.log("train/dino_loss", loss, on_step=True, on_epoch=True, batch_size=n)
        if self.masked:
            prefix = self.student.plain_vit().num_prefix_tokens
            patch = torch.stack([
                self.patch_loss(self.teacher_head(t[:, prefix:][m]),
                                self.head(s[:, prefix:][m]), m.view(n, *self._grid(v)))
                for t, s, m, v in zip(t_tokens, s_tokens[:2], masks, global_views, strict=True)
            ]).mean()
            self.log("train/patch_loss", patch, on_step=True, on_epoch=True, batch_size=n)
            loss = loss + self.objective.patch_weight * patch
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=n)
        return loss

    @torch.no_grad()
    def _teacher_entropy(self, t_out: list[Tensor]) -> Tensor:
        """Mean entropy of the teacher's centred, sharpened distribution: the collapse monitor
        (near log(output_dim): uniform; near 0: one prototype for every image; DINO's
        loss is this entropy plus what the student still differs by)."""
        loss = self.dino_loss
        temp = loss.teacher_temp_schedule[self.current_epoch] if (
            self.current_epoch < loss.warmup_teacher_temp_epochs) else loss.teacher_temp
        p = ((torch.stack(t_out) - loss.center) / temp).softmax(-1)
        return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()

    def _grid(self, images: Tensor) -> tuple[int, int]:
        """The token grid (rows, columns) of images padded to whole patches."""
        size = self.student.size_multiple
        h, w = images.shape[-2:]
        return -(-h // size), -(-w // size)

    def _mask(self, images: Tensor) -> Tensor:
        """DINOv2's random block mask (lightly), (N, patches), for half of the images."""
        from lightly.models.utils import random_block_mask

        low, high = self.objective.mask_ratio
        grid = self._grid(images)
        least = int(grid[0] * grid[1] * low)  # the fewest patches a masked image loses
        if least < 1:
            raise ConfigError(f"masked patches: a {images.shape[-1]} px crop is a {grid[0]}x"
                              f"{grid[1]} token grid, too small to mask "
                              f"{low:g} of it; raise data.crop_size or set "
                              "model.objective.patch_weight 0")
        mask = random_block_mask((images.shape[0], *grid), min_image_mask_ratio=low,
                                 max_image_mask_ratio=high,
                                 min_num_masks_per_block=min(4, least),  # DINOv2: 4
                                 device=images.device)
        return mask.flatten(1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The teacher moves toward the student just updated: ``t <- m t + (1 - m) s``, ``m``
        rising from ``objective.momentum`` to 1 on a cosine over the run (lightly)."""
        from lightly.models.utils import update_momentum

        m = self.momentum_now()
        update_momentum(self.student, self.teacher, m)
        update_momentum(self.head, self.teacher_head, m)

    def momentum_now(self) -> float:
        """The EMA momentum of the step just taken."""
        from lightly.utils.scheduler import cosine_schedule

        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return cosine_schedule(min(self.global_step, total), total, self.objective.momentum, 1.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        exempt = self.student.no_weight_decay() | {id(p) for p in self.head.parameters()
                                                   if p.ndim <= 1}
        trained = [p for p in (*self.student.parameters(), *self.head.parameters(),
                               *([self.mask_token] if self.mask_token is not None else []))
                   if p.requires_grad]
        decay = [p for p in trained if id(p) not in exempt and p.ndim > 1]
        spared = [p for p in trained if id(p) in exempt or p.ndim <= 1]
        return self.optimizer([{"params": decay},
                               {"params": spared, "weight_decay": 0.0}])

    # what a segmentation phase starts from ---------------------------------------------------
    def encoder_state(self) -> dict[str, Tensor]:
        """The teacher's encoder as plain layers (adapters merged), on the CPU."""
        encoder = self.teacher.encoder
        if self.continued:
            encoder = copy.deepcopy(encoder)
            merge_lora(encoder)
        return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(UnlabelledDataModule.__qualname__) or {}
        checkpoint[PRETRAINED_ENCODER_KEY] = {
            "network": {k: v for k, v in self.network.as_dict().items()
                        if k in ("arch", "backbone", "input_scaling")},
            "state_dict": self.encoder_state()}
        checkpoint[PRETRAINING_KEY] = {
            "method": self.method, "folders": list(state.get("folders", [])),
            "steps": int(self.global_step), "weights": self.network.weights,
            "adapters": self.hparams.adapters["rank"] if self.continued else 0}


def _feature_width(network: SegmentationNetwork) -> int:
    """Channels of the encoder's deepest feature map (one small forward in eval mode)."""
    was = network.training
    network.eval()
    with torch.no_grad():
        width = network.features(torch.zeros(1, 3, 64, 64)).shape[1]
    network.train(was)
    return int(width)
