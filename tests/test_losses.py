"""Each loss against a hand computation, ignored pixels included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from desertmind.data.classes import IGNORE_INDEX
from desertmind.errors import ConfigError
from desertmind.training.losses import SoftDiceLoss, build_loss, parse_loss


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 3, (2, 3, 5), generator=g)  # class 3 never in the target
    target[0, 0, :2] = 255
    target[1, 2, 4] = 255
    return logits, target


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))


def test_ce_ignores_ignored_pixels():
    logits, target = _case()
    lp = _log_softmax(logits.numpy())
    t = target.numpy()
    nll = [-lp[n, t[n, i, j], i, j] for n, i, j in zip(*np.nonzero(t != 255), strict=True)]
    assert build_loss("ce")(logits, target).item() == pytest.approx(np.mean(nll), rel=1e-5)


def test_weighted_ce_is_the_weighted_mean_over_valid_pixels():
    logits, target = _case(1)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    lp = _log_softmax(logits.numpy())
    t = target.numpy()
    num = den = 0.0
    for n, i, j in zip(*np.nonzero(t != 255), strict=True):
        c = t[n, i, j]
        num += -w[c].item() * lp[n, c, i, j]
        den += w[c].item()
    assert build_loss("weighted_ce", w)(logits, target).item() == pytest.approx(num / den, 1e-5)


def test_dice_by_hand():
    logits, target = _case(2)
    p = torch.softmax(logits, 1).numpy()
    t = target.numpy()
    valid = t != 255
    scores = []
    for c in range(4):
        tc = (t == c) & valid
        if not tc.any():
            continue  # absent from the target: not averaged
        pc = p[:, c] * valid
        scores.append((2 * (pc * tc).sum() + 1) / (pc.sum() + tc.sum() + 1))
    expected = 1 - np.mean(scores)
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_weighted_sum_of_terms():
    logits, target = _case(3)
    w = torch.ones(4)
    combined = build_loss("weighted_ce + 0.5 dice", w)(logits, target)
    parts = build_loss("weighted_ce", w)(logits, target) + 0.5 * SoftDiceLoss()(logits, target)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-6)
    assert parse_loss("ce + 0.5 dice") == [(1.0, "ce"), (0.5, "dice")]
    assert parse_loss("2*ce") == [(2.0, "ce")]


def test_all_ignored_batch_gives_zero_dice_with_a_graph():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = SoftDiceLoss()(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_bad_specs_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="weighted_ce"):
        parse_loss("ce + focal")
    with pytest.raises(ConfigError, match="class_weighting"):
        build_loss("weighted_ce")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cast_module", [False, True])
def test_every_loss_works_with_half_precision_logits(dtype, cast_module):
    """bf16-true / 16-true: logits in half precision, and the loss module (its class-weight
    buffer included) possibly cast by the precision plugin; the loss stays float32."""
    logits, target = _case(5)
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5])
    loss = build_loss("weighted_ce + 0.5 dice + ce", weights)
    reference = loss(logits, target)
    if cast_module:
        loss = loss.to(dtype)
    half = logits.to(dtype).requires_grad_()
    value = loss(half, target)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == dtype
    assert torch.isfinite(half.grad.float()).all()
    torch.testing.assert_close(value, reference, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("spec", ["ce", "weighted_ce", "dice", "study_dice",
                                  "weighted_ce + 0.5 dice", "ce + 0.5 study_dice"])
def test_a_batch_without_labelled_pixels_gives_zero_loss_with_its_graph(spec):
    logits = torch.randn(2, 10, 6, 8, requires_grad=True)
    target = torch.full((2, 6, 8), 255)  # every mask value unknown: all ignored
    loss = build_loss(spec, torch.ones(10))(logits, target)
    assert torch.isfinite(loss)
    loss.backward()  # the graph is kept: the step runs, the weights do not move
    assert torch.isfinite(logits.grad).all() and loss.item() == 0


@pytest.mark.parametrize("weighted", [False, True])
def test_deterministic_cross_entropy_equals_torchs_and_is_used_when_asked(weighted: bool,
                                                                          monkeypatch):
    """Under ``torch.use_deterministic_algorithms(True)`` (``trainer.deterministic``) the
    losses take a form with deterministic CUDA kernels; value and gradient are torch's."""
    from desertmind.training.losses import deterministic_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 10, 12, 16, requires_grad=True)
    target = torch.randint(0, 10, (2, 12, 16))
    target[0, :3] = IGNORE_INDEX
    weight = torch.rand(10) + 0.1 if weighted else None
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    ours = deterministic_cross_entropy(logits, target, weight, IGNORE_INDEX)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_ours, grad_expected, atol=1e-6, rtol=0)
    spec = "weighted_ce + 0.5 dice" if weighted else "ce + 0.5 dice"
    loss = build_loss(spec, weight)
    before = torch.are_deterministic_algorithms_enabled()
    reference = loss(logits, target)
    calls = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        torch.use_deterministic_algorithms(True)
        value = loss(logits, target)
        value.backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert calls == []  # the deterministic form, not nll_loss2d
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=0)
