"""Progress as text lines, for output that is not a terminal (a log file, a SLURM job).

Lightning's bars redraw one line in place: into a file, Rich's bar appears once, at the end,
and TQDM's fills the file with carriage returns. When standard output is not a terminal the CLI
uses :class:`ProgressLines` instead (MMEngine's habit): one line per epoch, flushed as soon as
it is written (epoch, train loss, the monitored val metric and the best so far, seconds per
epoch, time left), and a line every ``every_n_steps`` steps of a long epoch (images per second,
the loss, peak GPU memory when there is a GPU).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar

from desertmind.training.metrics import followed_monitor

TRAIN_LOSS = "train/loss"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLines(ProgressBar):
    """One flushed line per training epoch (and every ``every_n_steps`` steps of a longer
    epoch) on standard output; nothing is redrawn, so a file keeps every line."""

    def __init__(self, every_n_steps: int = 100) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._epoch_start = self._step_start = 0.0
        self._images = 0
        self._epoch_seconds: list[float] = []

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _say(self, text: str) -> None:
        if self.is_enabled:
            print(text, file=sys.stdout, flush=True)

    def _epochs(self, trainer: L.Trainer) -> str:
        total = trainer.max_epochs
        return f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total and total > 0
                                                       else "")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._step_start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        # a segmentation batch's images, or a pretraining batch's first view of each image
        images = (batch.get("image", (batch.get("views") or [None])[0])
                  if isinstance(batch, dict) else None)
        self._images += len(images) if images is not None else 0
        step = batch_idx + 1
        total = self.total_train_batches
        if step % self.every_n_steps or (isinstance(total, int) and step == total):
            return
        seconds = time.perf_counter() - self._step_start
        loss = trainer.callback_metrics.get(f"{TRAIN_LOSS}_step")
        memory = (f" · GPU {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                  if torch.cuda.is_available() else "")
        of = f"/{total}" if isinstance(total, int) else ""
        self._say(f"{self._epochs(trainer)} step {step}{of}"
                  + (f" · loss {float(loss):.4f}" if loss is not None else "")
                  + f" · {self._images / max(seconds, 1e-9):.1f} images/s{memory}")
        self._step_start, self._images = time.perf_counter(), 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self._epoch_seconds.append(seconds)
        metrics = trainer.callback_metrics
        parts = [self._epochs(trainer)]
        loss = metrics.get(f"{TRAIN_LOSS}_epoch", metrics.get(TRAIN_LOSS))
        if loss is not None:
            parts.append(f"train loss {float(loss):.4f}")
        monitor, _ = followed_monitor(trainer)
        if monitor in metrics:
            best = getattr(trainer.checkpoint_callback, "best_model_score", None)
            parts.append(f"{monitor} {float(metrics[monitor]):.4f}"
                         + (f" (best {float(best):.4f})" if best is not None else ""))
        parts.append(f"{seconds:.1f} s/epoch")
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        if left > 0:
            recent = self._epoch_seconds[-5:]
            parts.append(f"ETA {_clock(left * sum(recent) / len(recent))}")
        self._say(" · ".join(parts))
