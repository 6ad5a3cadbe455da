"""What ``model.evaluation.adapt_bn`` and ``class_priors: em`` do around a test or predict run
(a callback of every evaluation, :mod:`desertmind.assembly`): the module's
:class:`~desertmind.models.evaluation.Evaluation` adapts in one pass over the images to be
evaluated before the first batch is scored, and puts the trained network back after the last.

The source class priors EM starts from are the ones the network's own posteriors imply on the
source: its mean predicted class probabilities over the val split at the last validation,
which the module keeps in its checkpoints
(``Evaluation.source_priors``). With them, EM on
source images leaves the posteriors nearly as they are; with the training label frequencies,
a network whose posteriors are not calibrated to them would be shifted even on its own
domain (measured: val mIoU 0.427 -> 0.399 with label frequencies, 0.425 with these).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader


def _images(trainer: L.Trainer, pl_module: L.LightningModule,
            stage: str) -> Iterator[torch.Tensor]:
    dm = trainer.datamodule
    for loader in _loaders(trainer, stage):
        # a loader of its own over the same images: iterating the run's own loader would
        # restart its persistent workers' iterator, which the run has already taken
        own = DataLoader(loader.dataset, batch_sampler=loader.batch_sampler,
                         num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                         pin_memory=loader.pin_memory)
        for batch in own:
            # the device and dtype a step would get, through the public transfer hooks
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            if dm is not None:
                batch = dm.on_after_batch_transfer(batch, 0)
            yield pl_module.on_after_batch_transfer(batch, 0)["image"]


class TestTimeAdaptation(L.Callback):
    """AdaBN and EM class priors on the images of a ``test`` or ``predict`` run, through the
    module's ``evaluation`` (see the module doc), whose record ``metrics.json`` keeps; the
    estimated priors are also printed."""

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        gather = None
        if trainer.world_size > 1:  # every process adapts to all the images, not its share
            def gather(tensor: torch.Tensor) -> torch.Tensor:
                return trainer.strategy.all_gather(tensor.to(pl_module.device)).cpu()
        pl_module.evaluation.adapt(lambda: _images(trainer, pl_module, stage),
                                   _image_count(trainer, stage),
                                   say=stage if trainer.is_global_zero else None,
                                   gather=gather)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "predict")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.evaluation.restore()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.evaluation.restore()


def _loaders(trainer: L.Trainer, stage: str) -> list:
    loaders = getattr(trainer, f"{stage}_dataloaders")
    return list(loaders) if isinstance(loaders, list | tuple) else [loaders]


def _image_count(trainer: L.Trainer, stage: str) -> int:
    return sum(len(loader.dataset) for loader in _loaders(trainer, stage))
