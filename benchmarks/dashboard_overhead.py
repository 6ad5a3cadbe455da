"""Cost of the TensorBoard dashboard callbacks relative to a training epoch.

Trains the demo configuration (synthetic 256x144 data, MobileNetV3 DeepLabV3 from random
weights) for a few epochs with the confusion-matrix and prediction-grid callbacks firing every
epoch, times each callback's work and the whole epoch (train + validation), and prints JSON
with the overhead as a share of the epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.synth import generate
from desertmind.models.registry import Network
from desertmind.training.dashboards import ConfusionMatrixImage, HParamsSummary, PredictionGrid
from desertmind.training.module import SegmentationModule


def timed(cls):
    """A subclass of a dashboard callback that records how long its work takes."""

    class Timed(cls):
        seconds: list[float]

        def on_validation_end(self, trainer, pl_module):
            start = time.perf_counter()
            super().on_validation_end(trainer, pl_module)
            if not trainer.sanity_checking:
                self.seconds.append(time.perf_counter() - start)

    Timed.__name__ = cls.__name__
    return Timed


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):  # runs before the dashboards (list order)
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", args.n_train, args.n_val, 144, 256)
        confmat, grid = timed(ConfusionMatrixImage)(1), timed(PredictionGrid)(4, 1)
        confmat.seconds, grid.seconds = [], []
        timer = EpochTimer()
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1,
                            logger=TensorBoardLogger(tmp, name="bench"),
                            callbacks=[timer, HParamsSummary(), confmat, grid],
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0)
        module = SegmentationModule(Network(bn_momentum=0.1),
                                    optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        trainer.fit(module, OffroadDataModule(str(root), batch_size=4, num_workers=0))
    epoch = sum(timer.seconds) / len(timer.seconds)
    cm, gr = sum(confmat.seconds) / len(confmat.seconds), sum(grid.seconds) / len(grid.seconds)
    print(json.dumps({
        "benchmark": "dashboard_overhead",
        "setup": f"{args.n_train} train / {args.n_val} val images at 256x144, batch 4, CPU, "
                 f"{torch.get_num_threads()} threads",
        "epoch_s": round(epoch, 3),
        "confusion_matrix_s": round(cm, 3),
        "prediction_grid_4_images_s": round(gr, 3),
        "overhead_share_of_epoch": round((cm + gr) / epoch, 4),
    }, indent=1))


if __name__ == "__main__":
    main()
