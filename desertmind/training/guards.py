"""The guard every fit gets: a run that has gone numerically wrong stops before it can
overwrite a good checkpoint."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from desertmind.errors import NonFiniteLossError, NonFiniteStateError

_LOWER_LR = ("start a new run from the last good weights: --model.init_from <its best.ckpt or "
             "last.ckpt> --model.optimizer.init_args.lr <lower>.")


class FiniteGuard(L.Callback):
    """Stops a fit on a NaN or infinite loss or network, and never lets a network holding NaN
    or inf be saved or validated.

    Nothing here waits for the GPU in a training step: each step's loss is checked on the
    device (the first non-finite step is kept in a device tensor), and the result is read
    only where a decision is due: at the trainer's logging steps, before each validation of a
    fit, before every checkpoint is written and when training ends. The run stops there,
    naming the step whose loss was first non-finite; the steps after it have changed the
    weights in memory, but no checkpoint is ever written with them.

    Why the network too: a learning rate that blows up can overflow BatchNorm's running
    statistics while the loss, computed with the batch's own statistics, still looks finite.
    The network is checked before each validation of a fit and before every checkpoint is
    written (one device synchronisation for the whole network).
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # global step of the first bad loss, or -1
        self._steps: dict[int, tuple[int, int]] = {}  # step -> (epoch, batch) since a check

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        self._steps[trainer.global_step] = (trainer.current_epoch, batch_idx)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, trainer.global_step, self._first_bad)

    def check_loss(self, trainer: L.Trainer) -> None:
        """Read the device flag (one synchronisation) and stop if a loss was non-finite."""
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step < 0:
            self._steps.clear()
            return
        epoch, batch = self._steps.get(step, (trainer.current_epoch, -1))
        raise NonFiniteLossError(
            f"training loss became NaN or infinite at global step {step} (epoch {epoch}, "
            f"batch {batch}); stopping. The checkpoints written so far are untouched and none "
            "holds the weights after it. A resume (--ckpt_path) restores the optimizer and its "
            "learning rate too; to train at a lower rate, " + _LOWER_LR)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: object, batch: object, batch_idx: int) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self.check_loss(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_loss(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer,
                                  pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.check_loss(trainer)
            check_finite(trainer, pl_module.model, "validating")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        self.check_loss(trainer)
        check_finite(trainer, pl_module.model, "writing a checkpoint")


def check_finite(trainer: L.Trainer, network: torch.nn.Module, before: str) -> None:
    """Raise :class:`NonFiniteStateError` if any weight or buffer of ``network`` holds NaN or
    inf, naming them and what to do."""
    state = {n: t for n, t in network.state_dict().items() if t.is_floating_point()}
    finite = torch.stack([torch.isfinite(t).all() for t in state.values()]).tolist()
    bad = [name for name, ok in zip(state, finite, strict=True) if not ok]
    if not bad:
        return
    stats = [n for n in bad if n.rsplit(".", 1)[-1].startswith("running_")]
    listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise NonFiniteStateError(
        f"{len(bad)} of the network's tensors hold NaN or infinite values at global step "
        f"{trainer.global_step} (epoch {trainer.current_epoch}): {listed}"
        + (f" ({len(stats)} of them BatchNorm running statistics)" if stats else "")
        + f"; stopping before {before}. The checkpoints written so far are untouched and "
        "none holds these values. The learning rate is probably too high: " + _LOWER_LR)
