"""The best epoch's per-image validation confusions, kept beside a training run for the
report's intervals."""

from __future__ import annotations

import math

import lightning as L
import numpy as np

from desertmind import runs
from desertmind.files import write_with
from desertmind.inference.evaluation_writer import PerImageConfusion
from desertmind.runs import VAL_IMAGES_FILE
from desertmind.training.metrics import followed_monitor, improves


class BestValidationImages(PerImageConfusion):
    """During ``fit``, keeps in the run's folder the validation images' confusion matrices of
    the best epoch so far, by the metric the best checkpoint follows (so the report's interval
    belongs to the epoch ``best.ckpt`` holds): :data:`~desertmind.runs.VAL_IMAGES_FILE`
    (``names``, ``cms`` (N, C, C), ``epoch``, ``value``), so the report can put a bootstrap
    interval on the run's best val mIoU and compare it, image by image, with the phase it
    started from. A few kilobytes: images x 10 x 10 integers. The best value so far is part
    of the callback's state, so a resumed run never replaces the file with a worse epoch's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.best = -math.inf

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.logger is None:
            return
        names, cms = self._gathered(trainer)  # every rank takes part in the gather
        log_dir = runs.run_folder(trainer, VAL_IMAGES_FILE)
        monitor, mode = followed_monitor(trainer)  # the epoch best.ckpt holds
        value = trainer.callback_metrics.get(monitor)
        if value is None or not math.isfinite(float(value)) or not improves(
                float(value), None if math.isinf(self.best) else self.best, mode):
            return
        self.best = float(value)
        if trainer.is_global_zero and log_dir is not None:
            write_with(log_dir / VAL_IMAGES_FILE, lambda f: np.savez_compressed(
                f, names=np.array(names), cms=cms.numpy(), epoch=trainer.current_epoch,
                value=self.best))

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.best = state_dict.get("best", -math.inf)
