"""The network contract, for every architecture: shapes at any size, param groups, freezing,
checkpoint round trip, init_from across phases, and ONNX export parity with eager.

Tiny inputs (not multiples of 32, like the real 540x960 and the demo's 144x256) and random
weights; the style of SMP's ``tests/base/test_freeze_encoder.py``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from desertmind.cli.main import main
from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import ConfigError, WeightsUnavailableError
from desertmind.models import ARCHITECTURES, build_network
from desertmind.models.registry import Network
from desertmind.models.trained import load_trained
from desertmind.training.freeze import BackboneFreeze
from desertmind.training.module import SegmentationModule
from desertmind.training.optimization import ParamGroups

# one encoder per architecture, the smallest that architecture takes
NETWORKS = [
    ("deeplabv3", "mobilenet_v3_large"),
    ("deeplabv3plus", "resnet18"),
    ("unet", "resnet18"),
    ("unetplusplus", "resnet18"),
    ("fpn", "resnet18"),
    ("upernet", "resnet18"),
    ("segformer", "mit_b0"),
    ("pspnet", "resnet18"),
    ("linknet", "resnet18"),
    ("manet", "resnet18"),
    ("pan", "resnet18"),
    ("dpt", "tu-vit_small_patch16_dinov3"),
    ("dpt", "tu-vit_small_patch14_reg4_dinov2"),  # patch 14: SMP's own DPT cannot
]
IDS = [a if a != "dpt" else f"dpt-{b.split('_')[2]}" for a, b in NETWORKS]
#: the training round trip for every architecture is slow (a minute here): make test keeps
#: torchvision's and one SMP network, make test-full runs them all
TRAINED = [pytest.param(a, b, id=i, marks=() if a in ("deeplabv3", "deeplabv3plus")
                        else pytest.mark.slow) for (a, b), i in zip(NETWORKS, IDS, strict=True)]


def test_every_registered_architecture_is_built_by_these_tests():
    assert sorted({a for a, _ in NETWORKS}) == sorted(ARCHITECTURES)


@pytest.mark.parametrize(("arch", "backbone"), NETWORKS, ids=IDS)
def test_logits_at_any_input_size(arch: str, backbone: str):
    net = build_network(arch, backbone).eval()
    x = torch.randn(2, 3, 50, 70)  # neither dimension a multiple of 16 or 32
    with torch.no_grad():
        logits, aux = net.forward_with_aux(x)
        assert net(x).shape == logits.shape == (2, 10, 50, 70)
    assert aux is None
    if net.size_multiple > 1:  # the wrapped network itself refuses this size: padding is ours
        with pytest.raises(RuntimeError, match="divisible"):
            net.net(x)


@pytest.mark.parametrize(("arch", "backbone"), NETWORKS, ids=IDS)
def test_param_groups_cover_every_parameter_once_with_their_lr(arch: str, backbone: str):
    module = SegmentationModule(Network(arch, backbone),
                                param_groups=ParamGroups(backbone_lr_mult=0.1),
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    opt = module.configure_optimizers()["optimizer"]
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("backbone", pytest.approx(0.05)), ("backbone.no_decay", pytest.approx(0.05)),
        ("head", 0.5), ("head.no_decay", 0.5)]
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(module.model.parameters()))
    encoder = {id(p) for p in module.model.encoder.parameters()}
    assert {id(p) for g in opt.param_groups[:2] for p in g["params"]} == encoder


def test_deeplabv3_aux_head_is_its_own_group():
    module = SegmentationModule(Network(aux_weight=0.4),
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    names = [g["name"] for g in module.configure_optimizers()["optimizer"].param_groups]
    assert names == ["backbone", "backbone.no_decay", "head", "head.no_decay", "aux",
                     "aux.no_decay"]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("arch", "backbone"), TRAINED)
def test_frozen_encoder_round_trip_and_init_from(arch: str, backbone: str, synth_root: Path,
                                                 tmp_path: Path):
    """A phase with the encoder frozen: encoder weights and BatchNorm statistics stay, the head
    moves; the checkpoint reloads to the same logits; a next phase starts from its weights."""
    def module(**kw) -> SegmentationModule:
        return SegmentationModule(Network(arch, backbone, bn_momentum=0.5),
                                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kw)

    dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(40, 56))
    first = module()
    encoder_before = _state(first.model.encoder)
    head_before = [p.detach().clone() for p in first.model.head_parameters()]
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu",
                        callbacks=[BackboneFreeze(unfreeze_at_epoch=None)])
    trainer.fit(first, dm)
    encoder_after = _state(first.model.encoder)
    assert encoder_before.keys() == encoder_after.keys()
    assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, first.model.head_parameters(),
                                                     strict=True))

    ckpt = tmp_path / "phase.ckpt"
    trainer.save_checkpoint(ckpt)
    x = torch.rand(1, 3, 40, 56) * 255
    first.eval()
    trained = load_trained(ckpt)  # from the checkpoint alone, as predict / test / export do
    loaded = trained.network
    assert (trained.settings.network["arch"], trained.settings.network["backbone"]) == (
        arch, backbone)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), first(x))

    following = module(init_from=str(ckpt))
    following.setup("fit")
    assert all(torch.equal(v, following.model.state_dict()[k])
               for k, v in first.model.state_dict().items())


#: exported in make test; the DPTs over ViTs (DINOv3: RoPE, no resampled embedding; DINOv2:
#: its embedding resampled by antialiased bicubic) in make test-full
EXPORTED = [pytest.param(*NETWORKS[i], id=IDS[i], marks=(pytest.mark.slow,) if
                         IDS[i].startswith("dpt") else ())
            for i in (0, 1, IDS.index("pan"), IDS.index("dpt-patch16"), IDS.index("dpt-patch14"))]


@pytest.mark.parametrize(("arch", "backbone"), EXPORTED)
def test_onnx_export_matches_eager_at_other_sizes(arch: str, backbone: str, tmp_path: Path):
    import onnxruntime as ort

    module = SegmentationModule(Network(arch, backbone))
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--height", "64",
                 "--width", "96"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    module.eval()
    for shape in ((1, 3, 64, 96), (2, 3, 50, 70)):  # another batch and a size needing padding
        x = torch.rand(*shape) * 255  # plain RGB: the graph holds the input scaling
        with torch.no_grad():
            eager = module(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == eager.shape
        assert np.abs(got - eager).max() < 1e-3
        assert (got.argmax(1) == eager.argmax(1)).mean() > 0.999


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="deeplabv3plus.*segformer"):
        build_network("deeplab4")
    with pytest.raises(ConfigError, match="resnet18.*mit_b0"):
        build_network("unet", "vgg99")
    with pytest.raises(ConfigError, match="resnet101"):
        build_network("deeplabv3", "vit_b_16")
    with pytest.raises(ConfigError, match="imagenet"):
        build_network("deeplabv3", "mobilenet_v3_large", weights="DEFAULT")
    with pytest.raises(ConfigError, match="ssl"):
        build_network("unet", "resnet18", weights="coco")
    with pytest.raises(ConfigError, match="auxiliary"):
        build_network("unet", "resnet18", aux_loss=True)


def test_smp_weights_offline_name_the_repository_and_the_cache(monkeypatch, tmp_path: Path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as e:
        build_network("deeplabv3plus", "resnet18", weights="imagenet")
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    message = str(e.value)
    assert settings["repo_id"] in message and settings["revision"] in message
    assert str(tmp_path / "hub") in message and "weights: none" in message


def test_unknown_arch_fails_before_training_listing_names(capsys, tmp_path: Path):
    assert main(["fit", "-c", str(Path(__file__).parents[1] / "configs" / "phase1.yaml"),
                 "--model.network.arch", "deeplab4", "--data.root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model.network.arch 'deeplab4'" in err
    assert "segformer" in err and "upernet" in err
