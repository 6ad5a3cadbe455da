"""desertmind pretrain: self-distillation of an encoder on unlabelled images, and the phases
from it (the stand-in network in the fast tier, timm ViTs in the slow one)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from desertmind.cli.main import main
from desertmind.data import imageio
from desertmind.data.synth import generate
from desertmind.models import registry
from desertmind.models.adapters import LoRA
from desertmind.models.deeplabv3 import TorchvisionDeepLabV3
from desertmind.models.network import SegmentationNetwork
from desertmind.models.registry import Network
from desertmind.models.trained import PRETRAINED_ENCODER_KEY, PRETRAINING_KEY, read_checkpoint
from desertmind.pretraining.data import UnlabelledDataModule
from desertmind.pretraining.module import Objective, PretrainModule
from desertmind.training.checkpoints import load_pretrained_encoder
from tests.stand_in import TINY, tiny_network

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = Objective(output_dim=64, hidden_dim=32, bottleneck_dim=16)


def pretrain_args(root: Path, logs: Path, *extra: str) -> list[str]:
    """``desertmind pretrain`` with the stand-in network, one epoch of two small batches."""
    return ["pretrain", "-c", str(CONFIGS / "pretrain" / "dino.yaml"),
            "-c", str(CONFIGS / "demo.yaml"), "--model.network.arch", "tiny",
            "--data.root", str(root), "--data.image_size", "[32, 48]",
            "--data.crop_size", "24", "--data.local_views", "2", "--data.batch_size", "2",
            "--model.objective.output_dim", "64", "--model.objective.hidden_dim", "32",
            "--model.objective.bottleneck_dim", "16",
            "--trainer.logger.init_args.save_dir", str(logs), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
            "false", *extra]


@pytest.fixture(scope="module")
def desert_root(tmp_path_factory) -> Path:
    """A tiny dataset with a labelled shifted desert (test_shifted)."""
    return generate(tmp_path_factory.mktemp("desert") / "data", 8, 4, 48, 80, 5, n_shifted=4)


@pytest.fixture(scope="module")
def pretrained(desert_root: Path, tmp_path_factory) -> Path:
    """A pretraining on the train images and the shifted desert's."""
    logs = tmp_path_factory.mktemp("pretrain") / "logs"
    shifted = desert_root / "test_shifted" / "Color_Images"
    assert main(pretrain_args(desert_root, logs, "--data.unlabelled_dirs",
                              json.dumps([str(shifted)]))) == 0
    return logs / "pretrain" / "checkpoints" / "pretrained.ckpt"


def test_the_checkpoint_holds_the_teachers_encoder_and_the_folders_it_read(desert_root: Path,
                                                                           pretrained: Path):
    ckpt = read_checkpoint(pretrained)
    saved = ckpt[PRETRAINED_ENCODER_KEY]
    assert saved["network"] == {"arch": "tiny", "backbone": "mobilenet_v3_large",
                                "input_scaling": "imagenet"}
    teacher = {k.removeprefix("teacher.backbone."): v for k, v in ckpt["state_dict"].items()
               if k.startswith("teacher.backbone.")}
    assert teacher.keys() == saved["state_dict"].keys()
    assert all(torch.equal(teacher[k], saved["state_dict"][k]) for k in teacher)
    student = ckpt["state_dict"]["student.backbone.body.0.weight"]
    assert not torch.equal(student, teacher["body.0.weight"])  # the teacher is not the student
    record = ckpt[PRETRAINING_KEY]
    assert record["folders"] == [str((desert_root / d / "Color_Images").resolve())
                                 for d in ("train", "test_shifted")]
    assert record["method"] == "dino" and record["steps"] == 2


def test_a_phase_starts_from_the_pretrained_encoder_bit_for_bit(desert_root: Path,
                                                              pretrained: Path, tmp_path: Path,
                                                              phase_args):
    saved = read_checkpoint(pretrained)[PRETRAINED_ENCODER_KEY]["state_dict"]
    first = tmp_path / "first_step.pt"
    spy = {"class_path": "tests.stand_in.SaveEncoderAtFirstStep",
           "init_args": {"path": str(first)}}
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", desert_root, logs), "--model.init_from",
                 str(pretrained), f"--trainer.callbacks+={json.dumps(spy)}",
                 "--trainer.enable_progress_bar", "false"]) == 0
    started = torch.load(first, weights_only=True)
    assert started.keys() == saved.keys()
    assert all(torch.equal(started[k], saved[k]) for k in saved)


def test_an_evaluation_of_images_the_pretraining_read_is_transductive(desert_root: Path,
                                                                     pretrained: Path,
                                                                     tmp_path: Path,
                                                                     phase_args):
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", desert_root, logs), "--model.init_from",
                 str(pretrained), "--trainer.enable_progress_bar", "false"]) == 0
    best = logs / "phase1" / "checkpoints" / "best.ckpt"
    # phase 2.1 from phase 1: the record is carried along the chain
    assert main(["fit", *phase_args("phase2_1_head", desert_root, logs), "--model.init_from",
                 str(best), "--trainer.enable_progress_bar", "false"]) == 0
    best = logs / "phase2_1_head" / "checkpoints" / "best.ckpt"
    for sub, split, transductive in (("test", "test_shifted", True), ("validate", "val", False)):
        out = tmp_path / sub
        extra = ["--data.test_dir", split] if sub == "test" else []
        assert main([sub, "--ckpt_path", str(best), "--out", str(out), *extra,
                     "--trainer.enable_progress_bar", "false"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["transductive"] is transductive, (sub, metrics)
        assert metrics["pretraining"]["checkpoint"] == str(pretrained)
        assert metrics["pretraining"]["method"] == "dino"
        if transductive:
            assert "self-supervised pretraining" in metrics["training"]
            assert str(pretrained) in metrics["training"]
        else:
            assert metrics["training"] is None


def test_a_pretraining_checkpoint_is_not_a_model_to_evaluate(pretrained: Path, capsys):
    assert main(["validate", "--ckpt_path", str(pretrained)]) == 2
    err = capsys.readouterr().err
    assert "a pretraining checkpoint" in err and "--model.init_from" in err


def test_masks_are_never_opened(data_copy: Path, tmp_path: Path, monkeypatch):
    for mask in data_copy.rglob("Segmentation/*.png"):
        mask.write_bytes(b"not a mask")  # a read would fail loudly
    read = []
    original = imageio._read_bytes
    monkeypatch.setattr(imageio, "_read_bytes",
                        lambda path, what: read.append(Path(path)) or original(path, what))
    # the val split given as an unlabelled folder: its images, never its masks
    assert main(pretrain_args(data_copy, tmp_path / "logs", "--data.unlabelled_dirs",
                              "[val]")) == 0
    assert read and all(p.parent.name == "Color_Images" for p in read)
    assert {p.parent.parent.name for p in read} <= {"train", "val"}


def _fit_tiny(root: Path, steps: int, objective: Objective, lr: float,
              callback: L.Callback) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    module = PretrainModule(TINY, objective=objective,
                            optimizer=lambda p: torch.optim.AdamW(p, lr=lr))
    dm = UnlabelledDataModule(str(root), image_size=(32, 48), crop_size=24, local_views=2,
                              batch_size=4, num_workers=0)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, dm)
    return trainer


def test_the_objective_decreases(synth_root: Path):
    """With the teacher held (momentum 1), the student learns to match it: the DINO loss
    falls. (With a moving teacher the loss on a tiny network drifts toward log(prototypes),
    the teacher's entropy rising as centering spreads it: no test of learning.)"""
    losses: list[float] = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    _fit_tiny(synth_root, 60, replace(SMALL, momentum=1.0), 3e-3, Watch())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.3, (first, last)


def test_the_teacher_is_the_students_moving_average(synth_root: Path):
    seen: dict = {}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # callbacks run before the module's hook: the student has stepped, the teacher
            # not yet moved; the module's hook then moves it with this momentum
            if trainer.global_step == 3:
                seen["m"] = pl_module.momentum_now()
                seen["student"] = [p.detach().clone() for p in pl_module.student.parameters()]
                seen["teacher"] = [p.detach().clone() for p in pl_module.teacher.parameters()]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:  # the teacher after the module's EMA step
                m = seen["m"]
                moved = 0
                for t0, s, t in zip(seen["teacher"], seen["student"],
                                    pl_module.teacher.parameters(), strict=True):
                    torch.testing.assert_close(t.detach(), m * t0 + (1 - m) * s)
                    moved += not torch.equal(t, t0)
                seen["moved"] = moved

    trainer = _fit_tiny(synth_root, 5, SMALL, 3e-3, Watch())
    assert 0.99 < seen["m"] < 1 and seen["moved"] > 0  # a real average: not a copy, not frozen
    # the collapse monitor: the teacher's entropy, between one prototype and uniform
    entropy = float(trainer.callback_metrics["train/teacher_entropy_step"])
    assert 0 < entropy < math.log(SMALL.output_dim)


class _Headless(TorchvisionDeepLabV3):
    """The stand-in without a feature map to pretrain: the contract's default
    ``forward_features``, which says so."""

    forward_features = SegmentationNetwork.forward_features


def _headless(backbone: str, **kwargs) -> _Headless:
    parts = tiny_network()
    return _Headless(SimpleNamespace(backbone=parts.backbone, classifier=parts.classifier,
                                     aux_classifier=None))


@pytest.mark.parametrize("case, expected", [
    ("empty", "no images"),
    ("not_images", "no images (.png/.jpg) found"),
    ("missing", "image folder not found"),
    ("headless", "cannot be pretrained"),
])
def test_bad_inputs_are_one_line(synth_root: Path, tmp_path: Path, capsys, monkeypatch, case,
                                 expected):
    folder = tmp_path / case
    extra: list[str] = []
    if case == "empty":
        folder.mkdir()
    elif case == "not_images":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
    if case == "headless":
        monkeypatch.setitem(registry.REGISTERED, "headless", _headless)
        extra = ["--model.network.arch", "headless"]
    else:
        extra = ["--data.unlabelled_dirs", json.dumps([str(folder)])]
    logs = tmp_path / "logs"
    assert main(pretrain_args(synth_root, logs, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert err[0].startswith("desertmind pretrain: error:")
    if case != "headless":
        assert str(folder) in err[0]
    assert not (logs / "pretrain" / "checkpoints").exists()


def _one_run(network: Network, tmp_path: Path, root: Path, **kwargs) -> tuple[
        PretrainModule, dict, dict]:
    """Two steps of pretraining ``network`` at 64x64 crops (4x4 patches of 16): the module,
    the logged metrics and the saved checkpoint."""
    L.seed_everything(0, verbose=False)
    module = PretrainModule(network, objective=SMALL, **kwargs)
    dm = UnlabelledDataModule(str(root), image_size=(48, 80), crop_size=64, local_views=2,
                              batch_size=2, num_workers=0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "pretrained.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module, metrics, read_checkpoint(tmp_path / "pretrained.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("backbone, method", [
    ("tu-vit_tiny_patch16_224", "dino+ibot"),  # timm's VisionTransformer: lightly masks it
    ("tu-vit_small_patch16_dinov3", "dino"),  # timm's Eva (rotary): lightly's wrapper cannot
])
def test_plain_vits_add_masked_patches_where_lightly_can_mask_them(synth_root: Path,
                                                                  tmp_path: Path, backbone,
                                                                  method):
    module, metrics, ckpt = _one_run(Network("dpt", backbone), tmp_path, synth_root)
    assert module.method == method and ckpt[PRETRAINING_KEY]["method"] == method
    assert ("train/patch_loss_step" in metrics) is (method == "dino+ibot")
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    if method == "dino+ibot":
        assert metrics["train/patch_loss_step"] > 0


@pytest.mark.slow
def test_a_pretrained_encoder_continues_through_adapters_and_is_saved_merged(synth_root: Path,
                                                                             tmp_path: Path):
    """ExPLoRA's recipe: adapters plus the last block train, nothing else of the encoder; the
    checkpoint's encoder is the teacher with its adapters folded in (plain layers), which a
    phase without adapters and one with its own both load."""
    network = Network("dpt", "tu-vit_tiny_patch16_224")
    module, _, ckpt = _one_run(network, tmp_path, synth_root, adapters=LoRA(rank=4),
                               unfrozen_blocks=1)
    last = {id(p) for p in module.student.encoder_layers()[-1]}
    for name, p in module.student.encoder.named_parameters():
        assert p.requires_grad is ("lora_" in name or id(p) in last), name
    saved = ckpt[PRETRAINED_ENCODER_KEY]["state_dict"]
    assert not any("lora_" in k or "base_layer" in k for k in saved)
    plain = registry.build(network).eval()
    load_pretrained_encoder(plain, ckpt[PRETRAINED_ENCODER_KEY], "pretrained.ckpt")
    teacher = module.teacher.eval()
    images = torch.rand(2, 3, 32, 48) * 255
    with torch.no_grad():
        torch.testing.assert_close(plain.features(images), teacher.features(images),
                                   atol=1e-4, rtol=1e-4)
    adapted = registry.build(replace(network, lora=LoRA(rank=8)))
    load_pretrained_encoder(adapted, ckpt[PRETRAINED_ENCODER_KEY], "pretrained.ckpt")


def test_make_pretrain_then_phases_from_it(tmp_path: Path, capsys):
    """``make pretrain UNLABELLED="A B"`` gives the pretraining both folders, and ``make phases
    PRETRAINED=1`` pretrains first and starts phase 1 from its checkpoint."""
    import shlex
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    logs = tmp_path / "logs"
    installed = tmp_path / "installed"
    installed.touch()

    def commands(*target: str) -> list[list[str]]:
        dry = subprocess.run(["make", "-n", "-C", str(repo), *target, f"LOGS={logs}",
                              f"STAMP={installed}", "DM=desertmind"], capture_output=True,
                             text=True, check=True).stdout.replace("\\\n", " ")
        return [shlex.split(line)[1:] for line in dry.splitlines()
                if line.startswith("desertmind ")]

    (pretrain,) = commands("pretrain", f"DATA={tmp_path}",
                           "UNLABELLED=data/offroad/testImages data/more")
    with pytest.raises(SystemExit):
        main([*pretrain, "--print_config"])
    printed = capsys.readouterr().out
    assert "- data/offroad/testImages\n" in printed and "- data/more\n" in printed
    chain = commands("phases", "DATA=data/offroad", "PRETRAINED=1")
    assert chain[0][0] == "pretrain"
    ckpt = str(logs / "pretrain" / "checkpoints" / "pretrained.ckpt")
    assert chain[1][0] == "fit" and chain[1][chain[1].index("--model.init_from") + 1] == ckpt
    assert "--model.init_from" not in commands("phase1", "DATA=data/offroad")[0]


def test_lightning_idioms_work(synth_root: Path, tmp_path: Path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    monkeypatch.chdir(tmp_path)
    assert main(pretrain_args(synth_root, logs, "--trainer.fast_dev_run", "true")) == 0
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run writes nothing
    assert main(pretrain_args(synth_root, logs, "--trainer.logger", "false")) == 0
    assert (tmp_path / "checkpoints" / "pretrained.ckpt").is_file()  # Lightning's default
    assert "LearningRateMonitor left out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*pretrain_args(synth_root, logs), "--print_config"])
    assert "unlabelled_dirs: []" in capsys.readouterr().out
