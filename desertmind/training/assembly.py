"""What runs during a fit and during each evaluation, in order and in code: the one place the
CLI, the module's ``configure_callbacks``, the benchmarks and the GPU check take it from.

Lightning calls callbacks in list order (the module's own after the trainer's) and moves
checkpoint callbacks to the end. The order of a fit, and why:

1. the user's own callbacks (``trainer.callbacks`` of a config: the LR monitor, the
   TensorBoard dashboards);
2. speed-ups, backbone freezing and weight averaging: they change the model or its training
   before the steps they act on;
3. provenance (``provenance.json``) and the best epoch's per-image validation confusions
   (``val_images.npz``);
4. early stopping, before the best checkpoint, so that a checkpoint records whether it fired;
5. the best checkpoint (``best.ckpt``), then ``last.ckpt``: last after best, so that
   ``last.ckpt`` holds this validation's best score and a resume continues from it;
6. the module's own (:func:`module_callbacks`): the NaN guard, the step seed and test-time
   adaptation (which acts on ``test`` and ``predict`` only).

An evaluation runs the user's callbacks (minus those only training needs), the module's, and
the writer of its results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import lightning as L
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    WeightAveraging,
)

from desertmind.inference.adaptation import TestTimeAdaptation
from desertmind.inference.evaluation_writer import EvaluationWriter
from desertmind.inference.writer import PredictionWriter
from desertmind.training.checkpoints import LastCheckpoint, PhaseCheckpoint
from desertmind.training.dashboards import MetricsTable
from desertmind.training.freeze import BackboneFreeze
from desertmind.training.guards import FiniteGuard
from desertmind.training.provenance import Provenance
from desertmind.training.speed import Speedups
from desertmind.training.step_seed import StepSeed
from desertmind.training.val_images import BestValidationImages

#: callbacks that have nothing to do in an evaluation (the checkpoint already holds the
#: averaged weights); left in, they would reload state from the checkpoint
TRAINING_ONLY = (ModelCheckpoint, EarlyStopping, BackboneFreeze, WeightAveraging)


def module_callbacks() -> list[L.Callback]:
    """What every run of the module needs, however it is started (``configure_callbacks``)."""
    return [FiniteGuard(), StepSeed(), TestTimeAdaptation()]


def fit_callbacks(*, checkpoint: PhaseCheckpoint, last: LastCheckpoint | None = None,
                  early_stopping: EarlyStopping | None = None,
                  freeze: BackboneFreeze | None = None, speed: Speedups | None = None,
                  ema: WeightAveraging | None = None, user: Iterable[L.Callback] = (),
                  logger: bool = True, records: bool = True) -> list[L.Callback]:
    """The callbacks of a fit, in the order of the module doc (the module's own are added by
    Lightning). ``records``: provenance and the per-image confusions of the best epoch (the
    CLI's runs; off for throwaway fits). Without a logger, the LR monitor (which would stop
    the run) is left out, with one line."""
    user = without_lr_monitor(user, "fit") if not logger else list(user)
    ordered = [*user, speed, freeze, ema,
               *((Provenance(), BestValidationImages()) if records else ()),
               early_stopping, checkpoint, last]
    return [c for c in ordered if c is not None]


def without_lr_monitor(user: Iterable[L.Callback], command: str) -> list[L.Callback]:
    """The user's callbacks for a run without a logger: the LR monitor, which would stop the
    run, left out with one line."""
    user = list(user)
    kept = [c for c in user if not isinstance(c, LearningRateMonitor)]
    if len(kept) < len(user):
        print(f"desertmind {command}: no logger: LearningRateMonitor left out", file=sys.stderr)
    return kept


def evaluation_callbacks(stage: str, out: str | None,
                         user: Iterable[L.Callback] = ()) -> list[L.Callback]:
    """The callbacks of ``validate``, ``test`` or ``predict``: the user's (those only training
    needs left out) and the writer of the results into ``out`` (predictions for ``predict``,
    the evaluation files otherwise; none without ``out``)."""
    callbacks = [c for c in user if not isinstance(c, TRAINING_ONLY)]
    if stage in ("validate", "test"):
        callbacks.append(MetricsTable())
    if out and stage == "predict":
        callbacks.append(PredictionWriter(out))
    elif out:
        callbacks.append(EvaluationWriter(out))
    return callbacks
