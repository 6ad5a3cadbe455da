"""SegmentationModule pieces: aux loss, param groups, schedulers, channels_last."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from desertmind.errors import ConfigError
from desertmind.training.losses import build_loss
from desertmind.training.module import SegmentationModule
from desertmind.training.schedulers import PolyLR


def _batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 10, (n, 32, 40), generator=g)
    mask[:, :2] = 255
    return {"image": torch.randn(n, 3, 32, 40, generator=g), "mask": mask}


def test_aux_loss_is_added_with_its_weight():
    module = SegmentationModule(weights="none", aux_loss=True, aux_weight=0.25).eval()
    module.criterion = build_loss("ce")
    batch = _batch()
    with torch.no_grad():
        logits, aux = module.model.forward_with_aux(batch["image"])
        loss, _ = module._loss(batch)
    expected = module.criterion(logits, batch["mask"]) + 0.25 * module.criterion(
        aux, batch["mask"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_param_groups_are_named_and_scaled():
    module = SegmentationModule(weights="none", aux_loss=True, backbone_lr_mult=0.1,
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    opt = module.configure_optimizers()
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("backbone", pytest.approx(0.05)), ("head", 0.5), ("aux", 0.5)]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.model.parameters()))  # every parameter, once


def _with_trainer(module: SegmentationModule, steps: int = 100) -> SegmentationModule:
    module._trainer = SimpleNamespace(estimated_stepping_batches=steps, precision="32-true")
    return module


def test_poly_scheduler_steps_per_batch_over_the_whole_run():
    module = _with_trainer(SegmentationModule(
        weights="none", optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        scheduler=lambda o: PolyLR(o, power=1.0, warmup_steps=10, warmup_start=0.1)))
    cfg = module.configure_optimizers()
    sched = cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step" and sched.total_steps == 100
    assert sched.factor(0) == pytest.approx(0.1)  # warmup starts at 10%
    assert sched.factor(50) == pytest.approx(0.5) and sched.factor(100) == 0.0


def test_plateau_scheduler_must_maximise_miou():
    ok = _with_trainer(SegmentationModule(weights="none", scheduler=lambda o: (
        torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max"))))
    cfg = ok.configure_optimizers()
    assert cfg["lr_scheduler"]["monitor"] == "val/mIoU"
    assert cfg["lr_scheduler"]["interval"] == "epoch"
    bad = _with_trainer(SegmentationModule(weights="none", scheduler=lambda o: (
        torch.optim.lr_scheduler.ReduceLROnPlateau(o))))
    with pytest.raises(ConfigError, match="mode: max"):
        bad.configure_optimizers()


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    plain = SegmentationModule(weights="none").eval()
    fast = SegmentationModule(weights="none", channels_last=True).eval()
    fast.model.load_state_dict(plain.model.state_dict())
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_class_count_must_match_the_table():
    with pytest.raises(ConfigError, match="10 classes"):
        SegmentationModule(num_classes=11)
