"""torchvision DeepLabV3 behind the contract: shapes per backbone, torchvision's own state-dict
keys, and pretrained weights that never fall back to random."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    deeplabv3_mobilenet_v3_large,
)

from desertmind.errors import WeightsUnavailableError
from desertmind.models import build_network
from desertmind.models.deeplabv3 import build_deeplabv3


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50", "resnet101"])
def test_forward_shapes_per_backbone(backbone: str):
    model = build_network("deeplabv3", backbone, aux_loss=True).eval()
    with torch.no_grad():
        logits, aux = model.forward_with_aux(torch.randn(1, 3, 40, 56))
    assert logits.shape == (1, 10, 40, 56) and aux.shape == (1, 10, 40, 56)


def test_without_aux_head_there_is_no_aux_output():
    model = build_network("deeplabv3", "mobilenet_v3_large").eval()
    with torch.no_grad():
        assert model.forward_with_aux(torch.randn(1, 3, 32, 32))[1] is None
    assert not model.has_aux and not list(model.aux_parameters())


def test_state_dict_keys_and_logits_are_torchvisions():
    """Checkpoints of earlier versions (plain torchvision keys) load, and give the same logits."""
    torch.manual_seed(0)
    reference = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=10,
                                            aux_loss=True).eval()
    model = build_network("deeplabv3", "mobilenet_v3_large", aux_loss=True).eval()
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        out = reference(x)  # torchvision takes normalised input; ours RGB 0-255, scaled inside
        logits, aux = model.forward_with_aux(x * model.std + model.mean)
    torch.testing.assert_close(logits, out["out"])
    torch.testing.assert_close(aux, out["aux"])


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def test_offline_coco_weights_fail_with_the_file_and_where_to_put_it(torch_home, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as e:
        build_network("deeplabv3", "mobilenet_v3_large", weights="coco")
    url = DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.url
    expected = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    assert url in str(e.value) and str(expected) in str(e.value)
    assert "TORCH_HOME" in str(e.value)


def test_coco_weights_load_from_the_torch_cache_and_get_new_last_layers(torch_home):
    reference = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                            aux_loss=True)
    url = DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.url
    target = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    model = build_deeplabv3("mobilenet_v3_large", num_classes=10, weights="coco", aux_loss=True,
                            input_scaling="imagenet")
    ref = reference.state_dict()
    got = model.state_dict()
    assert torch.equal(got["backbone.0.0.weight"], ref["backbone.0.0.weight"])
    assert torch.equal(got["classifier.0.convs.0.0.weight"], ref["classifier.0.convs.0.0.weight"])
    assert model.classifier[-1].out_channels == 10 and model.aux_classifier[-1].out_channels == 10
    assert build_deeplabv3("mobilenet_v3_large", num_classes=10, weights="coco",
                           aux_loss=False, input_scaling="imagenet").aux_classifier is None
