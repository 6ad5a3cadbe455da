"""Test-time adaptation: EM class priors (Saerens et al.), AdaBN, and how test / predict use
them from a checkpoint and say that they did."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from desertmind.data.classes import CLASS_NAMES
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.synth import generate
from desertmind.errors import ConfigError
from desertmind.models.adaptation import (
    adapt_batchnorm,
    em_priors,
    prior_shift,
    restore_batchnorm,
    shift_scores,
)
from desertmind.models.trained import SOURCE_PRIORS_KEY, read_checkpoint
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY


def _posteriors(true_priors: list[float], source: list[float], n: int = 60000) -> torch.Tensor:
    """Posteriors under ``source`` priors of pixels drawn with ``true_priors``: 1-D features,
    class c ~ N(2c, 1), the Bayes posterior a calibrated classifier trained on ``source``
    would give."""
    g = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor(true_priors), n, replacement=True, generator=g)
    x = 2.0 * labels + torch.randn(n, generator=g)
    means = 2.0 * torch.arange(len(source))
    likelihood = torch.exp(-0.5 * (x[:, None] - means[None]) ** 2)
    post = likelihood * torch.tensor(source)
    return post / post.sum(1, keepdim=True)


def test_em_recovers_the_target_priors_from_posteriors_alone():
    source = [0.5, 0.3, 0.2]
    target = [0.1, 0.1, 0.8]
    estimated = em_priors(_posteriors(target, source), torch.tensor(source))
    torch.testing.assert_close(estimated, torch.tensor(target), atol=0.02, rtol=0)
    # the plain average of the posteriors, what EM starts from, is far off
    naive = _posteriors(target, source).mean(0)
    assert (naive - torch.tensor(target)).abs().max() > 0.05


def test_a_class_absent_from_the_target_gets_a_prior_near_zero_without_being_named():
    source = [0.4, 0.3, 0.3]
    estimated = em_priors(_posteriors([0.5, 0.5, 0.0], source), torch.tensor(source))
    assert estimated[2] < 0.01 < estimated[0]


def test_shifted_logits_and_shifted_probabilities_agree():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 10, 4, 5, generator=g)
    shift = prior_shift(torch.full((10,), 0.1), torch.linspace(0.01, 0.19, 10))
    from_logits = shift_scores(logits, shift, probabilities=False).softmax(1)
    from_probs = shift_scores(logits.softmax(1), shift, probabilities=True)
    torch.testing.assert_close(from_logits, from_probs)
    # a uniform target over a skewed source favours the classes the source made rare
    assert shift[0] > 0 > shift[-1]
    assert shift_scores(logits, None, probabilities=False) is logits


class _Net(nn.Module):
    """Conv + BatchNorm, then global pooling + BatchNorm (one value per channel and image)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.pool_bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.bn(self.conv(x)))
        return y + self.pool_bn(y.mean((2, 3), keepdim=True))


def test_adabn_takes_the_target_statistics_and_gives_the_source_ones_back():
    torch.manual_seed(0)
    net = _Net().eval()
    source = {k: v.clone() for k, v in net.state_dict().items()}
    target = [torch.randn(2, 3, 8, 8) * 3 + 5 for _ in range(3)] + [torch.randn(1, 3, 8, 8)]
    saved = adapt_batchnorm(net, iter(target))
    assert not net.training and not net.bn.training and not net.drop.training
    with torch.no_grad():
        features = torch.cat([net.conv(x) for x in target[:3]])
    # a cumulative average of the batches' means: close to the target features' mean
    torch.testing.assert_close(net.bn.running_mean, features.mean((0, 2, 3)), atol=0.35,
                               rtol=0.1)
    assert (net.bn.running_mean - source["bn.running_mean"]).abs().max() > 1
    # the pooled layer measured the batches of two and skipped the single image
    assert not torch.equal(net.pool_bn.running_var, source["pool_bn.running_var"])
    for name in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        assert torch.equal(net.state_dict()[name], source[name])
    restore_batchnorm(net, saved)
    for name, value in net.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert net.bn.momentum == 0.1


def test_a_network_without_batchnorm_is_left_as_it_is():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.LayerNorm([2, 4, 4])).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert adapt_batchnorm(net, [torch.randn(2, 3, 4, 4)]) == {}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def shifted_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("adapt") / "d", n_train=8, n_val=4, height=48,
                    width=80, seed=6, n_shifted=6)


def _trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_train_batches=3)


def test_validation_keeps_the_source_priors_and_test_time_tools_leave_the_network_as_trained(
        shifted_root: Path):
    dm = OffroadDataModule(str(shifted_root), batch_size=2, num_workers=0,
                           test_dir="test_shifted")
    module = SegmentationModule(TINY, evaluation={"adapt_bn": True, "class_priors": "em"})
    with pytest.raises(ConfigError, match="class priors the network implies"):
        _trainer().test(module, dm, verbose=False)  # never validated: no source priors
    _trainer().fit(module, dm)
    priors = module.evaluation.source_priors.clone()
    # the mean softmax over the val pixels: a distribution over the ten classes
    assert priors.min() > 0 and abs(float(priors.sum()) - 1) < 1e-4
    state = {k: v.clone() for k, v in module.state_dict().items()}
    _trainer().test(module, dm, verbose=False)
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    assert torch.equal(module.evaluation.source_priors, priors)  # a test changes none of them
    report = module.evaluation.adaptation
    assert report["images"] == 6 and "AdaBN" in report["batchnorm"]
    priors = report["class_priors"]
    assert set(priors) == set(CLASS_NAMES) and abs(sum(priors.values()) - 1) < 1e-3
    record = module.evaluation.record()
    assert (record["transductive"], record["training"], record["test_time"]) == (
        True, None, ["batchnorm", "class_priors"])
    assert module.evaluation.shift is None  # only for the run that estimated it


@pytest.fixture(scope="module")
def adapted_ckpt(shifted_root: Path, tmp_path_factory, phase_args) -> Path:
    """A phase-1 checkpoint trained to be evaluated with AdaBN and EM class priors."""
    from desertmind.cli.main import main

    logs = tmp_path_factory.mktemp("adapted") / "logs"
    assert main(["fit", *phase_args("phase1", shifted_root, logs),
                 "--model.evaluation.adapt_bn", "true",
                 "--model.evaluation.class_priors", "em"]) == 0
    return logs / "phase1" / "checkpoints" / "best.ckpt"


def test_test_uses_the_checkpoints_adaptation_and_records_it(shifted_root: Path, tmp_path: Path,
                                                            adapted_ckpt: Path):
    from desertmind.cli.main import main

    priors = read_checkpoint(adapted_ckpt)[SOURCE_PRIORS_KEY]
    assert len(priors) == len(CLASS_NAMES) and sum(priors) == pytest.approx(1, abs=1e-4)
    out = tmp_path / "adapted"
    assert main(["test", "--ckpt_path", str(adapted_ckpt), "--data.root", str(shifted_root),
                 "--data.test_dir", "test_shifted", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["transductive"] is True and metrics["training"] is None
    assert metrics["test_time"] == ["batchnorm", "class_priors"]
    assert set(metrics["adaptation"]["class_priors"]) == set(CLASS_NAMES)
    # the user's option wins over the checkpoint's
    plain = tmp_path / "plain"
    assert main(["test", "--ckpt_path", str(adapted_ckpt), "--data.root", str(shifted_root),
                 "--data.test_dir", "test_shifted", "--out", str(plain),
                 "--model.evaluation.adapt_bn", "false",
                 "--model.evaluation.class_priors", "train"]) == 0
    metrics = json.loads((plain / "metrics.json").read_text())
    assert metrics["transductive"] is False and metrics["adaptation"] == {}


def test_predict_adapts_to_the_folder_it_predicts_and_prints_the_priors(
        shifted_root: Path, tmp_path: Path, adapted_ckpt: Path, capsys, caplog, recwarn):
    from desertmind.cli.main import main

    out = tmp_path / "pred"
    assert main(["predict", "--ckpt_path", str(adapted_ckpt), "--data.root", str(shifted_root),
                 "--data.predict_dir", str(shifted_root / "test_shifted" / "Color_Images"),
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "desertmind predict: class priors estimated by EM on 6 images: Trees " in err
    assert len(list((out / "raw").glob("*.png"))) == 6
    # from a checkpoint alone, an evaluation draws nothing at random: no seed lines
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn]
    assert not [line for line in said if "Seed set to" in line or "No seed found" in line]


def test_a_predictor_adapts_when_given_images_and_the_callers_options_win(
        shifted_root: Path, adapted_ckpt: Path):
    from desertmind.data.imageio import read_image
    from desertmind.inference.predictor import Predictor
    from desertmind.models.adaptation import batchnorm_layers
    from desertmind.models.prediction import EvalOptions

    images = [read_image(p) for p in
              sorted((shifted_root / "test_shifted" / "Color_Images").glob("*.png"))]
    predictor = Predictor(adapted_ckpt)
    options = predictor.evaluation.options
    assert options.adapt_bn and options.class_priors == "em"
    before = {n: m.running_mean.clone() for n, m in batchnorm_layers(predictor.network).items()}
    as_trained = predictor.predict(images[0])
    assert predictor.evaluation.shift is None and predictor.adapted_to == 0
    predictor.adapt(images, "test_shifted")
    assert predictor.adapted_to == 6 and predictor.evaluation.shift is not None
    after = batchnorm_layers(predictor.network)
    assert any(not torch.equal(after[n].running_mean, v) for n, v in before.items())
    assert predictor.predict(images[0]).shape == as_trained.shape
    own = Predictor(adapted_ckpt, evaluation=EvalOptions())
    own.adapt(images)  # the caller's options adapt nothing
    assert own.evaluation.shift is None and own.adapted_to == 0


def test_an_unknown_class_prior_mode_is_refused():
    with pytest.raises(ConfigError, match="class_priors='oracle'"):
        SegmentationModule(TINY, evaluation={"class_priors": "oracle"})


def test_the_viewer_adapts_to_the_split_it_shows(shifted_root: Path, adapted_ckpt: Path):
    from desertmind.app.viewer import Viewer

    viewer = Viewer(adapted_ckpt, str(shifted_root), "test_shifted")
    assert viewer.predictor.adapted_to == 6 and viewer.predictor.evaluation.shift is not None
    plain = Viewer(adapted_ckpt)  # no images to adapt to: predicts as trained
    assert plain.predictor.adapted_to == 0 and plain.predictor.evaluation.shift is None
