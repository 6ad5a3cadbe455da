"""Predict writer, TTA, sliding windows, class restriction and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from desertmind.cli.main import main
from desertmind.data.classes import RAW_IDS
from desertmind.data.imageio import read_image, read_mask, write_png
from desertmind.models.network import SegmentationNetwork
from desertmind.models.prediction import EvalOptions, restrict, sliding_window, tta_probs
from desertmind.models.registry import Network
from desertmind.models.trained import load_trained, read_checkpoint, read_settings
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY


def module_of(ckpt: Path, options: EvalOptions | None = None) -> SegmentationModule:
    """The checkpoint's network in a SegmentationModule with ``options``, as ``validate``
    builds it (its weights loaded), in eval mode."""
    module = SegmentationModule(Network(**read_settings(ckpt).network),
                                evaluation=options or EvalOptions())
    module.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    return module.eval()


@pytest.fixture(scope="module")
def trained(phase1_run) -> tuple[Path, list[str]]:
    """The shared phase-1 checkpoint, and the overrides that built it."""
    ckpt, _, args = phase1_run
    return ckpt, args


def test_predict_writes_three_pngs_per_image_at_original_size(synth_root, trained, tmp_path,
                                                              capsys, caplog):
    ckpt, args = trained
    out = tmp_path / "out"
    folder = synth_root / "val" / "Color_Images"  # a plain image folder, no masks needed
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder),
                 "--out", str(out)]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    # Lightning's advertisement for a cloud logger is not among what the run logs
    assert not [r for r in caplog.records if "litlogger" in r.getMessage()]
    names = sorted(p.name for p in folder.iterdir())
    for sub in ("raw", "color", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == names  # no temp files left
    for name in names:
        raw = read_mask(out / "raw" / name)  # refuses anything but single-channel uint16
        assert raw.shape == (48, 80)  # original size, though the model saw 32x48
        assert set(np.unique(raw)) <= set(RAW_IDS)
        assert read_image(out / "color" / name).shape == (48, 80, 3)
        assert read_image(out / "overlay" / name).shape == (48, 80, 3)


def test_predict_without_out_is_refused(synth_root, trained, capsys):
    ckpt, args = trained
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir",
                 str(synth_root / "val")]) == 2
    assert "--out" in capsys.readouterr().err


def test_predict_names_an_unreadable_image(synth_root, trained, tmp_path, capsys):
    ckpt, args = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder),
                 "--out", str(tmp_path / "o")]) == 2
    assert str(folder / "broken.png") in capsys.readouterr().err


def test_predict_at_full_size_writes_a_folder_of_mixed_sizes(synth_root, trained, tmp_path):
    ckpt, args = trained
    folder = tmp_path / "any"
    folder.mkdir()
    sizes = {"wide": (40, 96), "tall": (64, 48), "small": (32, 32)}
    for name, (h, w) in sizes.items():
        write_png(folder / f"{name}.png", np.random.default_rng(0).integers(
            0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder),
                 "--data.image_size", "null", "--data.eval_batch_size", "2",
                 "--out", str(out)]) == 0
    for name, size in sizes.items():
        assert read_mask(out / "raw" / f"{name}.png").shape == size


@pytest.mark.parametrize("content", [b"", b"hello, I am text"], ids=["empty", "text"])
def test_an_error_in_a_dataloader_worker_is_its_own_one_line(synth_root, trained, tmp_path,
                                                              capsys, content):
    ckpt, args = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "fake.png").write_bytes(content)
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder),
                 "--data.num_workers", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(
        f"desertmind predict: error: {folder / 'fake.png'}")
    assert "Original Traceback" not in err and "DataLoader worker" not in err


def test_images_in_subfolders_are_counted_not_skipped_silently(synth_root, trained, tmp_path):
    ckpt, args = trained
    folder = tmp_path / "imgs"
    (folder / "day2").mkdir(parents=True)
    source = next((synth_root / "val" / "Color_Images").iterdir())
    (folder / "top.png").write_bytes(source.read_bytes())
    (folder / "day2" / "nested.png").write_bytes(source.read_bytes())
    with pytest.warns(UserWarning, match=r"1 subfolder\(s\) not read \(day2\)"):
        assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir",
                     str(folder), "--data.num_workers", "0", "--out", str(tmp_path / "o")]) == 0
    assert [p.name for p in (tmp_path / "o" / "raw").iterdir()] == ["top.png"]


def test_test_command_reports_the_validation_metrics(synth_root, trained, capsys):
    ckpt, args = trained
    assert main(["test", *args, "--ckpt_path", str(ckpt), "--data.test_dir", "val"]) == 0
    out = capsys.readouterr().out
    for key in ("test/mIoU", "test/mIoU_per_image", "test/pixel_acc", "test/iou/Sky"):
        assert key in out


class _Positional(SegmentationNetwork):
    """Logits that depend on position, so flips and windows have something to get wrong."""

    @property
    def encoder(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def head_parameters(self):
        return iter(())

    def forward_padded(self, images, with_aux):
        n, _, h, w = images.shape
        x = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([x, -x, images[:, :1]], dim=1) * 3, None


def test_flip_tta_undoes_its_flip_and_scales_come_back_to_size():
    images = torch.rand(2, 3, 20, 30) * 255
    net = _Positional()
    plain = tta_probs(net, images)
    torch.testing.assert_close(tta_probs(net, images, flip=True)[:, 2],
                               plain[:, 2], rtol=0, atol=0.2)  # same class map, averaged
    multi = tta_probs(net, images, scales=[0.5, 1.0, 1.5], flip=True)
    assert multi.shape == (2, 3, 20, 30)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 20, 30))


def test_sliding_window_equals_whole_image_for_a_local_model():
    from tests.stand_in import tiny_network

    net = tiny_network().eval()  # 1x1 convs: every window gives the logits of the whole
    images = torch.rand(1, 3, 37, 53) * 255
    with torch.no_grad():
        torch.testing.assert_close(sliding_window(net, images, 16), net(images))
        torch.testing.assert_close(sliding_window(net, images, 64), net(images))  # clamped


def test_an_absurd_window_or_scale_costs_one_pass_or_one_line():
    """A window larger than the image is clamped to it (MMSeg's rule): one pass, not a canvas
    of the window's size; a scale that leaves no image, or too large a one, is refused."""
    from desertmind.errors import ConfigError
    from desertmind.models.prediction import window_count
    from tests.stand_in import tiny_network

    net = tiny_network().eval()
    images = torch.rand(1, 3, 37, 53) * 255
    assert window_count(540, 960, 100_000) == 1
    with torch.no_grad():
        torch.testing.assert_close(sliding_window(net, images, 100_000), net(images))
        for scale, shown in ((0.001, "0x0"), (1000.0, "53000x37000")):
            with pytest.raises(ConfigError, match=f"{scale} makes a 53x37 image {shown}"):
                tta_probs(net, images, scales=[1.0, scale])


def test_restrict_never_predicts_a_suppressed_class():
    scores = torch.randn(2, 10, 8, 8)
    preds = restrict(scores, [8, 9]).argmax(1)
    assert set(preds.unique().tolist()) <= {8, 9}
    with pytest.raises(ValueError, match="Flowers"):
        SegmentationModule(TINY, evaluation={"predict_classes": ["Sky", "Clouds"]})


def test_tta_module_evaluates_with_averaged_probabilities(trained, synth_root):
    """With TTA options, the module's validation step scores averaged probabilities and its
    loss is their negative log-likelihood; without, the network's logits and their
    cross-entropy."""
    from desertmind.data.datamodule import OffroadDataModule

    ckpt, _ = trained
    dm = OffroadDataModule(str(synth_root), num_workers=0, image_size=(32, 48), batch_size=2)
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    tta = module_of(ckpt, EvalOptions(tta_scales=[0.75, 1.0], tta_flip=True))
    plain = module_of(ckpt)
    with torch.no_grad():
        loss, probs = tta.model_step(batch)
        plain_loss, logits = plain.model_step(batch)
        preds = tta.validation_step(batch, 0)["preds"]
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 48))
    torch.testing.assert_close(loss, F.nll_loss(probs.log(), batch["mask"], ignore_index=255))
    torch.testing.assert_close(preds, probs.argmax(1))
    assert not torch.allclose(logits.sum(1), torch.ones(2, 32, 48))
    torch.testing.assert_close(plain_loss, F.cross_entropy(logits, batch["mask"],
                                                           ignore_index=255))


@pytest.mark.parametrize("fmt", ["onnx"])
def test_export_matches_eager(trained, tmp_path, fmt):
    ckpt, _ = trained
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--ckpt", str(ckpt), "--format", fmt, "--out", str(out),
                 "--height", "64", "--width", "96"]) == 0
    network = load_trained(ckpt).network
    for shape in ((1, 3, 64, 96), (2, 3, 48, 80)):  # dynamic batch, height and width
        x = torch.rand(*shape) * 255  # plain RGB: the input scaling is inside the graph
        with torch.no_grad():
            eager = network(x).numpy()
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == eager.shape
        assert np.abs(got - eager).max() < 1e-3
        assert (got.argmax(1) == eager.argmax(1)).mean() > 0.999
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--ckpt", str(tmp_path / "x.ckpt"), "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_caller_predicts_through_one_path_with_per_call_options(trained, synth_root,
                                                                      tmp_path):
    """The module's own validation and predict steps, the Predictor and the split ranking give
    the same masks for the same images and options; the checkpoint's saved evaluation options
    are used only when asked for."""
    from desertmind.data.datamodule import OffroadDataModule
    from desertmind.inference.predictor import Predictor
    from desertmind.inference.ranking import SplitRanking

    ckpt, _ = trained
    state = read_checkpoint(ckpt)
    state["hyper_parameters"]["evaluation"] = {"predict_classes": ["Sky", "Landscape"],
                                               "tta_flip": True}
    restricted = tmp_path / "restricted.ckpt"
    torch.save(state, restricted)
    plain = Predictor(restricted)
    assert plain.evaluation.options == EvalOptions()  # by default: validate without options
    saved = Predictor(restricted, evaluation="checkpoint")
    assert saved.evaluation.options.tta_flip
    options = saved.options(tta_flip=False)
    assert options.predict_classes == ["Sky", "Landscape"] and not options.tta_flip

    module = module_of(ckpt, options)
    dm = OffroadDataModule(str(synth_root), num_workers=0, image_size=(32, 48), batch_size=4,
                           predict_dir=str(synth_root / "val"))
    dm.setup("validate")
    dm.setup("predict")
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    pred = dm.on_after_batch_transfer(next(iter(dm.predict_dataloader())), 0)
    with torch.no_grad():
        by_validation = module.validation_step(val, 0)["preds"]
        by_predict = module.predict_step(pred, 0)
    ranking = SplitRanking(load_trained(ckpt).evaluation(options), dm.datasets["val"])
    for i in range(len(val["name"])):  # at the evaluation size
        np.testing.assert_array_equal(ranking.render(i)[2], by_validation[i].numpy())
    assert set(np.unique(by_validation.numpy()).tolist()) <= {8, 9}
    for name, path, mask in zip(by_predict["name"], by_predict["path"], by_predict["pred"],
                                strict=True):  # at the image's own size
        np.testing.assert_array_equal(saved.predict(read_image(path), options), mask.numpy())
        assert set(np.unique(mask.numpy()).tolist()) <= {8, 9}, name


def test_predict_reads_its_checkpoint_once(synth_root, trained, tmp_path, monkeypatch):
    """The checkpoint read for the evaluation's settings is the one Lightning restores."""
    ckpt, args = trained
    real, reads = torch.load, []

    def counted(f, *a, **k):
        reads.append(str(f))
        return real(f, *a, **k)

    monkeypatch.setattr(torch, "load", counted)
    assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir",
                 str(synth_root / "val"), "--out", str(tmp_path / "out")]) == 0
    assert reads.count(str(ckpt)) == 1


def test_predict_at_full_size_decodes_each_image_once(synth_root, trained, tmp_path,
                                                      monkeypatch):
    """The writer draws the overlay from the batch when the network saw the image at its own
    size, and reads the file again only when it was resized."""
    import desertmind.inference.writer as writer
    from desertmind.data.classes import remap
    from desertmind.data.palette import overlay

    ckpt, args = trained
    reads = []
    real = writer.read_image
    monkeypatch.setattr(writer, "read_image", lambda p: reads.append(p) or real(p))
    folder = synth_root / "val" / "Color_Images"
    for size, expected in (("null", 0), ("[32, 48]", 4)):
        out = tmp_path / f"out-{expected}"
        assert main(["predict", *args, "--ckpt_path", str(ckpt), "--data.predict_dir",
                     str(folder), "--out", str(out), "--data.image_size", size]) == 0
        assert len(reads) == expected
        reads.clear()
        for image in folder.iterdir():  # the overlay is drawn over the image's own pixels
            ids = remap(read_mask(out / "raw" / image.name))
            np.testing.assert_array_equal(read_image(out / "overlay" / image.name),
                                          overlay(read_image(image), ids, 0.5))
