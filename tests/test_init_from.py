"""init_from: weights only, and refusals that say what does not match."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import CheckpointError
from desertmind.models.trained import best_score
from desertmind.training.checkpoints import load_weights
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY


def _fit(tmp_path: Path, root: Path, module: SegmentationModule, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(module, OffroadDataModule(str(root), batch_size=2, num_workers=0,
                                          image_size=(32, 48)))
    return trainer


@pytest.fixture(scope="module")
def source_ckpt(synth_root: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("src")
    trainer = _fit(tmp, synth_root, SegmentationModule(TINY), epochs=2)
    path = tmp / "source.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_init_from_loads_weights_but_not_training_state(tmp_path, synth_root, source_ckpt):
    source = torch.load(source_ckpt, weights_only=True)
    assert source["epoch"] == 2 and source["global_step"] == 4
    module = SegmentationModule(TINY, init_from=str(source_ckpt))
    seen = {}

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["weights"] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            seen["epoch"], seen["step"] = trainer.current_epoch, trainer.global_step
            seen["opt_state"] = len(trainer.optimizers[0].state)

    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, callbacks=[Spy()], accelerator="cpu")
    trainer.fit(module, OffroadDataModule(str(synth_root), batch_size=2, num_workers=0,
                                          image_size=(32, 48)))
    weights = seen.pop("weights")
    assert all(torch.equal(v, source["state_dict"][f"model.{k}"]) for k, v in weights.items())
    assert seen == {**seen, "epoch": 0, "step": 0, "opt_state": 0}


def test_missing_file_is_refused(tmp_path):
    module = SegmentationModule(TINY)
    with pytest.raises(CheckpointError, match="not found: .* or train that phase first"):
        load_weights(module.model, tmp_path / "nope.ckpt")


def test_other_architecture_is_refused_listing_keys(source_ckpt):
    with pytest.raises(CheckpointError, match="unexpected keys|missing keys") as e:
        load_weights(SegmentationModule(replace(TINY, aux_weight=0.4)).model, source_ckpt)
    assert "aux_classifier" in str(e.value)


def test_shape_mismatch_is_refused_listing_shapes(source_ckpt, tmp_path):
    ckpt = torch.load(source_ckpt, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 4)
    ckpt["state_dict"][key] = torch.zeros(5, 3, 1, 1)
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=rf"{key[len('model.'):]}: checkpoint \(5, 3, 1, 1"):
        load_weights(SegmentationModule(TINY).model, bad)


def test_truncated_checkpoint_is_refused(source_ckpt, tmp_path):
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(source_ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a checkpoint .*a truncated copy"):
        best_score(bad)
