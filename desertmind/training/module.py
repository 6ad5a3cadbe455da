"""LightningModule training any network of the registry for the ten off-road classes."""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from desertmind.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, class_table
from desertmind.errors import ConfigError
from desertmind.models.adapters import LoRA
from desertmind.models.evaluation import Evaluation
from desertmind.models.network import Scaling, set_bn_momentum
from desertmind.models.prediction import EvalOptions
from desertmind.models.registry import DEFAULT_ARCH, Arch, build_network
from desertmind.models.trained import (
    CLASS_TABLE_KEY,
    SOURCE_PRIORS_KEY,
    TARGET_USE_KEY,
    training_record,
)
from desertmind.training.assembly import module_callbacks
from desertmind.training.checkpoints import load_weights
from desertmind.training.losses import build_loss, needs_class_weights, parse_loss
from desertmind.training.metrics import ClassShares, SegmentationMetrics, followed_monitor
from desertmind.training.schedulers import PolyLR
from desertmind.training.self_training import PseudoLabeler, SelfTraining, pseudo_label_loss


class SegmentationModule(L.LightningModule):
    """Training, evaluation and prediction of one network; arguments mirror the config.

    The network is built by name (:func:`~desertmind.models.build_network`) and used only
    through the :class:`~desertmind.models.SegmentationNetwork` contract: it takes RGB 0-255
    and owns its input scaling and its frozen parts. Evaluation goes through the one
    prediction path (:mod:`desertmind.models.prediction`). What every fit needs besides the
    task sits in callbacks this module adds (``configure_callbacks``): the NaN/inf guard
    (:mod:`desertmind.training.guards`), the per-step seed
    (:class:`~desertmind.data.sampling.StepSeed`) and test-time adaptation.

    ``setup`` (fit only) builds the loss and loads ``init_from``'s weights (a ``--ckpt_path``
    resume is restored after it and wins); evaluating outside ``fit`` logs the cross-entropy as
    ``<stage>/loss``. Each stage's step is one ``model_step``. Checkpoints carry the class
    table, so one alone says what its outputs mean, the class priors the network's posteriors
    imply on the source (``source_priors``: what EM class priors start from) and whether
    training saw the target images (``target_use``). ``test`` and ``predict`` adapt to the
    evaluated images first when ``evaluation`` asks (:mod:`desertmind.inference.adaptation`).
    Validation and test log ``<stage>/mIoU`` (dataset level, the headline),
    ``<stage>/mIoU_per_image`` (the seed's definition), ``pixel_acc``, ``mean_acc`` and
    ``iou/<class>``. ``configure_optimizers`` builds the param groups ``backbone`` (LR x
    ``backbone_lr_mult``), ``head`` and ``aux`` for the injected optimizer (with ``layer_decay``
    < 1, one ``backbone.<k>`` group per encoder layer instead); a poly scheduler steps per
    batch, others per epoch, reduce-on-plateau on the metric the checkpoint callback follows.

    Args:
        arch: ``deeplabv3`` (torchvision) or an SMP architecture (``deeplabv3plus``, ``unet``,
            ``unetplusplus``, ``fpn``, ``upernet``, ``segformer``, ...).
        backbone: for deeplabv3 ``mobilenet_v3_large``, ``resnet50`` or ``resnet101``; for SMP
            architectures any SMP encoder (``resnet18``, ``mit_b0``..``mit_b5``, ...) or
            ``tu-<timm model>``.
        weights: ``none``; ``imagenet`` (encoder); for deeplabv3 also ``coco`` (whole model
            but the last layers); for SMP encoders any of their pretrained variants.
        input_scaling: how RGB becomes the network's input: ``imagenet`` (mean/std, what
            pretrained encoders expect) or ``unit`` (/ 255 only, the seed's). Part of the
            trained network: a checkpoint's value is always the one used.
        aux_weight: weight of torchvision's auxiliary FCN head's loss (deeplabv3 only);
            0 builds no aux head.
        loss: loss spec, e.g. ``ce``, ``weighted_ce + 0.5 dice`` (see
            :mod:`desertmind.training.losses`).
        class_weights: the ten per-class weights of ``weighted_ce``; the CLI fills them in for
            ``fit`` from the train split (``data.class_weighting``).
        optimizer: the optimizer class and its arguments (``class_path`` / ``init_args``);
            the module builds its param groups (head, backbone, layer decay).
        scheduler: an optional LR scheduler class and its arguments (poly: per batch;
            others per epoch; reduce-on-plateau follows the checkpoint's monitor).
        backbone_lr_mult: the backbone's LR relative to the head's.
        layer_decay: layer-wise LR decay of the encoder (BEiT; MMSeg's
            ``LayerDecayOptimizerConstructor``): of an encoder of ``n`` layers in depth order
            (a ViT: the patch embedding, then its L blocks; ``n = L + 1``), layer ``k`` trains
            at LR x ``backbone_lr_mult`` x ``layer_decay ** (n - k)``, so block ``i`` of L at
            ``decay ** (L - i)`` and the head at the full LR. 1 (default): one encoder group.
            Needs an encoder whose depth order is known (timm encoders, ``tu-<name>``).
        lora: low-rank adapters on the encoder's linear layers
            (:class:`~desertmind.models.adapters.LoRA`; ``rank`` 0: none); with them only the
            adapters of the encoder train. Part of the trained network, like ``arch``.
        init_from: a previous run's checkpoint to start from, weights only (a network without
            adapters starts a phase with them: its weights go under the adapters).
        bn_momentum: override BatchNorm momentum (torchvision's MobileNetV3 uses 0.01, too
            slow for short runs from random weights); None keeps the model's.
        freeze_bn: keep every BatchNorm layer in eval mode while training (running statistics
            frozen, affine parameters still trained), as the seed's phase 3 did.
        evaluation: TTA, sliding window and class restriction for validate / test / predict
            (:class:`~desertmind.models.prediction.EvalOptions`).
        self_training: pseudo-labels on the data module's unlabelled ``target_dir`` images
            (:class:`~desertmind.training.self_training.SelfTraining`; ``weight`` 0: off).
            The teacher is ``init_from``'s network.
    """

    def __init__(
        self,
        arch: Arch = DEFAULT_ARCH,
        backbone: str = "mobilenet_v3_large",
        *,
        weights: str = "none",
        input_scaling: Scaling = "imagenet",
        aux_weight: float = 0.0,
        loss: str = "ce",
        class_weights: list[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        backbone_lr_mult: float = 1.0,
        layer_decay: float = 1.0,
        lora: LoRA = LoRA(),  # noqa: B008 - frozen: a safe default
        init_from: str | None = None,
        bn_momentum: float | None = None,
        freeze_bn: bool = False,
        evaluation: EvalOptions = EvalOptions(),  # noqa: B008 - frozen: a safe default
        self_training: SelfTraining = SelfTraining(),  # noqa: B008 - frozen: a safe default
    ) -> None:
        super().__init__()
        # checkpoints store plain values (they are read with weights_only=True)
        evaluation = _as(EvalOptions, evaluation)
        self_training = _as(SelfTraining, self_training)
        lora = _as(LoRA, lora)
        parse_loss(loss)  # fail on a bad loss spec now, not after the data is loaded
        if backbone_lr_mult < 0:
            raise ConfigError(f"model.backbone_lr_mult={backbone_lr_mult}: must be >= 0 (0 "
                              "freezes the encoder's updates; a negative LR would ascend)")
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"model.layer_decay={layer_decay}: must be in (0, 1] (1: off; "
                              "0.65-0.9 are usual for ViTs)")
        if aux_weight < 0:
            raise ConfigError(f"model.aux_weight={aux_weight}: must be >= 0 (0: no aux head)")
        if class_weights is not None and len(class_weights) != NUM_CLASSES:
            raise ConfigError(f"model.class_weights: {len(class_weights)} values; one per class "
                              f"is needed ({NUM_CLASSES}: {', '.join(CLASS_NAMES)})")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams.update(evaluation=asdict(evaluation), self_training=asdict(self_training),
                            lora=asdict(lora))
        self.self_training = self_training
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.model = build_network(arch, backbone, weights=weights, aux_loss=aux_weight > 0,
                                   input_scaling=input_scaling)
        if bn_momentum is not None:
            set_bn_momentum(self.model, bn_momentum)
        self.model.set_batchnorm_frozen(freeze_bn)
        if lora.enabled:
            self.model.add_lora(lora)
        #: how validate / test / predict score (and test-time adaptation, which the
        #: TestTimeAdaptation callback runs on it); it also holds the source class priors and
        #: the target use, which checkpoints keep
        self.evaluation = Evaluation(self.model, evaluation,
                                     source_priors=torch.zeros(NUM_CLASSES))
        if layer_decay != 1 and len(self.model.encoder_layers()) < 2:
            raise ConfigError(f"model.layer_decay={layer_decay}: the encoder of {arch} / "
                              f"{backbone} has no known layer order; use a timm encoder "
                              "(tu-<name>) or layer_decay 1")
        self.criterion: torch.nn.Module | None = None
        self.val_metrics = SegmentationMetrics(NUM_CLASSES)
        self.test_metrics = SegmentationMetrics(NUM_CLASSES)
        #: with predict_classes, the same scores' argmax over all ten classes, logged beside
        #: the restricted figure (<stage>/mIoU_all_classes) so neither is read for the other
        self.val_all_classes = SegmentationMetrics(NUM_CLASSES)
        self.test_all_classes = SegmentationMetrics(NUM_CLASSES)
        #: the last epoch's computed metrics per stage (on the CPU), for dashboard callbacks
        self.last_eval: dict[str, dict[str, torch.Tensor]] = {}
        #: the self-training teacher, built in setup from init_from's network
        self.pseudo: PseudoLabeler | None = None
        #: the mean predicted class probabilities on the source val split, kept at every
        #: validation as the evaluation's source priors (what EM class priors start from)
        self.val_shares = ClassShares(NUM_CLASSES)

    def configure_callbacks(self) -> list[L.Callback]:
        return module_callbacks()

    @property
    def target_use(self) -> str | None:
        """How training used the unlabelled target images (None: it did not); the CLI sets it
        from the data module before fit (OffroadDataModule.target_use)."""
        return self.evaluation.target_use

    @target_use.setter
    def target_use(self, use: str | None) -> None:
        self.evaluation.target_use = use

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        hp = self.hparams
        if self.criterion is None:
            if needs_class_weights(hp.loss) and hp.class_weights is None:
                raise ConfigError(f"model.loss={hp.loss!r} needs model.class_weights: set "
                                  "data.class_weighting (the CLI fills them in from the train "
                                  "split) or give the ten weights")
            weights = None if hp.class_weights is None else torch.tensor(hp.class_weights)
            self.criterion = build_loss(hp.loss, weights)
        if hp.init_from:
            load_weights(self.model, hp.init_from)
        if self.self_training.enabled and self.pseudo is None:
            if not hp.init_from:
                raise ConfigError("model.self_training needs a teacher: set model.init_from to "
                                  "the checkpoint of the phase it continues")
            st = self.self_training
            self.pseudo = PseudoLabeler(self.model, threshold=st.threshold,
                                        class_balance=st.class_balance,
                                        ema_decay=st.teacher_ema)

    def on_fit_start(self) -> None:
        if self.pseudo is not None:
            self.pseudo.to(self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.pseudo is not None:
            self.pseudo.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CLASS_TABLE_KEY] = class_table()
        checkpoint[SOURCE_PRIORS_KEY] = self.evaluation.source_priors.tolist()
        checkpoint[TARGET_USE_KEY] = self.target_use

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.evaluation.source_priors, self.target_use = training_record(checkpoint)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-255 float images (N, 3, H, W) -> logits (N, C, H, W)."""
        return self.model(images)

    def model_step(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(loss, class scores) of a labelled batch. In ``fit``: the training loss (plus the
        aux head's), also for validation so the two are comparable; outside it, or with TTA,
        the cross-entropy of the evaluation scores."""
        images, masks = batch["image"], batch["mask"]
        options = self.evaluation.options
        plain = not options.uses_tta and self.evaluation.shift is None
        if self.criterion is not None and (self.training or plain):
            logits, aux = self.model.forward_with_aux(images)
            loss = self.criterion(logits, masks)
            if aux is not None:
                loss = loss + self.hparams.aux_weight * self.criterion(aux, masks)
            return loss, logits
        scores = self.evaluation.scores(images)
        if options.uses_tta:  # averaged probabilities, not logits
            loss = F.nll_loss(scores.clamp_min(1e-8).log(), masks, ignore_index=IGNORE_INDEX)
        else:
            loss = F.cross_entropy(scores.float(), masks, ignore_index=IGNORE_INDEX)
        return loss, scores

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """A labelled batch, or with self-training ``{"source": labelled, "target": images}``:
        the source loss plus ``self_training.weight`` x the pseudo-label loss."""
        target = batch.get("target")
        if target is not None:
            batch = batch["source"]
        loss, _ = self.model_step(batch)
        if target is not None and self.pseudo is not None:
            labels = self.pseudo.label(target["image"])
            pseudo = pseudo_label_loss(self(target["image"]), labels)
            kept = (labels != IGNORE_INDEX).float().mean()
            n = target["image"].shape[0]
            self.log("train/pseudo_loss", pseudo, on_step=True, on_epoch=True, batch_size=n)
            self.log("train/pseudo_kept", kept, on_step=False, on_epoch=True, batch_size=n)
            loss = loss + self.self_training.weight * pseudo
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> dict:
        """Loss and metrics of one batch; returns the predictions (N, H, W) for callbacks."""
        loss, scores = self.model_step(batch)
        preds = self.evaluation.labels_of(scores)
        getattr(self, f"{stage}_metrics").update(preds, batch["mask"])
        if self.evaluation.options.allowed is not None:
            getattr(self, f"{stage}_all_classes").update(scores.argmax(1), batch["mask"])
        if stage == "val":
            self.val_shares.update(scores.float() if self.evaluation.options.uses_tta
                                   else scores.float().softmax(1))
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class-id maps (uint8, on the CPU) at each image's original size."""
        sizes = [tuple(s) for s in batch["size"].tolist()]
        return {"name": batch["name"], "path": batch["path"],
                "pred": self.evaluation.maps(batch["image"], sizes)}

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        m = metrics.compute()
        self.last_eval[stage] = {k: v.detach().cpu() for k, v in m.items()}
        values = {f"{stage}/mIoU_per_image": m["mIoU_per_image"],
                  f"{stage}/pixel_acc": m["pixel_acc"], f"{stage}/mean_acc": m["mean_acc"]}
        for name, iou in zip(CLASS_NAMES, m["iou"], strict=True):
            if not torch.isnan(iou):  # absent from target and prediction: no IoU to log
                values[f"{stage}/iou/{name}"] = iou
        self.log(f"{stage}/mIoU", m["mIoU"], prog_bar=True)
        if self.evaluation.options.allowed is not None:
            unrestricted = getattr(self, f"{stage}_all_classes")
            values[f"{stage}/mIoU_all_classes"] = unrestricted.compute()["mIoU"]
            unrestricted.reset()
        self.log_dict(values)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self.evaluation.source_priors = self.val_shares.compute().cpu()
        self.val_shares.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def param_groups(self) -> list[dict]:
        """Named groups: backbone (the encoder, with ``lr_mult``; with layer decay one
        ``backbone.<k>`` per encoder layer), head and, if any, aux."""
        mult, decay = self.hparams.backbone_lr_mult, self.hparams.layer_decay
        if decay == 1:
            groups = [{"name": "backbone", "params": list(self.model.encoder.parameters()),
                       "lr_mult": mult}]
        else:
            layers = self.model.encoder_layers()
            groups = [{"name": f"backbone.{k}", "params": layer,
                       "lr_mult": mult * decay ** (len(layers) - k)}
                      for k, layer in enumerate(layers)]
        groups.append({"name": "head", "params": list(self.model.head_parameters()),
                       "lr_mult": 1.0})
        aux = list(self.model.aux_parameters())
        if aux:
            groups.append({"name": "aux", "params": aux, "lr_mult": 1.0})
        return groups

    def configure_optimizers(self):
        optimizer = self.optimizer(self.param_groups())
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_mult"]
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        interval = "epoch"
        if isinstance(scheduler, PolyLR):
            if scheduler.total_steps is None:
                scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
            interval = "step"
        monitor, mode = followed_monitor(self.trainer)
        if isinstance(scheduler, ReduceLROnPlateau) and scheduler.mode != mode:
            raise ConfigError(f"ReduceLROnPlateau follows {monitor}, the checkpoint's monitor, "
                              f"which is {mode}imised: set mode: {mode} in its init_args")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval,
                                 "monitor": monitor}}


def _as(cls: type, value: object) -> object:
    """``value`` as a ``cls`` dataclass: hparams and old-style callers pass a plain dict."""
    return cls(**value) if isinstance(value, dict) else value
