"""SegmentationModule pieces: aux loss, param groups, schedulers, class weights, speedups."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from desertmind.errors import ConfigError
from desertmind.training.losses import build_loss
from desertmind.training.module import SegmentationModule
from desertmind.training.optimization import ParamGroups
from desertmind.training.schedulers import PolyLR
from tests.stand_in import TINY


def _batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 10, (n, 32, 40), generator=g)
    mask[:, :2] = 255
    return {"image": torch.rand(n, 3, 32, 40, generator=g) * 255, "mask": mask}


def test_aux_loss_is_added_with_its_weight():
    module = SegmentationModule(replace(TINY, aux_weight=0.25)).eval()
    module.criterion = build_loss("ce")
    batch = _batch()
    with torch.no_grad():
        logits, aux = module.model.forward_with_aux(batch["image"])
        loss, _ = module.model_step(batch)
    expected = module.criterion(logits, batch["mask"]) + 0.25 * module.criterion(
        aux, batch["mask"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_param_groups_are_named_and_scaled():
    module = SegmentationModule(replace(TINY, aux_weight=0.4),
                                param_groups=ParamGroups(backbone_lr_mult=0.1),
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    opt = _with_trainer(module).configure_optimizers()["optimizer"]
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("backbone", pytest.approx(0.05)), ("backbone.no_decay", pytest.approx(0.05)),
        ("head", 0.5), ("head.no_decay", 0.5), ("aux", 0.5), ("aux.no_decay", 0.5)]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.model.parameters()))  # every parameter, once


def test_weight_decay_spares_norms_biases_and_tokens():
    """BEiT / MMSeg / timm's rule: AdamW's decay hits weights of rank >= 2 only; a parameter
    named as a token or position embedding is spared whatever its rank."""
    module = SegmentationModule(TINY, optimizer=lambda p: torch.optim.AdamW(p, lr=0.1,
                                                                           weight_decay=0.05))
    module.model.encoder.register_parameter("cls_token", torch.nn.Parameter(torch.zeros(1, 1, 4)))
    opt = _with_trainer(module).configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    for group in opt.param_groups:
        spared = group["name"].endswith(".no_decay")
        assert group["weight_decay"] == (0.0 if spared else 0.05)
        for p in group["params"]:
            assert spared == (p.ndim <= 1 or names[id(p)].endswith("cls_token")), names[id(p)]
    assert any(names[id(p)].endswith("cls_token") for g in opt.param_groups for p in g["params"])


def _with_trainer(module: SegmentationModule, steps: int = 100,
                  callbacks: tuple = ()) -> SegmentationModule:
    module._trainer = SimpleNamespace(estimated_stepping_batches=steps, precision="32-true",
                                      checkpoint_callbacks=list(callbacks))
    return module


def test_poly_scheduler_steps_per_batch_over_the_whole_run():
    module = _with_trainer(SegmentationModule(
        TINY, optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        scheduler=lambda o: PolyLR(o, power=1.0, warmup_steps=10, warmup_start=0.1)))
    cfg = module.configure_optimizers()
    sched = cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step" and sched.total_steps == 100
    assert sched.factor(0) == pytest.approx(0.1)  # warmup starts at 10%
    assert sched.factor(50) == pytest.approx(0.5) and sched.factor(100) == 0.0


def test_plateau_scheduler_follows_the_checkpoint_monitor_and_its_mode():
    def plateau(mode):
        return SegmentationModule(TINY, scheduler=lambda o: (
            torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode=mode)))

    cfg = _with_trainer(plateau("max")).configure_optimizers()  # no checkpoint: val/mIoU
    assert cfg["lr_scheduler"]["monitor"] == "val/mIoU"
    assert cfg["lr_scheduler"]["interval"] == "epoch"
    per_image = SimpleNamespace(monitor="val/mIoU_per_image", mode="max")
    cfg = _with_trainer(plateau("max"), callbacks=(per_image,)).configure_optimizers()
    assert cfg["lr_scheduler"]["monitor"] == "val/mIoU_per_image"
    with pytest.raises(ConfigError, match="mode: max"):
        _with_trainer(plateau("min")).configure_optimizers()
    loss = SimpleNamespace(monitor="val/loss", mode="min")
    with pytest.raises(ConfigError, match="mode: min"):
        _with_trainer(plateau("max"), callbacks=(loss,)).configure_optimizers()


def test_channels_last_gives_the_same_logits():
    from desertmind.training.speed import apply_speedups

    torch.manual_seed(0)
    plain = SegmentationModule(TINY).eval()
    fast = SegmentationModule(TINY).eval()
    fast.model.load_state_dict(plain.model.state_dict())
    apply_speedups(fast.model, channels_last=True)
    x = torch.rand(1, 3, 32, 40) * 255
    assert fast.model.normalise(x).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_weighted_ce_needs_its_weights_and_takes_them_as_an_argument():
    for bad in ([1.0, 2.0], [1.0] * 9 + [-1.0], [0.0] * 10):  # too few, negative, all zero
        with pytest.raises(ConfigError, match="one weight >= 0 per class"):
            SegmentationModule(TINY, class_weights=bad)
    missing = SegmentationModule(TINY, loss="weighted_ce")
    with pytest.raises(ConfigError, match="needs model.class_weights"):
        missing.setup("fit")
    weights = [float(i + 1) for i in range(10)]
    module = SegmentationModule(TINY, loss="weighted_ce", class_weights=weights)
    module.setup("fit")
    torch.testing.assert_close(module.criterion.losses[0].weight, torch.tensor(weights))
    assert module.hparams.class_weights == weights  # recorded in every checkpoint


def test_the_module_keeps_to_the_task():
    """At most 17 constructor arguments (15 until the encoder's adapters and its layer-wise LR
    decay), and no reach into the data module at run time."""
    import inspect

    import desertmind.training.module as source

    assert len(inspect.signature(SegmentationModule.__init__).parameters) - 1 <= 17
    assert "datamodule" not in inspect.getsource(source)
