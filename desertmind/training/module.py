"""LightningModule training any network of the registry for the ten off-road classes."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from desertmind.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, class_table
from desertmind.data.transforms import SCALINGS, Scaling, normalize
from desertmind.errors import (
    ConfigError,
    NonFiniteLossError,
    NonFiniteStateError,
    check_choice,
)
from desertmind.inference.tta import check_window, predict_probs, restrict
from desertmind.models.network import set_bn_momentum
from desertmind.models.registry import DEFAULT_ARCH, Arch, build_network
from desertmind.training.chain_logger import set_step_offset
from desertmind.training.checkpoints import (
    CLASS_TABLE_KEY,
    STEP_OFFSET_KEY,
    STEP_SEED_KEY,
    load_weights,
)
from desertmind.training.losses import build_loss, parse_loss
from desertmind.training.metrics import MONITOR, SegmentationMetrics
from desertmind.training.schedulers import PolyLR
from desertmind.training.self_training import PseudoLabeler, pseudo_label_loss


class SegmentationModule(L.LightningModule):
    """Training, evaluation and prediction of one network; arguments mirror the config.

    The network is built by name (:func:`~desertmind.models.build_network`) and used only
    through the :class:`~desertmind.models.SegmentationNetwork` contract.

    Hooks:
        setup: for ``fit`` only, builds the loss (class weights come from the data module's
            train split) and loads ``init_from``'s weights, whose last step becomes this run's
            TensorBoard step offset (:mod:`desertmind.training.chain_logger`); a
            ``--ckpt_path`` resume is restored after this and wins. Evaluating needs neither:
            ``validate`` and ``test`` outside ``fit`` log the cross-entropy as
            ``<stage>/loss``.
        training_step / validation_step / test_step: loss (plus aux loss), and for evaluation
            the per-stage metric objects, accumulated over the whole epoch.
        normalize: turns uint8 images into the network's input (``input_scaling``); the data
            module calls it on the device, so the host-to-device copy stays uint8.
        train: with ``freeze_bn``, puts the BatchNorm layers back in eval mode whenever
            Lightning switches the model to training.
        on_train_batch_start: seeds torch's RNG (dropout) from the run's step seed, the epoch
            and the batch, so a training step draws the same whether the run went straight
            through or was resumed from a checkpoint (the data side is
            :class:`~desertmind.data.sampling.EpochSampler`).
        on_save_checkpoint / on_load_checkpoint: store the class table beside the weights, so
            a checkpoint alone says what its outputs mean
            (:mod:`desertmind.inference.trained`), and the step seed, which a resume takes
            back. A network holding NaN or infinite values is never saved: a learning rate
            that blows up can overflow BatchNorm's running statistics while the loss, computed
            with the batch's own statistics, still looks finite; the run stops instead
            (:meth:`check_finite`, also before each validation of a fit).
        on_{validation,test}_epoch_end: logs ``<stage>/mIoU`` (dataset level, the headline and
            the checkpoint monitor), ``<stage>/mIoU_per_image`` (the seed's definition),
            ``<stage>/pixel_acc``, ``<stage>/mean_acc`` and ``<stage>/iou/<class>``.
        configure_optimizers: named param groups ``backbone`` (the network's encoder, LR x
            ``backbone_lr_mult``), ``head`` and ``aux`` for the injected optimizer, and the
            injected scheduler (poly steps per batch, others per epoch, reduce-on-plateau on
            val/mIoU).

    Args:
        arch: ``deeplabv3`` (torchvision) or an SMP architecture (``deeplabv3plus``, ``unet``,
            ``unetplusplus``, ``fpn``, ``upernet``, ``segformer``, ...).
        backbone: for deeplabv3 ``mobilenet_v3_large``, ``resnet50`` or ``resnet101``; for SMP
            architectures any SMP encoder (``resnet18``, ``mit_b0``..``mit_b5``, ...) or
            ``tu-<timm model>``.
        num_classes: must equal the class table's 10.
        weights: ``none``; ``imagenet`` (encoder); for deeplabv3 also ``coco`` (whole model
            but the last layers); for SMP encoders any of their pretrained variants.
        aux_loss: add torchvision's auxiliary FCN head (deeplabv3 only); ``aux_weight`` scales
            its loss.
        loss: loss spec, e.g. ``ce``, ``weighted_ce + 0.5 dice`` (see
            :mod:`desertmind.training.losses`).
        optimizer, scheduler: injected by LightningCLI (``class_path`` / ``init_args``).
        backbone_lr_mult: the backbone's LR relative to the head's.
        init_from: a previous run's checkpoint to start from, weights only.
        bn_momentum: override BatchNorm momentum (torchvision's MobileNetV3 uses 0.01, too
            slow for short runs from random weights); None keeps the model's.
        channels_last: NHWC memory format (faster convolutions on recent GPUs).
        compile: wrap the network in ``torch.compile``.
        tta_scales, tta_flip: test-time augmentation for validate / test / predict: softmax
            averaged over these scales (e.g. [0.75, 1.0, 1.25]) and horizontal flips.
        sliding_window: evaluate in overlapping square windows of this size (large images).
        predict_classes: restrict the argmax to these class names (others are never
            predicted); None allows all.
        input_scaling: how uint8 images become the network's input: ``imagenet`` (mean/std,
            what pretrained encoders expect) or ``unit`` (/ 255 only, the seed's). Part of
            the trained model: a checkpoint's value is always the one used.
        freeze_bn: keep every BatchNorm layer in eval mode while training (running statistics
            frozen, affine parameters still trained), as the seed's phase 3 did.
        scheduler_monitor: the validation metric a reduce-on-plateau scheduler follows
            (``val/mIoU``; the seed followed ``val/mIoU_per_image``).
        self_training: weight of the pseudo-label loss on the data module's unlabelled
            ``target_dir`` images (0: off). The teacher is ``init_from``'s network
            (:mod:`desertmind.training.self_training`); ``pseudo_threshold``,
            ``pseudo_class_balance`` and ``teacher_ema`` (None: a fixed teacher; e.g. 0.999:
            an exponential moving average of the student) shape its labels.
    """

    def __init__(
        self,
        arch: Arch = DEFAULT_ARCH,
        backbone: str = "mobilenet_v3_large",
        num_classes: int = NUM_CLASSES,
        weights: str = "none",
        aux_loss: bool = False,
        aux_weight: float = 0.4,
        loss: str = "ce",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        backbone_lr_mult: float = 1.0,
        init_from: str | None = None,
        bn_momentum: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        tta_scales: list[float] | None = None,
        tta_flip: bool = False,
        sliding_window: int | None = None,
        predict_classes: list[str] | None = None,
        input_scaling: Scaling = "imagenet",
        freeze_bn: bool = False,
        scheduler_monitor: str = MONITOR,
        self_training: float = 0.0,
        pseudo_threshold: float = 0.9,
        pseudo_class_balance: bool = True,
        teacher_ema: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes != NUM_CLASSES:
            raise ConfigError(f"num_classes={num_classes} does not match the class table, which "
                             f"has {NUM_CLASSES} classes ({', '.join(CLASS_NAMES)})")
        parse_loss(loss)  # fail on a bad loss spec now, not after the data is loaded
        check_choice("model.input_scaling", input_scaling, SCALINGS)
        # evaluation options are checked here, not after a whole training epoch
        if backbone_lr_mult < 0:
            raise ConfigError(f"model.backbone_lr_mult={backbone_lr_mult}: must be >= 0 (0 "
                              "freezes the encoder's updates; a negative LR would ascend)")
        if tta_scales is not None and (not tta_scales or any(x <= 0 for x in tta_scales)):
            raise ConfigError(f"model.tta_scales={tta_scales}: every scale must be > 0, e.g. "
                              "[0.75, 1.0, 1.25]")
        if self_training < 0 or not 0 < pseudo_threshold <= 1 or (
                teacher_ema is not None and not 0 < teacher_ema < 1):
            raise ConfigError(f"model.self_training={self_training}, pseudo_threshold="
                              f"{pseudo_threshold}, teacher_ema={teacher_ema}: need a weight "
                              ">= 0, a threshold in (0, 1] and an EMA decay in (0, 1) or null")
        check_window(sliding_window)
        if predict_classes is not None and not predict_classes:
            raise ConfigError("model.predict_classes=[]: name at least one class to restrict "
                              "the argmax to, or leave it null for all classes")
        unknown = sorted(set(predict_classes or []) - set(CLASS_NAMES))
        if unknown:
            raise ConfigError(f"predict_classes: unknown class(es) {unknown}; choose from "
                              f"{list(CLASS_NAMES)}")
        self._allowed = ([CLASS_NAMES.index(n) for n in predict_classes]
                         if predict_classes else None)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.model = build_network(arch, backbone, num_classes, weights, aux_loss)
        if bn_momentum is not None:
            set_bn_momentum(self.model, bn_momentum)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()  # compiles __call__ in place: state_dict keys stay the same
        self.criterion: torch.nn.Module | None = None
        self.val_metrics = SegmentationMetrics(num_classes)
        self.test_metrics = SegmentationMetrics(num_classes)
        #: the last epoch's computed metrics per stage (on the CPU), for dashboard callbacks
        self.last_eval: dict[str, dict[str, torch.Tensor]] = {}
        #: where this run's logged steps start: init_from's last step on the chained axis
        self.step_offset = 0
        #: the self-training teacher, built in setup from init_from's network
        self.pseudo: PseudoLabeler | None = None
        #: seeds each training step's random state; drawn in setup, restored by a resume
        self.step_seed: int | None = None

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.step_seed is None:  # drawn from torch's RNG, which seed_everything controls
            self.step_seed = int(torch.randint(2**31 - 1, ()).item())
        if self.criterion is None:
            self.criterion = build_loss(self.hparams.loss, self._class_weights())
        if self.hparams.init_from:
            self.step_offset = load_weights(self.model, self.hparams.init_from)
            if self._trainer is not None:
                set_step_offset(self._trainer, self.step_offset)
        if self.uses_target_images and self.pseudo is None:
            if not self.hparams.init_from:
                raise ConfigError("model.self_training needs a teacher: set model.init_from to "
                                  "the checkpoint of the phase it continues")
            hp = self.hparams
            self.pseudo = PseudoLabeler(self.model, hp.pseudo_threshold,
                                        hp.pseudo_class_balance, hp.teacher_ema)

    @property
    def uses_target_images(self) -> bool:
        """Whether training also takes batches of unlabelled target images (self-training)."""
        return self.hparams.self_training > 0

    def on_fit_start(self) -> None:
        if self.pseudo is not None:
            self.pseudo.to(self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.pseudo is not None:
            self.pseudo.update(self.model)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.step_seed is not None:
            key = [self.step_seed, self.current_epoch, batch_idx, self.global_rank]
            torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def check_finite(self, before: str) -> None:
        """Stop with :class:`NonFiniteStateError` if any weight or buffer of the network holds
        NaN or inf (one device synchronisation for the whole network)."""
        state = {n: t for n, t in self.model.state_dict().items() if t.is_floating_point()}
        finite = torch.stack([torch.isfinite(t).all() for t in state.values()]).tolist()
        bad = [name for name, ok in zip(state, finite, strict=True) if not ok]
        if not bad:
            return
        stats = [n for n in bad if n.rsplit(".", 1)[-1].startswith("running_")]
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteStateError(
            f"{len(bad)} of the network's tensors hold NaN or infinite values at global step "
            f"{self.global_step} (epoch {self.current_epoch}): {listed}"
            + (f" ({len(stats)} of them BatchNorm running statistics)" if stats else "")
            + f"; stopping before {before}. The checkpoints written so far are untouched and "
            "none holds these values. The learning rate is probably too high: start a new "
            "run from the last good weights, --model.init_from <its best.ckpt or last.ckpt> "
            "--model.optimizer.init_args.lr <lower>.")

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            self.check_finite("validating")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite("writing a checkpoint")
        checkpoint[CLASS_TABLE_KEY] = class_table()
        checkpoint[STEP_OFFSET_KEY] = self.step_offset
        checkpoint[STEP_SEED_KEY] = self.step_seed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.step_seed = checkpoint.get(STEP_SEED_KEY, self.step_seed)

    def _class_weights(self) -> torch.Tensor | None:
        if all(name != "weighted_ce" for _, name in parse_loss(self.hparams.loss)):
            return None
        dm = self.trainer.datamodule
        return dm.class_weights() if hasattr(dm, "class_weights") else None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> the network's float input (``input_scaling``)."""
        return normalize(images, self.hparams.input_scaling)

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if mode and self.hparams.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float images (N, 3, H, W) -> logits (N, C, H, W)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"]
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, aux = self.model.forward_with_aux(images)
        loss = self.criterion(logits, batch["mask"])
        if aux is not None:
            loss = loss + self.hparams.aux_weight * self.criterion(aux, batch["mask"])
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """A labelled batch, or with self-training ``{"source": labelled, "target": images}``:
        the source loss plus ``self_training`` x the pseudo-label loss on the target images."""
        target = batch.get("target")
        if target is not None:
            batch = batch["source"]
        loss, _ = self._loss(batch)
        if target is not None and self.pseudo is not None:
            labels = self.pseudo.label(target["image"])
            pseudo = pseudo_label_loss(self(target["image"]), labels)
            kept = (labels != IGNORE_INDEX).float().mean()
            n = target["image"].shape[0]
            self.log("train/pseudo_loss", pseudo, on_step=True, on_epoch=True, batch_size=n)
            self.log("train/pseudo_kept", kept, on_step=False, on_epoch=True, batch_size=n)
            loss = loss + self.hparams.self_training * pseudo
        if not torch.isfinite(loss):  # before backward: no weight, optimizer or file changes
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); stopping. The checkpoints written "
                "so far are untouched. A resume (--ckpt_path) restores the optimizer and its "
                "learning rate too; to train at a lower rate, start a new run from the last "
                "good weights: --model.init_from <its best.ckpt or last.ckpt> "
                "--model.optimizer.init_args.lr <lower>.")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        return loss

    @property
    def uses_tta(self) -> bool:
        hp = self.hparams
        return bool(hp.tta_flip or hp.sliding_window or (hp.tta_scales and
                                                          list(hp.tta_scales) != [1.0]))

    def eval_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for evaluation: TTA probabilities when configured, else logits."""
        hp = self.hparams
        if not self.uses_tta:
            return self(images)
        return predict_probs(self, images, hp.tta_scales or [1.0], hp.tta_flip,
                             hp.sliding_window)

    def _eval_step(self, batch: dict, stage: str) -> dict:
        """Loss and metrics of one batch; returns the predictions (N, H, W) for callbacks."""
        if self.uses_tta:
            scores = self.eval_scores(batch["image"])
            loss = F.nll_loss(scores.clamp_min(1e-8).log(), batch["mask"],
                              ignore_index=IGNORE_INDEX)
        elif self.criterion is not None:  # inside fit: the training loss, comparable to train's
            loss, scores = self._loss(batch)
        else:
            scores = self(batch["image"])
            loss = F.cross_entropy(scores.float(), batch["mask"], ignore_index=IGNORE_INDEX)
        preds = restrict(scores, self._allowed).argmax(dim=1)
        getattr(self, f"{stage}_metrics").update(preds, batch["mask"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    def predict_maps(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Class-id maps (uint8, on the CPU), one per image at its size in ``sizes``.

        Scores are resized first and restricted to ``predict_classes`` after: restricting
        first would put -inf into the bilinear resize, whose NaNs argmax would pick.
        """
        scores = self.eval_scores(images)
        maps = []
        for i, (h, w) in enumerate(sizes):
            s = scores[i:i + 1]
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s.float(), size=(h, w), mode="bilinear", align_corners=False)
            maps.append(restrict(s, self._allowed).argmax(dim=1)[0].to(torch.uint8).cpu())
        return maps

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class-id maps (uint8, on the CPU) at each image's original size."""
        sizes = [tuple(s) for s in batch["size"].tolist()]
        return {"name": batch["name"], "path": batch["path"],
                "pred": self.predict_maps(batch["image"], sizes)}

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        m = metrics.compute()
        self.last_eval[stage] = {k: v.detach().cpu() for k, v in m.items()}
        values = {f"{stage}/mIoU": m["mIoU"], f"{stage}/mIoU_per_image": m["mIoU_per_image"],
                  f"{stage}/pixel_acc": m["pixel_acc"], f"{stage}/mean_acc": m["mean_acc"]}
        for name, iou in zip(CLASS_NAMES, m["iou"], strict=True):
            if not torch.isnan(iou):  # absent from target and prediction: no IoU to log
                values[f"{stage}/iou/{name}"] = iou
        self.log(f"{stage}/mIoU", values.pop(f"{stage}/mIoU"), prog_bar=True)
        self.log_dict(values)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def param_groups(self) -> list[dict]:
        """Named groups: backbone (the encoder, with ``lr_mult``), head and, if any, aux."""
        groups = [
            {"name": "backbone", "params": list(self.model.encoder.parameters()),
             "lr_mult": self.hparams.backbone_lr_mult},
            {"name": "head", "params": list(self.model.head_parameters()), "lr_mult": 1.0},
        ]
        aux = list(self.model.aux_parameters())
        if aux:
            groups.append({"name": "aux", "params": aux, "lr_mult": 1.0})
        return groups

    def _check_half_weights(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse an optimizer whose eps vanishes in float16 when the weights are float16
        (``16-true``): Adam's 1e-8 rounds to 0, and the first zero gradient gives 0/0 = NaN."""
        trainer = self._trainer
        if trainer is None or str(trainer.precision) not in ("16-true", "16"):
            return
        tiny = torch.finfo(torch.float16).smallest_normal
        eps = [g["eps"] for g in optimizer.param_groups if isinstance(g.get("eps"), float)]
        if eps and torch.tensor(min(eps), dtype=torch.float16).item() == 0:
            raise ConfigError(
                f"trainer.precision=16-true keeps the weights in float16, where "
                f"{type(optimizer).__name__}'s eps={min(eps):g} rounds to zero and the first "
                "zero gradient makes the weights NaN. Use 16-mixed (float16 compute, float32 "
                f"weights) or bf16-true, or set the optimizer's eps to at least {tiny:.1e}")

    def configure_optimizers(self):
        optimizer = self.optimizer(self.param_groups())
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_mult"]
        self._check_half_weights(optimizer)
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        interval = "epoch"
        if isinstance(scheduler, PolyLR):
            if scheduler.total_steps is None:
                scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
            interval = "step"
        if isinstance(scheduler, ReduceLROnPlateau) and scheduler.mode != "max":
            raise ConfigError(f"ReduceLROnPlateau monitors {self.hparams.scheduler_monitor}, "
                              "which is maximised: set mode: max in its init_args")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval,
                                 "monitor": self.hparams.scheduler_monitor}}

