"""Foundation-model backbones: DPT over DINOv3 (patch 16) and DINOv2 (patch 14) ViTs, ConvNeXt
encoders in the CNN decoders, pretrained tags, layer-wise LR decay, LoRA adapters, gradient
checkpointing and EMA weights. The smallest variants, random weights, tiny inputs on the CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from desertmind.cli.main import main
from desertmind.data.datamodule import OffroadDataModule
from desertmind.errors import ConfigError, WeightsUnavailableError
from desertmind.models import build_network
from desertmind.models.adapters import LoRA
from desertmind.models.registry import Network
from desertmind.models.smp import encoder_weights
from desertmind.models.trained import load_trained
from desertmind.training.module import SegmentationModule
from desertmind.training.optimization import ParamGroups
from desertmind.training.speed import Speedups
from tests.stand_in import TINY

VIT16 = "tu-vit_small_patch16_dinov3"
VIT14 = "tu-vit_small_patch14_reg4_dinov2"


def _sgd(params):
    return torch.optim.SGD(params, lr=1.0)


@pytest.mark.parametrize(("backbone", "patch"), [(VIT16, 16), (VIT14, 14)])
def test_dpt_pads_the_image_to_whole_patches_and_the_token_grid_after_attention(
        backbone: str, patch: int, monkeypatch):
    """The image is padded to whole patches only; the decoder's even grid is made after the
    encoder. So a token grid of odd size (3 x 5) has no token of padding alone in attention,
    and changing the padding's content changes no prediction (the old padding to 2 patches
    added a row and a column of such tokens, and flipped predictions anywhere)."""
    net = build_network("dpt", backbone).eval()
    assert net.size_multiple == patch and net.factor == 2
    with torch.no_grad():  # 1 x 1 token grids up to sizes neither 14 nor 16 divides
        for h, w in ((14, 16), (61, 83), (144, 256)):
            assert net(torch.rand(1, 3, h, w) * 255).shape == (1, 10, h, w)
    real_pad = torch.nn.functional.pad

    def predict(fill: float) -> torch.Tensor:  # the image's padding filled with ``fill``
        def pad(x, amounts, *args, **kwargs):
            return real_pad(x, amounts, value=fill) if x.shape[1] == 3 else real_pad(
                x, amounts, *args, **kwargs)
        monkeypatch.setattr(torch.nn.functional, "pad", pad)
        with torch.no_grad():
            return net(image)

    image = torch.rand(1, 3, 3 * patch, 5 * patch, generator=torch.Generator().manual_seed(0))
    image = image * 255
    torch.testing.assert_close(predict(0.0), predict(3.0), rtol=0, atol=0)


@pytest.mark.slow  # real ConvNeXt networks in three decoders: make test-full
def test_a_convnext_encoder_works_in_the_cnn_decoders():
    for arch in ("upernet", "fpn", "deeplabv3plus", "unet"):
        net = build_network(arch, "tu-convnext_tiny").eval()
        with torch.no_grad():
            assert net(torch.rand(1, 3, 50, 70) * 255).shape == (1, 10, 50, 70)


def test_plain_vits_go_with_dpt_only_and_dpt_with_vits_only():
    with pytest.raises(ConfigError, match="plain ViT.*--model.network.arch dpt"):
        build_network("upernet", VIT16)
    with pytest.raises(ConfigError, match="plain ViT encoder.*upernet"):
        build_network("dpt", "tu-convnext_tiny")
    with pytest.raises(ConfigError, match="timm ViT encoder"):
        build_network("dpt", "resnet18")
    with pytest.raises(ConfigError, match="model.network.weights.*weights lvd1689m"):
        build_network("dpt", f"{VIT16}.lvd1689m")


def test_weights_name_timm_tags():
    vit = encoder_weights(VIT16)
    assert vit[:2] == ("none", "lvd1689m") and "imagenet" not in vit  # not ImageNet weights
    assert encoder_weights(VIT14)[1] == "lvd142m"
    convnext = encoder_weights("tu-convnext_tiny")
    assert {"imagenet", "dinov3_lvd1689m", "fb_in1k"} <= set(convnext)
    with pytest.raises(ConfigError, match="lvd1689m"):
        build_network("dpt", VIT16, weights="imagenet")


@pytest.mark.parametrize(("arch", "backbone", "weights", "repo"), [
    ("dpt", VIT16, "lvd1689m", "timm/vit_small_patch16_dinov3.lvd1689m"),
    ("dpt", VIT14, "lvd142m", "timm/vit_small_patch14_reg4_dinov2.lvd142m"),
    ("upernet", "tu-convnext_tiny", "dinov3_lvd1689m", "timm/convnext_tiny.dinov3_lvd1689m"),
])
def test_offline_weights_stop_with_repository_command_and_cache(
        arch, backbone, weights, repo, monkeypatch, tmp_path: Path, synth_root: Path, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as e:
        build_network(arch, backbone, weights=weights)
    message = str(e.value)
    assert f"repository {repo}" in message and f"`hf download {repo}`" in message
    assert str(tmp_path / "hub") in message and "weights: none" in message
    assert ("DINOv3 licence" in message) == ("dinov3" in weights or "lvd1689m" in weights)
    if arch == "dpt" and backbone == VIT16:  # the CLI stops with the same line, exit 2
        code = main(["fit", "-c", "configs/phase1.yaml", "-c", "configs/demo.yaml",
                     "--data.root", str(synth_root), "--model.network.arch", arch,
                     "--model.network.backbone", backbone, "--model.network.weights", weights,
                     "--trainer.fast_dev_run", "true"])
        err = capsys.readouterr().err
        assert code == 2 and f"hf download {repo}" in err and "Traceback" not in err


@pytest.mark.slow  # a ViT-S
def test_weight_decay_only_hits_matrices_that_are_not_embeddings_or_tokens():
    """DPT over DINOv3 ViT-S/16 with layer decay 0.9, AdamW 0.05: every group that decays holds
    weights of rank >= 2 only, and none is a position embedding or a token; ConvNeXt's
    layers for layer decay are its stem and four stages."""
    module = SegmentationModule(Network("dpt", "tu-vit_small_patch16_dinov3"),
                                param_groups=ParamGroups(layer_decay=0.9),
                                optimizer=lambda p: torch.optim.AdamW(p, weight_decay=0.05))
    groups = module.configure_optimizers()["optimizer"].param_groups
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = [(names[id(p)], p) for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.ndim >= 2 for _, p in decayed)
    assert not [n for n, _ in decayed if n.endswith(("token", "tokens", "pos_embed"))]
    spared = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    vit = module.model.encoder.model
    assert {n for n in spared if n.endswith(("cls_token", "reg_token"))} == {
        n for n in names.values() if n.endswith(("cls_token", "reg_token"))} != set()
    norms_biases_gammas = {names[id(p)] for p in vit.parameters() if p.ndim == 1}
    assert len(norms_biases_gammas) > 100 and norms_biases_gammas <= spared
    convnext = SegmentationModule(Network("upernet", "tu-convnext_tiny"))
    assert len(convnext.model.encoder_layers()) == 5


@pytest.mark.parametrize("backbone", [VIT16, VIT14])
def test_layer_decay_gives_each_block_its_lr_and_every_parameter_once(backbone: str):
    module = SegmentationModule(Network("dpt", backbone),
                                param_groups=ParamGroups(backbone_lr_mult=0.1, layer_decay=0.5),
                                optimizer=_sgd)
    groups = module.configure_optimizers()["optimizer"].param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(module.model.parameters()))
    assert groups[-1]["name"] == "head.no_decay" and groups[-1]["lr"] == 1.0
    vit = module.model.encoder.model
    blocks = len(vit.blocks)
    group_of = {id(p): g for g in groups for p in g["params"]}
    for i, block in enumerate(vit.blocks):  # block i of L: lr x mult x decay ** (L - i)
        (lr,) = {group_of[id(p)]["lr"] for p in block.parameters()}
        assert lr == pytest.approx(0.1 * 0.5 ** (blocks - i))
    assert group_of[id(vit.patch_embed.proj.weight)]["lr"] == pytest.approx(
        0.1 * 0.5 ** (blocks + 1))
    assert len({g["name"] for g in groups}) == len(groups)  # names the LR monitor shows


def test_layer_decay_needs_an_encoder_with_a_known_order():
    with pytest.raises(ConfigError, match="no known layer order"):
        SegmentationModule(TINY, param_groups=ParamGroups(layer_decay=0.8))  # a torchvision one
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        ParamGroups(layer_decay=1.5)


def _trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_lora_trains_the_adapters_and_the_head_only_whatever_unfreezes():
    module = SegmentationModule(Network("dpt", VIT16, lora=LoRA(rank=4)), optimizer=_sgd)
    net = module.model
    encoder = _trainable(net.encoder)
    assert encoder and all("lora_" in n for n in encoder)
    assert {f"net.encoder.{n}" for n in encoder} == {n for n in _trainable(net)
                                                     if n.startswith("net.encoder.")}
    total = sum(p.numel() for p in net.parameters())
    adapters = sum(p.numel() for n, p in net.encoder.named_parameters() if "lora_" in n)
    assert adapters < 0.05 * sum(p.numel() for p in net.encoder.parameters())
    net.set_encoder_frozen(True)
    assert not _trainable(net.encoder)
    net.set_encoder_frozen(False)  # BackboneFreeze unfreezing: the adapters only, again
    assert _trainable(net.encoder) == encoder
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == adapters + sum(p.numel() for p in net.head_parameters())
    assert trainable < total


@pytest.mark.slow  # a fit, a CLI evaluation and an export: make test keeps the parts below
def test_lora_fits_round_trips_and_exports_without_peft(synth_root: Path, tmp_path: Path):
    """A LoRA phase started from a plain one: the base weights are the previous phase's, the
    adapters and head move and nothing else; the checkpoint reloads as it was; its ONNX graph
    is plain layers and agrees with eager at a size that needs padding."""
    import onnx
    import onnxruntime as ort

    dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(40, 56))

    def trainer() -> L.Trainer:
        return L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")

    plain = SegmentationModule(Network("dpt", VIT14))
    torch.save({"state_dict": plain.state_dict(), "hyper_parameters": dict(plain.hparams)},
               tmp_path / "plain.ckpt")
    module = SegmentationModule(Network("dpt", VIT14, lora=LoRA(rank=4, alpha=8)),
                                init_from=str(tmp_path / "plain.ckpt"),
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    module.setup("fit")
    base = {n.replace(".base_layer", ""): t.detach().clone()
            for n, t in module.model.state_dict().items() if "lora_" not in n}
    assert all(torch.equal(t, plain.model.state_dict()[n]) for n, t in base.items())
    fit = trainer()
    fit.fit(module, dm)
    after = {n.replace(".base_layer", ""): t for n, t in module.model.state_dict().items()}
    encoder = {n for n in after if n.startswith("net.encoder.")}
    moved = {n for n in after if "lora_" not in n and not torch.equal(after[n], base[n])}
    assert moved and not moved & encoder  # the frozen encoder kept its weights
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in after.items()
               if "lora_B" in n)  # the adapters trained (they start at zero)

    ckpt = tmp_path / "lora.ckpt"
    fit.save_checkpoint(ckpt)
    # a LoRA phase that continues it (init_from) starts from its trained adapters, not fresh
    more = SegmentationModule(Network("dpt", VIT14, lora=LoRA(rank=4, alpha=8)),
                              init_from=str(ckpt))
    more.setup("fit")
    trained = module.model.state_dict()
    assert all(torch.equal(t, trained[n]) for n, t in more.model.state_dict().items())
    module.eval()
    loaded = load_trained(ckpt).network
    x = torch.rand(2, 3, 50, 70) * 255
    with torch.no_grad():
        eager = module(x)
        torch.testing.assert_close(loaded(x), eager)

    # the CLI's evaluations take the adapters' settings from the checkpoint, refuse others
    evaluate = ["validate", "--ckpt_path", str(ckpt), "--data.root", str(synth_root),
                "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
                "--trainer.enable_progress_bar", "false", "--out", str(tmp_path / "val")]
    assert main(evaluate) == 0
    assert main([*evaluate, "--model.network.lora.rank", "8"]) == 2

    out = tmp_path / "lora.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--height", "56",
                 "--width", "84"]) == 0
    graph = onnx.load(str(out)).graph
    assert not [i.name for i in graph.initializer if "lora" in i.name]
    assert not [n.name for n in graph.node if "lora" in n.name]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    # float32 rounding grows with the logits (random weights give hundreds): relative to them
    scale = np.abs(eager.numpy()).max()
    assert np.abs(got - eager.numpy()).max() < 1e-5 * scale
    assert (got.argmax(1) == eager.numpy().argmax(1)).mean() > 0.999


def test_merged_adapters_compute_what_the_adapters_did():
    net = build_network("dpt", VIT16)
    net.add_lora(LoRA(rank=4, alpha=8))
    torch.manual_seed(0)
    for name, p in net.named_parameters():
        if "lora_B" in name:  # non-zero updates, so merging has something to fold in
            p.data.normal_(0, 0.05)
    net.eval()
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        adapted = net(x)
        merged = net.merge_lora()(x)
    assert net.lora is None and not [n for n, _ in net.named_parameters() if "lora_" in n]
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_lora_targets_that_match_nothing_name_the_layers():
    with pytest.raises(ConfigError, match="model.network.lora.targets"):
        SegmentationModule(replace(TINY, lora=LoRA(rank=4)))  # it has no linear layer
    with pytest.raises(ConfigError, match="rank"):
        LoRA(rank=-1)


def test_grad_checkpointing_keeps_the_gradients():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 48) * 255
    grads = []
    for enable in (False, True):
        torch.manual_seed(1)
        net = build_network("dpt", VIT16).train()
        Speedups(grad_checkpointing=enable).setup(None, type("M", (), {"model": net}), "fit")
        assert net.net.encoder.model.grad_checkpointing is enable
        torch.manual_seed(2)
        net(x).square().mean().backward()
        grads.append([p.grad for p in net.encoder.parameters()])  # None: unused (mask token)
    assert sum(g is not None for g in grads[0]) > 100
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_is_refused_where_the_encoder_has_none():
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        build_network("deeplabv3").set_grad_checkpointing(True)
