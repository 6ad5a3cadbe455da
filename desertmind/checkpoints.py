"""Loading another run's weights (``init_from``) and reading scores back from checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

_SHOW = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists the keys and shapes at fault."""


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint on the CPU with ``weights_only=True`` (no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (init_from must point to a "
                                "finished run's checkpoint, e.g. lightning_logs/phase1/"
                                "checkpoints/best.ckpt; run the previous phase first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a checkpoint, unsupported pickled objects
        raise CheckpointMismatchError(f"{path}: cannot read checkpoint ({e})") from e


def load_weights(model: nn.Module, path: str | Path, prefix: str = "model.") -> None:
    """Copy the weights under ``prefix`` of a Lightning checkpoint into ``model``, strictly.

    Only weights are taken: no optimizer, epoch, scheduler or callback state. Any missing key,
    unexpected key or shape difference is refused with a message listing them.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict", ckpt)
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(own.keys() & weights.keys()) if weights[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    if problems:
        raise CheckpointMismatchError(
            f"{path} does not fit this model (another backbone, class count or aux head?); "
            + "; ".join(problems))
    model.load_state_dict(weights)


def best_score(path: str | Path) -> tuple[float | None, int | None]:
    """The monitored best score stored by ModelCheckpoint in ``path``, and the epoch saved."""
    ckpt = read_checkpoint(path)
    score = None
    for state in ckpt.get("callbacks", {}).values():
        if state.get("best_model_score") is not None:
            score = float(state["best_model_score"])
    return score, ckpt.get("epoch")
