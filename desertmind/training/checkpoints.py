"""Checkpoints: written atomically at a stable path per phase, read without running code.

- :class:`AtomicCheckpointIO` writes every checkpoint through :mod:`desertmind.files`;
  the CLI installs it for every run.
- :class:`PhaseCheckpoint` keeps ``best.ckpt`` and :class:`LastCheckpoint` ``last.ckpt`` in
  ``<logs>/<phase>/checkpoints`` (:mod:`desertmind.runs`).
- :func:`load_weights` (``init_from``) reads one back (through
  :func:`desertmind.models.trained.read_checkpoint`, ``weights_only=True``).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from desertmind import runs
from desertmind.errors import CheckpointError, ConfigError
from desertmind.files import release_lock, take_lock, write_text, write_with
from desertmind.models.adapters import plain_to_lora
from desertmind.models.network import SegmentationNetwork
from desertmind.models.trained import PRETRAINED_ENCODER_KEY, copy_weights, read_checkpoint
from desertmind.training.chain_logger import STEP_OFFSET_KEY, step_offset


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose ``save_checkpoint`` replaces the target in one rename.

    Lightning's default writes straight into ``best.ckpt`` / ``last.ckpt``: a kill during the
    write leaves a truncated file. Here the old file stays intact until the new one is
    complete on disk. ``preloaded``: a checkpoint already read (``(path, contents)``, what
    an evaluation read to learn its settings), handed to Lightning instead of a second read.
    """

    def __init__(self, preloaded: tuple[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        try:
            write_with(path, lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as e:  # a full disk: torch says "unexpected pos"
            path = Path(path)
            free = shutil.disk_usage(path.parent).free / 2**20
            detail = getattr(e, "reason", None) or (  # an OutputError: the system's words
                str(e).splitlines()[0] if str(e) else type(e).__name__)
            if "unexpected pos" in detail:  # torch's words for a write cut short
                detail = f"the disk is full: torch says {detail.split('] . ')[-1]!r}"
            last = path.with_name(f"{runs.LAST}{runs.CKPT_EXT}")
            then = ("resume with --ckpt_path last" if last.is_file() else
                    "run the phase again (it had saved no checkpoint to resume from)")
            raise CheckpointError(
                f"{path}: cannot write the checkpoint ({detail}); {free:.0f} MiB free on its "
                f"disk. The previous {path.name}, if any, is untouched; free some space and "
                f"{then}") from e

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """A ``--ckpt_path`` resume reads through :func:`read_checkpoint`: no code runs, and a
        bad file is named in one line (Lightning moves the tensors to the device after)."""
        if self.preloaded is not None and Path(self.preloaded[0]) == Path(path):
            (_, ckpt), self.preloaded = self.preloaded, None  # once: its memory goes with it
            return ckpt
        return read_checkpoint(path)


class PhaseCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose default folder is stable per phase: ``<save_dir>/<name>/checkpoints``.

    Lightning's default puts checkpoints under ``version_N``, so the next phase could not name
    the previous phase's best model. With ``dirpath`` unset, this resolves to the logger's
    ``save_dir`` and ``name`` (e.g. ``lightning_logs/phase1/checkpoints/best.ckpt``). Every
    checkpoint also records where its run's logging starts on the chained TensorBoard axis
    (:data:`STEP_OFFSET_KEY`), so that a phase started from it continues the axis.

    The callback owns its folder for the whole fit, so a plain-Python ``Trainer.fit`` gets the
    same protection as the CLI: ``setup`` locks it against a second run (an ``flock`` the
    kernel drops if the process dies: :func:`~desertmind.files.take_lock`), and a fit that is
    not a resume refuses to start over the checkpoints of an earlier run of the phase unless
    ``overwrite`` (then they are replaced as this run saves its own). The lock is released in
    ``teardown`` or on an exception. ``fast_dev_run`` writes nothing and claims nothing.
    """

    def __init__(self, *args: Any, overwrite: bool = False, **kwargs: Any) -> None:
        # a stable name: an earlier run's best.ckpt is replaced, never joined by best-v1.ckpt
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.overwrite = overwrite
        self._lock: Path | None = None

    def _claims(self, trainer: L.Trainer) -> bool:
        return bool(self.dirpath) and trainer.is_global_zero and not trainer.fast_dev_run

    def _claim(self, trainer: L.Trainer) -> None:
        if self._lock is None and self._claims(trainer):
            self._lock = take_lock(self.dirpath, "this phase's checkpoints")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Now that Lightning knows whether this fit resumes (``trainer.ckpt_path``), refuse
        to start over an earlier run's checkpoints unless ``overwrite``. They are not deleted:
        each is replaced (atomically) when this run writes its own, so a run stopped before
        its first save leaves the earlier checkpoints as they were. The phase is no longer
        finished (:meth:`on_fit_end`) until this fit ends."""
        if not self._claims(trainer):
            return
        if not trainer.ckpt_path:
            folder = Path(self.dirpath)
            old = sorted(folder.glob(f"*{runs.CKPT_EXT}"))
            if old and not self.overwrite:
                raise ConfigError(
                    f"{folder} already holds {', '.join(p.name for p in old)} from an earlier "
                    "run of this phase: resume it with --ckpt_path last, start it again with "
                    "--overwrite (they are replaced as the new run saves its own), or log this "
                    "run elsewhere (--trainer.logger.init_args.save_dir or name)")
        if (stamp := self._done_stamp()) is not None:
            stamp.unlink(missing_ok=True)

    def _done_stamp(self) -> Path | None:
        folder = Path(self.dirpath)
        return runs.done_stamp(folder.parent) if folder.name == runs.CHECKPOINT_DIR else None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A fit that ended (its epochs done or stopped early; not killed, interrupted or
        failed) marks its phase finished, ``<phase>/.done``, however it was started: ``make``
        then skips a phase trained by hand instead of training it again."""
        if (self._claims(trainer) and type(self) is PhaseCheckpoint
                and (stamp := self._done_stamp()) is not None):
            write_text(stamp, f"{self.best_model_path}\n")

    def _release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            self._release()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> dict[str, Any]:
        checkpoint[STEP_OFFSET_KEY] = step_offset(trainer)
        return super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def resolve_dirpath(self, trainer: L.Trainer) -> None:
        """Fill in the default folder from the trainer's logger (before ``--ckpt_path last``
        is looked up, which happens before any callback's setup)."""
        if self.dirpath is None and trainer.logger is not None and not trainer.fast_dev_run:
            logger = trainer.logger
            self.dirpath = str(runs.checkpoint_dir(logger.save_dir or ".", str(logger.name)))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.resolve_dirpath(trainer)
        if stage == "fit":
            self._claim(trainer)
        with warnings.catch_warnings():  # an earlier run's files: decided in on_fit_start
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resume of a copied or moved logs folder is the same phase under another path:
        the saved paths are moved into this folder before Lightning reads them. (Lightning
        drops the best score when the folder changed, so the next epoch, however bad, would
        replace best.ckpt, and ``last.ckpt`` would be written beside itself as last-v1.ckpt.)"""
        saved = state_dict.get("dirpath")
        best = state_dict.get("best_model_path")
        if saved and self.dirpath and Path(saved) != Path(self.dirpath) and (
                not best or (Path(self.dirpath) / Path(best).name).is_file()):
            old, new = Path(saved), Path(self.dirpath)

            def moved(path: str) -> str:
                return str(new / Path(path).name) if path and Path(path).parent == old else path

            state_dict = {**state_dict, "dirpath": str(new),
                          **{k: moved(state_dict[k]) for k in
                             ("best_model_path", "kth_best_model_path", "last_model_path")
                             if k in state_dict},
                          "best_k_models": {moved(k): v for k, v in
                                            state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


class LastCheckpoint(PhaseCheckpoint):
    """Owns ``last.ckpt``: rewritten after every validation and every ``every_n_train_steps``
    optimizer steps (0: only after validations).

    Lightning's ModelCheckpoint refreshes ``last.ckpt`` only when it also saved a new best, so
    after an epoch without improvement ``last.ckpt`` would lag behind and a resume would repeat
    work. A crash loses at most ``every_n_train_steps`` steps; ``--ckpt_path last`` resumes from
    here, in the middle of an epoch if need be.

    The state it saves must include this validation's best score: it comes after the best
    checkpoint callback in ``trainer.callbacks`` (the CLI's order), which must decide on
    validation end (``save_on_train_epoch_end=False``, the CLI's default) rather than at the
    end of the train epoch, after this save. It saves after every validation even when a
    step-interval save fell on the same step: that save came before the validation and its
    early-stopping and best-score state.

    Args:
        every_n_train_steps: also save ``last.ckpt`` every this many optimizer steps (0: only
            after validations).
        overwrite: start over the folder's earlier checkpoints, replacing them as this run
            saves (the CLI links it to ``--overwrite``).
    """

    def __init__(self, every_n_train_steps: int = 0, overwrite: bool = False) -> None:
        super().__init__(monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps, every_n_epochs=0,
                         enable_version_counter=False, overwrite=overwrite)
        self._validated_at: int | None = None  # the global step of the last validation save

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's save_last also saves here, even under fast_dev_run (which saves
        # nothing), and after the last validation's save (which already holds this step)
        if not trainer.fast_dev_run and self._validated_at != trainer.global_step:
            super().on_train_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Lightning's own skip test also skips when a step save fell on this step: not here
        if not (trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING) and self.dirpath:
            path = str(Path(self.dirpath) / f"{runs.LAST}{runs.CKPT_EXT}")
            self.last_model_path = path  # before saving: it is part of the saved state
            trainer.save_checkpoint(path, self.save_weights_only)  # through the CheckpointIO
            self._validated_at = trainer.global_step


def load_weights(model: nn.Module, path: str | Path, prefix: str = "model.") -> dict:
    """Copy the weights under ``prefix`` of a Lightning checkpoint into ``model``, strictly,
    and return the checkpoint (for its training record).

    Only weights are taken: no optimizer, epoch, scheduler or callback state. Into a network
    with low-rank adapters, a network's weights without them go under the adapters. From a
    pretraining checkpoint (``desertmind pretrain``) only the encoder is taken; the decoder
    and head keep the fresh weights they were built with.
    """
    ckpt = read_checkpoint(path)
    if PRETRAINED_ENCODER_KEY in ckpt:
        load_pretrained_encoder(model, ckpt[PRETRAINED_ENCODER_KEY], path)
        return ckpt
    state = ckpt.get("state_dict", ckpt)
    if getattr(model, "lora", None) is not None:
        state = plain_to_lora(state, {prefix + k: v for k, v in model.state_dict().items()})
    copy_weights(model, state, path, prefix)
    return ckpt


def load_pretrained_encoder(model: SegmentationNetwork, saved: Any, path: str | Path) -> None:
    """Copy a pretraining checkpoint's encoder (:data:`PRETRAINED_ENCODER_KEY`) into
    ``model``'s encoder, strictly: the same architecture, backbone and input scaling, every
    weight and BatchNorm statistic (under the adapters, when ``model`` has them)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"{path}: its pretrained encoder record is damaged")
    network = saved.get("network") if isinstance(saved.get("network"), dict) else {}
    if network.get("input_scaling") not in (None, model.input_scaling):
        raise CheckpointError(
            f"{path}: its encoder was pretrained on inputs scaled {network['input_scaling']!r}, "
            f"this network scales them {model.input_scaling!r}: set "
            f"--model.network.input_scaling {network['input_scaling']}")
    state = saved["state_dict"]
    if model.lora is not None:
        state = plain_to_lora(state, model.encoder.state_dict())
    try:
        copy_weights(model.encoder, state, path, prefix="")
    except CheckpointError as e:
        raise CheckpointError(
            f"{path} holds the pretrained encoder of {network.get('arch')} "
            f"{network.get('backbone')}; start a phase of that architecture and backbone from "
            f"it ({e})") from e
