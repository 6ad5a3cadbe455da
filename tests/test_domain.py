"""Label-free tools for the test desert: domain randomisation, appearance transfer toward
unlabelled target images, and the guarantee that target masks are never read."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.imageio import read_image
from desertmind.data.synth import generate
from desertmind.data.transforms import build_transform
from desertmind.errors import ConfigError
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY


@pytest.fixture(scope="module")
def two_deserts(tmp_path_factory) -> Path:
    """Source train/val and a labelled shifted split, 144x256 (FDA swaps a window of the
    spectrum proportional to the image size: too small an image leaves it nothing to swap)."""
    return generate(tmp_path_factory.mktemp("deserts") / "d", n_train=8, n_val=4, height=144,
                    width=256, seed=5, n_shifted=6)


def _mean_rgb(images: list[torch.Tensor]) -> np.ndarray:
    return np.mean([im.float().mean((1, 2)).numpy() for im in images], axis=0)


@pytest.mark.parametrize("kind", ["fda", "histogram"])
def test_appearance_transfer_moves_source_images_toward_the_target(two_deserts: Path,
                                                                   kind: str, monkeypatch):
    # without seed_everything's seed (an earlier test's run leaves it in the environment) the
    # data module draws its augmentation seed from torch's RNG
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)

    def train_images(transfer: str) -> list:
        torch.manual_seed(0)
        dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0,
                               target_dir="test_shifted", target_transfer=transfer,
                               target_transfer_p=1.0)
        dm.setup("fit")
        ds = dm.datasets["train"]
        return [ds[i]["image"] for i in range(len(ds))]

    source, moved = _mean_rgb(train_images("none")), _mean_rgb(train_images(kind))
    target = np.mean([read_image(p).reshape(-1, 3).mean(0)
                      for p in (two_deserts / "test_shifted" / "Color_Images").glob("*.png")],
                     axis=0)
    assert np.abs(moved - target).sum() < 0.6 * np.abs(source - target).sum()


def test_domain_randomisation_changes_appearance_not_labels(two_deserts: Path):
    dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0,
                           train_preset="domain_random")
    dm.setup("fit")
    plain = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0)
    plain.setup("fit")
    b = plain.datasets["train"][0]
    changed = []
    for seed in range(4):  # four fixed draws: each keeps the labels, light and colour change
        a = dm.datasets["train"][(0, seed)]
        flipped = not (a["mask"] == b["mask"]).all()
        assert (a["mask"] == (b["mask"].flip(-1) if flipped else b["mask"])).all()
        changed.append(not (a["image"] == (b["image"].flip(-1) if flipped else b["image"])).all())
    assert all(changed)
    t = build_transform("domain_random", seed=0)
    assert "RandomGamma" in repr(t) and "RGBShift" in repr(t) and "GaussNoise" in repr(t)


def test_domain_randomise_adds_the_randomisation_after_a_cropping_preset(two_deserts: Path):
    # the overlay's switch keeps a phase's recipe (here phase 3's crops) and randomises light
    # and colour on top: crops of the crop size, labels untouched by the colour steps
    t = build_transform("crop", crop_size=32, seed=0, randomise=True)
    steps = [type(s).__name__ for s in t.transforms]
    assert steps.index("RandomCrop") < steps.index("RandomGamma")
    assert "RGBShift" in steps and "GaussNoise" in steps
    assert "RandomGamma" not in repr(build_transform("crop", crop_size=32))
    assert repr(build_transform("domain_random", seed=0, randomise=True)) == repr(
        build_transform("domain_random", seed=0))  # not added twice
    dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0, train_preset="crop",
                           crop_size=32, domain_randomise=True)
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)


def test_transfer_without_target_images_is_refused():
    with pytest.raises(ConfigError, match="data.target_dir"):
        OffroadDataModule(target_transfer="fda")


def test_self_training_never_reads_target_masks(tmp_path: Path, phase_args):
    from desertmind.cli.main import main
    from desertmind.models.trained import read_checkpoint, training_record

    root = generate(tmp_path / "d", n_train=8, n_val=4, height=48, width=80, seed=2, n_shifted=6)
    for mask in (root / "test_shifted" / "Segmentation").glob("*.png"):
        mask.write_bytes(b"not a png: any read of a target mask fails the run")
    logs = tmp_path / "logs"
    assert main(["fit", *phase_args("phase1", root, logs)]) == 0
    teacher = logs / "phase1" / "checkpoints" / "best.ckpt"
    configs = Path(__file__).resolve().parents[1] / "configs"
    args = ["fit", *phase_args("phase1", root, logs), "-c", str(configs / "self_training.yaml"),
            "--model.init_from", str(teacher), "--data.target_dir", "test_shifted",
            "--trainer.logger.init_args.save_dir", str(logs)]
    assert main(args) == 0
    ckpt = read_checkpoint(logs / "self_training" / "checkpoints" / "best.ckpt")
    assert not any(k.startswith("pseudo") or "teacher" in k for k in ckpt["state_dict"])
    # the checkpoint remembers that training saw the target images (a later test says so)
    assert training_record(ckpt)[1] == "self-training batches from test_shifted"
    events = _scalars(next((logs / "self_training").glob("version_*")))
    assert "train/pseudo_loss_epoch" in events and 0 < events["train/pseudo_kept"] <= 1
    # the best checkpoint is chosen on the source validation split
    best = [s for s in ckpt["callbacks"].values() if "best_model_score" in s][0]
    assert best["monitor"] == "val/mIoU"


@pytest.mark.slow
def test_self_training_teaches_a_lora_adapted_foundation_backbone(tmp_path: Path, phase_args):
    """The teacher is an EMA copy of a ViT whose LoRA adapters train and whose base is frozen
    (no BatchNorm to average): the pseudo-labels train the adapters, never the frozen base."""
    from desertmind.cli.main import main
    from desertmind.models.trained import read_checkpoint

    root = generate(tmp_path / "d", n_train=8, n_val=4, height=48, width=80, seed=4, n_shifted=4)
    configs = Path(__file__).resolve().parents[1] / "configs"
    logs = tmp_path / "logs"
    small = ["--model.network.backbone", "tu-vit_small_patch16_dinov3",
             "--model.network.weights", "none", "--trainer.precision", "32-true"]
    recipe = ["-c", str(configs / "recipes" / "dinov3_vitb_dpt_lora.yaml"),
              *phase_args("phase1", root, logs, arch=None)[4:], *small]
    assert main(["fit", *recipe]) == 0
    (teacher,) = logs.glob("recipes/*/checkpoints/best.ckpt")
    assert main(["fit", *recipe, "-c", str(configs / "self_training.yaml"),
                 "--model.init_from", str(teacher), "--data.target_dir", "test_shifted",
                 "--trainer.logger.init_args.name", "taught"]) == 0
    before = read_checkpoint(teacher)["state_dict"]
    # the weights trained, not their EMA (an EMA of an unchanged weight drifts by rounding)
    after = read_checkpoint(logs / "taught" / "checkpoints" / "last.ckpt")["current_model_state"]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    encoder = {k for k in moved if ".encoder." in k}
    assert encoder and all("lora_" in k for k in encoder) and moved - encoder
    events = _scalars(next((logs / "taught").glob("version_*")))
    assert "train/pseudo_loss_epoch" in events and 0 < events["train/pseudo_kept"] <= 1


def _scalars(run: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: ea.Scalars(tag)[-1].value for tag in ea.Tags()["scalars"]}


def test_pseudo_labels_keep_the_confident_and_a_share_of_every_class():
    from desertmind.training.self_training import PseudoLabeler, pseudo_label_loss

    class Fixed(torch.nn.Module):  # logits given by the test, whatever the input
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = torch.nn.Parameter(logits)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.logits

    logits = torch.zeros(1, 3, 1, 6)
    logits[0, 0, 0, :4] = torch.tensor([9.0, 8.0, 0.5, 0.4])  # class 0: 2 sure, 2 unsure
    logits[0, 2, 0, 4:] = torch.tensor([0.6, 0.3])  # class 2: both unsure
    strict = PseudoLabeler(Fixed(logits), threshold=0.9, class_balance=False)
    assert strict.label(torch.zeros(1)).tolist() == [[[0, 0, 255, 255, 255, 255]]]
    balanced = PseudoLabeler(Fixed(logits), threshold=0.9, class_balance=True)
    labels = balanced.label(torch.zeros(1))
    assert labels[0, 0, 4].item() == 2  # the rare class keeps its more confident half
    assert (labels[0, 0, :2] == 0).all()
    nothing = torch.full((1, 1, 6), 255)
    loss = pseudo_label_loss(logits.requires_grad_(), nothing)
    assert loss.item() == 0 and loss.requires_grad  # no NaN when the teacher keeps nothing


def test_an_ema_teacher_moves_toward_the_student():
    from desertmind.training.self_training import PseudoLabeler

    student = torch.nn.Linear(2, 2)
    fixed = PseudoLabeler(student, ema_decay=None)
    ema = PseudoLabeler(student, ema_decay=0.9)
    before = ema.teacher.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    fixed.update(student), ema.update(student)
    assert torch.equal(fixed.teacher.module.weight, before)
    torch.testing.assert_close(ema.teacher.module.weight, before + 0.1)
    ema.update(student)  # the next step moves it a tenth of the remaining way again
    torch.testing.assert_close(ema.teacher.module.weight, before + 0.19)


def test_the_domain_generalisation_overlay_trains_and_a_shifted_split_is_scored(
        tmp_path: Path, phase_args):
    import json

    from desertmind.cli.main import main
    from desertmind.models.trained import read_checkpoint

    root = generate(tmp_path / "d", n_train=8, n_val=4, height=48, width=80, seed=4, n_shifted=4)
    configs = Path(__file__).resolve().parents[1] / "configs"
    logs = tmp_path / "logs"
    # the overlay, and a test-time tool given at fit: the checkpoint keeps it for test
    assert main(["fit", *phase_args("phase1", root, logs),
                 "-c", str(configs / "domain_generalisation.yaml"),
                 "--model.evaluation.adapt_bn", "true"]) == 0
    out = tmp_path / "scored"
    best = logs / "phase1" / "checkpoints" / "best.ckpt"
    saved = read_checkpoint(best)
    assert saved["datamodule_hyper_parameters"]["domain_randomise"] is True
    assert main(["test", "--ckpt_path", str(best), "--data.test_dir", "test_shifted",
                 "--out", str(out), "--model.evaluation.predict_classes",
                 "[Trees, Lush Bushes, Dry Grass, Dry Bushes, Rocks, Landscape, Sky]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 4 and 0 <= metrics["test/mIoU"] <= 1
    # the stored test-time AdaBN used the shifted images
    assert metrics["transductive"] is True and metrics["training"] is None
    assert metrics["test_time"] == ["batchnorm"]
    # the restricted figure is labelled, with the ten-class one beside it
    assert metrics["predict_classes"] == ["Trees", "Lush Bushes", "Dry Grass", "Dry Bushes",
                                          "Rocks", "Landscape", "Sky"]
    assert 0 <= metrics["test/mIoU_all_classes"] <= 1


def test_a_python_fit_with_target_images_records_it_in_its_checkpoint(two_deserts: Path,
                                                                      tmp_path: Path):
    """No CLI: a plain Trainer.fit of the module and data module (as benchmarks/domain_gap.py
    does) writes the target use into its checkpoint, and a phase started from it says so
    too; evaluating it reports a transductive run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from desertmind.models.trained import load_trained

    def fit(module: SegmentationModule, folder: str, **data) -> Path:
        dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0, **data)
        saved = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True)
        L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_train_batches=2,
                  limit_val_batches=1, callbacks=[saved]).fit(module, dm)
        return Path(saved.last_model_path)

    first = fit(SegmentationModule(TINY), "first", target_transfer="histogram",
                target_dir="test_shifted/Color_Images")
    record = load_trained(first).evaluation().record()
    assert record["transductive"] is True
    assert record["training"] == "histogram transfer from test_shifted/Color_Images"
    later = fit(SegmentationModule(TINY, init_from=str(first)), "later")
    training = load_trained(later).evaluation().record()["training"]
    assert training.startswith("histogram transfer from test_shifted") and str(first) in training
    plain = fit(SegmentationModule(TINY), "plain")
    assert load_trained(plain).evaluation().record()["transductive"] is False
