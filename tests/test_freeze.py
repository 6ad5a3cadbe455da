"""BackboneFreeze: requires_grad, BatchNorm mode, param groups and LRs, also across a resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from desertmind.data.datamodule import OffroadDataModule
from desertmind.training.freeze import BackboneFreeze
from desertmind.training.module import SegmentationModule
from desertmind.training.optimization import ParamGroups
from tests.stand_in import TINY


class Probe(L.Callback):
    """Records, at the first batch of every epoch, what the freezing left behind."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        bb = pl_module.model.encoder
        bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        opt = trainer.optimizers[0]
        self.epochs[trainer.current_epoch] = {
            "requires_grad": {p.requires_grad for p in bb.parameters()},
            "head_requires_grad": {
                p.requires_grad for p in pl_module.model.head_parameters()},
            "bn_training": {m.training for m in bns},
            # each group's decayed half (its .no_decay half has the same LR)
            "groups": [(g["name"], g["lr"]) for g in opt.param_groups
                       if not g["name"].endswith(".no_decay")],
            "backbone": next(bb.parameters()).detach().clone(),
        }


def _module(**kw) -> SegmentationModule:
    return SegmentationModule(
        replace(TINY, bn_momentum=0.1), param_groups=ParamGroups(backbone_lr_mult=0.1),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **kw)


def _trainer(tmp_path: Path, callbacks, max_epochs: int) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, callbacks=callbacks,
                     limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1)


@pytest.fixture
def dm(synth_root: Path) -> OffroadDataModule:
    return OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(32, 48))


def test_freeze_then_unfreeze(tmp_path: Path, dm):
    probe = Probe()
    _trainer(tmp_path, [BackboneFreeze(unfreeze_at_epoch=1), probe], 3).fit(_module(), dm)
    e0, e1, e2 = probe.epochs[0], probe.epochs[1], probe.epochs[2]
    assert e0["requires_grad"] == {False} and e0["bn_training"] == {False}
    assert e0["head_requires_grad"] == {True}
    assert e1["requires_grad"] == {True} and e1["bn_training"] == {True}
    assert torch.equal(e0["backbone"], e1["backbone"])  # frozen epoch: not a single change
    assert not torch.equal(e1["backbone"], e2["backbone"])  # unfrozen: it trains
    # the groups never change; the backbone trains at head LR x backbone_lr_mult
    assert e0["groups"] == e2["groups"] == [("backbone", pytest.approx(1e-4)), ("head", 1e-3)]


def test_frozen_for_the_whole_run_keeps_backbone_and_bn_statistics(tmp_path: Path, dm):
    module = _module()
    before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    head_before = [p.detach().clone() for p in module.model.head_parameters()]
    _trainer(tmp_path, [BackboneFreeze(unfreeze_at_epoch=None)], 2).fit(module, dm)
    after = module.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats
    assert any(not torch.equal(a, b) for a, b in zip(head_before, module.model.head_parameters(),
                                                     strict=True))


def test_train_bn_keeps_batchnorm_training_while_frozen(tmp_path: Path, dm):
    probe = Probe()
    _trainer(tmp_path, [BackboneFreeze(None, train_bn=True), probe], 1).fit(_module(), dm)
    assert probe.epochs[0]["requires_grad"] == {False} and probe.epochs[0]["bn_training"] == {True}


@pytest.mark.parametrize("stop_epochs", [1, 2])  # resume while frozen, and after unfreezing
def test_resume_restores_freeze_state_and_param_groups(tmp_path: Path, dm, stop_epochs: int):
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    first = _trainer(tmp_path, [BackboneFreeze(unfreeze_at_epoch=2)], stop_epochs)
    first.fit(_module(scheduler=sched), dm)
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)

    probe = Probe()
    _trainer(tmp_path, [BackboneFreeze(unfreeze_at_epoch=2), probe], 3).fit(
        _module(scheduler=sched), dm, ckpt_path=str(ckpt))
    assert sorted(probe.epochs) == list(range(stop_epochs, 3))
    for epoch, seen in probe.epochs.items():
        frozen = epoch < 2
        assert seen["requires_grad"] == {not frozen} and seen["bn_training"] == {not frozen}
        decay = 0.5 ** epoch  # StepLR state came back with the optimizer's
        assert seen["groups"] == [("backbone", pytest.approx(1e-4 * decay)),
                                  ("head", pytest.approx(1e-3 * decay))]
