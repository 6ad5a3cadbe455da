"""LightningModule training any network of the registry for the ten off-road classes."""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from desertmind.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, class_table
from desertmind.errors import ConfigError
from desertmind.models import registry
from desertmind.models.evaluation import Evaluation
from desertmind.models.network import SegmentationNetwork
from desertmind.models.prediction import EvalOptions
from desertmind.models.registry import Network
from desertmind.models.trained import (
    CLASS_TABLE_KEY,
    PRETRAINED_ENCODER_KEY,
    PRETRAINING_KEY,
    SOURCE_PRIORS_KEY,
    TARGET_USE_KEY,
    pretraining_record,
    training_record,
)
from desertmind.training import optimization
from desertmind.training.assembly import module_callbacks
from desertmind.training.checkpoints import load_weights
from desertmind.training.losses import build_loss, needs_class_weights, parse_loss
from desertmind.training.metrics import ClassShares, StageMetrics
from desertmind.training.optimization import ParamGroups
from desertmind.training.self_training import PseudoLabeler, SelfTraining, pseudo_label_loss


class SegmentationModule(L.LightningModule):
    """The segmentation task of one network: its loss, steps, metrics and parameter groups.

    The network comes from the registry (:func:`~desertmind.models.registry.build` of
    ``network``) and is used only through the
    :class:`~desertmind.models.SegmentationNetwork` contract: it takes RGB 0-255 and owns its
    input scaling and its frozen parts. Validate, test and predict score through the module's
    :class:`~desertmind.models.evaluation.Evaluation` (``evaluation``), which also holds what
    checkpoints keep beside the weights: the class priors the network's posteriors imply on
    the source val split (what EM class priors start from) and how training used target
    images (``target_use``). What a run needs besides the task is assembled in
    :mod:`desertmind.training.assembly`; the module's own callbacks (NaN guard, step seed,
    test-time adaptation) come from there too.

    ``setup`` (fit only) builds the loss and loads ``init_from``'s weights (a ``--ckpt_path``
    resume is restored after it and wins); evaluating outside ``fit`` logs the cross-entropy
    as ``<stage>/loss``. Validation and test log ``<stage>/mIoU`` (dataset level, the
    headline), ``<stage>/mIoU_per_image`` (the study's definition), ``pixel_acc``,
    ``mean_acc`` and ``iou/<class>``.

    Args:
        network: the network (:class:`~desertmind.models.registry.Network`): architecture,
            backbone, weights, input scaling, aux head, adapters, BatchNorm handling.
        loss: loss spec, e.g. ``ce``, ``weighted_ce + 0.5 dice``
            (:mod:`desertmind.training.losses`).
        class_weights: the ten per-class weights of ``weighted_ce``; the CLI fills them in for
            ``fit`` from the train split (``data.class_weighting``).
        optimizer: the optimizer class and its arguments (``class_path`` / ``init_args``).
        scheduler: an optional LR scheduler class and its arguments.
        param_groups: the encoder's LR multiplier and layer decay
            (:class:`~desertmind.training.optimization.ParamGroups`).
        init_from: a previous run's checkpoint to start from, weights only (a network without
            adapters starts a phase with them: its weights go under the adapters).
        evaluation: TTA, sliding window, class restriction and test-time adaptation for
            validate / test / predict (:class:`~desertmind.models.prediction.EvalOptions`).
        self_training: pseudo-labels on the data module's unlabelled ``target_dir`` images
            (:class:`~desertmind.training.self_training.SelfTraining`; ``weight`` 0: off).
            The teacher is ``init_from``'s network.
    """

    def __init__(
        self,
        network: Network = Network(),  # noqa: B008 - frozen: a safe default
        *,
        loss: str = "ce",
        class_weights: list[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        param_groups: ParamGroups = ParamGroups(),  # noqa: B008 - frozen: a safe default
        init_from: str | None = None,
        evaluation: EvalOptions = EvalOptions(),  # noqa: B008 - frozen: a safe default
        self_training: SelfTraining = SelfTraining(),  # noqa: B008 - frozen: a safe default
    ) -> None:
        super().__init__()
        # saved hyperparameters hold plain values (checkpoints are read weights_only)
        network, param_groups = _as(Network, network), _as(ParamGroups, param_groups)
        evaluation, self_training = _as(EvalOptions, evaluation), _as(SelfTraining, self_training)
        parse_loss(loss)  # fail on a bad loss spec now, not after the data is loaded
        if class_weights is not None and (len(class_weights) != NUM_CLASSES or min(
                class_weights) < 0 or not any(class_weights)):
            raise ConfigError(f"model.class_weights={class_weights}: one weight >= 0 per class "
                              f"is needed ({NUM_CLASSES}: {', '.join(CLASS_NAMES)}), not all 0 "
                              "(a negative weight would ascend its class's loss)")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams.update(network=network.as_dict(), param_groups=asdict(param_groups),
                            evaluation=asdict(evaluation), self_training=asdict(self_training))
        self.network, self.groups, self.self_training = network, param_groups, self_training
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model: SegmentationNetwork = registry.build(network)
        param_groups.check(self.model, f"{network.arch} / {network.backbone}")
        self.evaluation = Evaluation(self.model, evaluation,
                                     source_priors=torch.zeros(NUM_CLASSES))
        self.criterion: torch.nn.Module | None = None
        self.val_metrics, self.test_metrics = StageMetrics("val"), StageMetrics("test")
        #: the last epoch's computed metrics per stage (on the CPU), for dashboard callbacks
        self.last_eval: dict[str, dict[str, torch.Tensor]] = {}
        #: the mean predicted class probabilities on the source val split, kept at every
        #: validation as the evaluation's source priors
        self.val_shares = ClassShares(NUM_CLASSES)
        #: the self-training teacher, built in setup from init_from's network
        self.pseudo: PseudoLabeler | None = None
        #: what the init_from weights record of target images (see :attr:`target_use`)
        self.inherited_use: str | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        return module_callbacks()

    @property
    def target_use(self) -> str | None:
        """How the weights used unlabelled target images (None: they did not), as far as the
        module knows: what its ``init_from`` checkpoint records (weights that saw target images
        carry that into every phase after them), or, read back from a checkpoint, the whole
        record. The data module records its own use in its checkpoint state
        (:meth:`OffroadDataModule.state_dict`); :func:`training_record` joins the two."""
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
            ckpt = load_weights(self.model, hp.init_from)
            _, inherited = training_record(ckpt)
            self.inherited_use = inherited and f"{inherited} (in the weights of {hp.init_from})"
            self.target_use = self.inherited_use
            pretraining = pretraining_record(ckpt)  # a pretraining's, or carried by a phase
            if pretraining is not None and PRETRAINED_ENCODER_KEY in ckpt:
                pretraining["checkpoint"] = str(hp.init_from)
            self.evaluation.pretraining = pretraining
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
        checkpoint[TARGET_USE_KEY] = self.inherited_use
        checkpoint[PRETRAINING_KEY] = self.evaluation.pretraining

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.evaluation.source_priors, self.target_use = training_record(checkpoint)
        self.evaluation.pretraining = pretraining_record(checkpoint)
        use = checkpoint.get(TARGET_USE_KEY)
        self.inherited_use = use if isinstance(use, str) else None

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
                loss = loss + self.network.aux_weight * self.criterion(aux, masks)
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

    def _eval_step(self, batch: dict, metrics: StageMetrics) -> dict:
        """Loss and metrics of one batch; returns the predictions (N, H, W) for callbacks."""
        loss, scores = self.model_step(batch)
        preds = self.evaluation.labels_of(scores)
        options = self.evaluation.options
        metrics.update(preds, scores, batch["mask"], restricted=options.allowed is not None)
        if metrics is self.val_metrics:
            self.val_shares.update(scores.float() if options.uses_tta
                                   else scores.float().softmax(1))
        self.log(f"{metrics.stage}/loss", loss, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class-id maps (uint8, on the CPU) at each image's original size."""
        sizes = [tuple(s) for s in batch["size"].tolist()]
        return {"name": batch["name"], "path": batch["path"],
                "pred": self.evaluation.maps(batch["image"], sizes)}

    def _log_metrics(self, metrics: StageMetrics) -> None:
        values, self.last_eval[metrics.stage] = metrics.compute(
            complete=not self.trainer.sanity_checking)
        headline = f"{metrics.stage}/mIoU"
        self.log(headline, values.pop(headline), prog_bar=True)
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)
        self.evaluation.source_priors = self.val_shares.compute().cpu()
        self.val_shares.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def configure_optimizers(self) -> dict:
        # only a scheduler asks the trainer (for the run's length and the monitor)
        trainer = self.trainer if self.scheduler is not None else None
        return optimization.configure(self.model, self.groups, self.optimizer, self.scheduler,
                                      trainer)


def _as(cls: type, value: object) -> object:
    """``value`` as a ``cls`` dataclass: saved hyperparameters hold a plain dict."""
    return cls(**value) if isinstance(value, dict) else value
