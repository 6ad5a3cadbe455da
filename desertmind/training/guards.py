"""Guards every fit gets (the module adds them in ``configure_callbacks``): a run that has gone
numerically wrong stops before it can overwrite a good checkpoint, and a precision setting
that would make the weights NaN is refused before the first step."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from desertmind.errors import ConfigError, NonFiniteLossError, NonFiniteStateError

_LOWER_LR = ("start a new run from the last good weights: --model.init_from <its best.ckpt or "
             "last.ckpt> --model.optimizer.init_args.lr <lower>.")


class FiniteGuard(L.Callback):
    """Stops a fit on a NaN or infinite loss (before backward: no weight, optimizer or file
    changes) and never lets a network holding NaN or inf be saved or validated.

    Why both: a learning rate that blows up can overflow BatchNorm's running statistics while
    the loss, computed with the batch's own statistics, still looks finite. The network is
    checked before each validation of a fit and before every checkpoint is written (one device
    synchronisation for the whole network).
    """

    def __init__(self) -> None:
        self._batch = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        self._batch = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {self._batch}); stopping. The checkpoints "
                "written so far are untouched. A resume (--ckpt_path) restores the optimizer "
                "and its learning rate too; to train at a lower rate, " + _LOWER_LR)

    def on_validation_epoch_start(self, trainer: L.Trainer,
                                  pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            check_finite(trainer, pl_module.model, "validating")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
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


class HalfPrecisionGuard(L.Callback):
    """Refuses an optimizer whose eps vanishes in float16 when the weights are float16
    (``16-true``): Adam's 1e-8 rounds to 0, and the first zero gradient gives 0/0 = NaN."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if str(trainer.precision) not in ("16-true", "16"):
            return
        tiny = torch.finfo(torch.float16).smallest_normal
        for optimizer in trainer.optimizers:
            eps = [g["eps"] for g in optimizer.param_groups if isinstance(g.get("eps"), float)]
            if eps and torch.tensor(min(eps), dtype=torch.float16).item() == 0:
                raise ConfigError(
                    f"trainer.precision=16-true keeps the weights in float16, where "
                    f"{type(optimizer).__name__}'s eps={min(eps):g} rounds to zero and the "
                    "first zero gradient makes the weights NaN. Use 16-mixed (float16 compute, "
                    f"float32 weights) or bf16-true, or set the optimizer's eps to at least "
                    f"{tiny:.1e}")
