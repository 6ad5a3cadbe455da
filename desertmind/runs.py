"""Where runs live on disk: the one module that knows the run-folder layout.

::

    <logs>/<phase>/                       a phase (the TensorBoard logger's save_dir / name)
        version_N/                        one training run: events, config.yaml, provenance.json,
                                          val_images.npz (per-image confusion, best epoch)
        checkpoints/best.ckpt             the best model on the monitored metric
        checkpoints/last.ckpt             the latest state, for --ckpt_path last
        .done                             the phase's last fit ended (written by the best
                                          checkpoint's callback; what make's phase targets test)
        eval/<command>/version_N/         a validate / test / predict run of that phase's model:
                                          never read as a training run
    <logs>/random_seed_N/<phase>/         the same chain trained with seed N
                                          (``make phases SEEDS="1 2 3"``)

The CLI, the report, ``desertmind scores``, the notebook and the Makefile's phase targets all
take these paths from here.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"
BEST = "best"
LAST = "last"
CKPT_EXT = ".ckpt"
PROVENANCE_FILE = "provenance.json"
CONFIG_FILE = "config.yaml"
VAL_IMAGES_FILE = "val_images.npz"
EVAL_DIR = "eval"
RANDOM_SEED_DIR = "random_seed_"
DONE_FILE = ".done"


def phase_dir(logs: str | Path, phase: str) -> Path:
    """``<logs>/<phase>``."""
    return Path(logs) / phase


def checkpoint_dir(logs: str | Path, phase: str) -> Path:
    """``<logs>/<phase>/checkpoints``."""
    return phase_dir(logs, phase) / CHECKPOINT_DIR


def best_checkpoint(logs: str | Path, phase: str) -> Path:
    """``<logs>/<phase>/checkpoints/best.ckpt``: what the next phase starts from."""
    return checkpoint_dir(logs, phase) / f"{BEST}{CKPT_EXT}"


def done_stamp(phase: str | Path) -> Path:
    """``<phase>/.done``: present when the phase's last fit ended."""
    return Path(phase) / DONE_FILE


def phase_of_run(run_dir: str | Path) -> Path:
    """The phase folder of a ``version_N`` run folder."""
    return Path(run_dir).parent


def checkpoints_of_run(run_dir: str | Path) -> tuple[Path, Path]:
    """``(best.ckpt, last.ckpt)`` of the phase a ``version_N`` run folder belongs to."""
    folder = phase_of_run(run_dir) / CHECKPOINT_DIR
    return folder / f"{BEST}{CKPT_EXT}", folder / f"{LAST}{CKPT_EXT}"


def phase_of_checkpoint(ckpt: str | Path) -> Path:
    """The phase folder of ``<phase>/checkpoints/<file>.ckpt``."""
    return Path(ckpt).parent.parent


def eval_dir(ckpt: str | Path | None, phase: str | Path | None) -> Path:
    """Where an evaluation run logs: ``<phase>/eval`` of the checkpoint's own phase when it
    sits in a run folder, else of ``phase`` (the config's logger folder), else
    ``lightning_logs/eval``."""
    if ckpt is not None and Path(ckpt).parent.name == CHECKPOINT_DIR:
        return phase_of_checkpoint(ckpt) / EVAL_DIR
    return Path(phase or "lightning_logs") / EVAL_DIR


def is_eval_run(run_dir: str | Path, logs: str | Path) -> bool:
    """Whether a run folder under ``logs`` is an evaluation run (under an ``eval`` folder)."""
    return EVAL_DIR in Path(run_dir).resolve().relative_to(Path(logs).resolve()).parts


def find_best_checkpoints(logs: str | Path) -> list[Path]:
    """Every ``<logs>/.../<phase>/checkpoints/best.ckpt`` (phases in subfolders included:
    ``seed/``, ``recipes/``, ``random_seed_N/``), oldest first."""
    found = Path(logs).glob(f"**/{CHECKPOINT_DIR}/{BEST}{CKPT_EXT}")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def without_random_seed(phase: str) -> tuple[str, int | None]:
    """A phase name without its ``random_seed_N`` folder, and N (None if it has none):
    ``random_seed_2/phase1`` -> ``("phase1", 2)``; runs of one phase with several seeds share
    the first part."""
    parts = Path(phase).parts
    for i, part in enumerate(parts):
        seed = part.removeprefix(RANDOM_SEED_DIR)
        if part.startswith(RANDOM_SEED_DIR) and seed.isdigit():
            return Path(*parts[:i], *parts[i + 1:]).as_posix(), int(seed)
    return phase, None


_NOTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # trainer -> what was said


def run_folder(trainer: Any, what: str) -> Path | None:
    """The run's log folder (``trainer.log_dir``, a collective under DDP: every rank must ask),
    or None when the run has none (``logger: false``, ``fast_dev_run``): rank 0 then says once
    per trainer that ``what`` is skipped, and the caller skips it."""
    # without a logger Lightning's log_dir is the working folder: not a run's folder
    log_dir = trainer.log_dir if trainer.loggers else None
    if log_dir is not None:
        return Path(log_dir)
    noted = _NOTED.setdefault(trainer, set())
    if trainer.is_global_zero and what not in noted:
        noted.add(what)
        print(f"desertmind: no log folder for this run (logger off or fast_dev_run): {what} "
              "not written", file=sys.stderr)
    return None


def missing_checkpoint_message(path: str | Path) -> str:
    """What to say of a checkpoint path that does not exist (the CLI's check before any
    import, and :func:`desertmind.models.trained.read_checkpoint`)."""
    return (f"checkpoint {path} not found: give a finished run's checkpoint, e.g. "
            f"{best_checkpoint('lightning_logs', 'phase1')} (`desertmind scores` lists them), "
            "or train that phase first")
