"""Test-time adaptation to a new desert from its unlabelled images: the network's BatchNorm
statistics (AdaBN) and the class priors (EM), neither touching a trained weight.

- **AdaBN** (Li et al., 2016, "Revisiting Batch Normalization For Practical Domain
  Adaptation"): a darker desert shifts every layer's activations, so the running means and
  variances learnt on the source no longer normalise them. :func:`adapt_batchnorm` recomputes
  them from the target images, layer after layer in one forward pass per batch (BatchNorm in
  training mode, cumulative average), and returns the source statistics so the caller can put
  them back: the trained network is the same after the evaluation as before it.
- **EM priors** (Saerens, Latinne and Decaestecker, 2002, "Adjusting the outputs of a
  classifier to new a priori probabilities: a simple procedure"): a classifier's posteriors
  carry the class frequencies it was trained on. The target desert's frequencies are unknown
  (some classes are absent, Rocks are far more common), but they are the fixed point of
  re-weighting the posteriors by ``target / source`` priors and averaging them over the
  target pixels. :func:`em_priors` iterates that; :func:`prior_shift` turns the result into
  the log-ratio added to every logit (re-weighting a softmax is a shift of its logits). It
  needs no list of the classes present: an absent class's prior falls towards zero by itself.

Both read images only, never masks: an evaluation that uses them is transductive, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from desertmind.errors import ConfigError
from desertmind.models.network import batchnorms

#: pixels drawn from each target image for the EM estimate (a fixed-size sample: the memory
#: needed grows with the number of images, not with their size)
PIXELS_PER_IMAGE = 4096
EM_ITERATIONS = 200
EM_TOLERANCE = 1e-6
#: no class's prior is taken below this (a log-ratio must stay finite)
MIN_PRIOR = 1e-6

BatchNormState = dict[str, tuple[Tensor, Tensor, Tensor, float | None]]
#: every process's tensor stacked (world, ...): Lightning's ``strategy.all_gather`` under DDP,
#: so that each process adapts to all the evaluated images, not to its own share
Gather = Callable[[Tensor], Tensor]


def batchnorm_layers(network: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers that keep running statistics, by name."""
    return {name: m for name, m in batchnorms(network).items() if m.track_running_stats}


def _one_value_per_channel(module: nn.Module, args: tuple) -> None:
    # a layer after global pooling sees one value per channel and image: a batch of one image
    # has no variance to measure there, so that call normalises with what the layer holds
    x = args[0]
    module.training = x.numel() // x.shape[1] > 1


@torch.no_grad()
def adapt_batchnorm(network: nn.Module, batches: Iterable[Tensor],
                    gather: Gather | None = None) -> BatchNormState:
    """Replace the running statistics of every BatchNorm layer with those of ``batches``
    (images as the network takes them); return the replaced ones for
    :func:`restore_batchnorm`. The rest of the network stays in eval mode (no dropout), and
    its weights are untouched. A network without BatchNorm (a ViT) is returned unchanged.

    With ``gather`` (several processes, each with its share of the images), every process
    ends with the same statistics: each layer's running mean and variance are averages over
    batches, so the processes' averages weighted by their batch counts are the averages over
    every batch, what one process seeing them all computes."""
    layers = batchnorm_layers(network)
    saved = {name: (m.running_mean.clone(), m.running_var.clone(),
                    m.num_batches_tracked.clone(), m.momentum) for name, m in layers.items()}
    if not layers:
        return saved
    training = network.training
    network.eval()
    hooks = [m.register_forward_pre_hook(_one_value_per_channel) for m in layers.values()]
    for m in layers.values():
        # momentum None: a cumulative average over the batches; the first batch replaces the
        # source statistics, and a layer that never sees a batch keeps them
        m.num_batches_tracked.zero_()
        m.momentum = None
    try:
        for images in batches:
            network(images)
    finally:
        for hook in hooks:
            hook.remove()
        for name, m in layers.items():
            m.momentum = saved[name][3]
        network.train(training)
    if gather is not None:
        for m in layers.values():
            counts = gather(m.num_batches_tracked.reshape(1).double()).reshape(-1, 1)
            weights = counts / counts.sum().clamp_min(1)
            for stat in (m.running_mean, m.running_var):
                stat.copy_((gather(stat.double()) * weights).sum(0).to(stat.dtype))
            m.num_batches_tracked.fill_(int(counts.sum()))
    return saved


@torch.no_grad()
def restore_batchnorm(network: nn.Module, saved: BatchNormState) -> None:
    """Put back the statistics :func:`adapt_batchnorm` replaced."""
    layers = batchnorm_layers(network)
    for name, (mean, var, count, momentum) in saved.items():
        m = layers[name]
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
        m.momentum = momentum


def sample_probabilities(probs: Tensor, generator: torch.Generator,
                         pixels: int = PIXELS_PER_IMAGE) -> Tensor:
    """(N x ``pixels``, C) class probabilities drawn uniformly from each image of ``probs``
    (N, C, H, W); every pixel when an image has fewer."""
    n, c = probs.shape[:2]
    flat = probs.detach().float().flatten(2).transpose(1, 2)  # N, HW, C
    if flat.shape[1] <= pixels:
        return flat.reshape(-1, c).cpu()
    idx = torch.randint(flat.shape[1], (n, pixels), generator=generator).to(flat.device)
    return flat.gather(1, idx.unsqueeze(-1).expand(-1, -1, c)).reshape(-1, c).cpu()


def em_priors(probs: Tensor, source: Tensor, *, iterations: int = EM_ITERATIONS,
              tolerance: float = EM_TOLERANCE) -> Tensor:
    """The target class priors (C,) that explain the posteriors ``probs`` (pixels, C) of a
    classifier trained under the class priors ``source`` (C,): Saerens et al.'s EM."""
    probs = probs.double()
    source = source.double().clamp_min(MIN_PRIOR)
    source = source / source.sum()
    target = source.clone()
    for _ in range(iterations):
        weighted = probs * (target / source)
        weighted = weighted / weighted.sum(1, keepdim=True).clamp_min(1e-300)
        new = weighted.mean(0)
        done = (new - target).abs().max() < tolerance
        target = new
        if done:
            break
    return target.float()


def prior_shift(target: Tensor, source: Tensor) -> Tensor:
    """``log(target / source)`` (C,): added to logits, it re-weights their softmax by the
    ratio of priors."""
    target = target.clamp_min(MIN_PRIOR)
    source = source.clamp_min(MIN_PRIOR)
    return (target / target.sum()).log() - (source / source.sum()).log()


def shift_scores(scores: Tensor, shift: Tensor | None, probabilities: bool) -> Tensor:
    """``scores`` (N, C, H, W) re-weighted by the class prior ratio ``exp(shift)``:
    logits are shifted, probabilities multiplied and normalised again."""
    if shift is None:
        return scores
    shift = shift.to(scores.device, torch.float32).view(1, -1, 1, 1)
    if not probabilities:
        return scores.float() + shift
    weighted = scores.float() * shift.exp()
    return weighted / weighted.sum(1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def estimate_priors(probabilities: Callable[[Tensor], Tensor], batches: Iterable[Tensor],
                    source: Tensor, *, seed: int = 0,
                    gather: Gather | None = None) -> tuple[Tensor, int]:
    """EM target priors from the class probabilities ``probabilities(images)`` gives for each
    batch of ``batches``, and how many images it saw. With ``gather``, EM runs on the pixels
    every process sampled, so every process estimates the same priors."""
    generator = torch.Generator().manual_seed(seed)
    samples, images = [], 0
    for batch in batches:
        samples.append(sample_probabilities(probabilities(batch), generator))
        images += batch.shape[0]
    pooled = torch.cat(samples) if samples else torch.zeros(0, len(source))
    if gather is not None:
        pooled, images = _gathered_rows(pooled.double(), gather), int(
            gather(torch.tensor([float(images)])).sum())
    if not len(pooled):
        return source.clone(), 0
    return em_priors(pooled, source), images


def _gathered_rows(rows: Tensor, gather: Gather) -> Tensor:
    """Every process's rows (each may have another number), in process order."""
    counts = gather(torch.tensor([float(len(rows))])).reshape(-1).long()
    padded = torch.zeros(int(counts.max()), rows.shape[1], dtype=rows.dtype)
    padded[:len(rows)] = rows
    stacked = gather(padded)
    return torch.cat([stacked[r, :int(n)] for r, n in enumerate(counts)])


@dataclass
class Adapted:
    """What :func:`adapt` did: the BatchNorm statistics it replaced (None: none), and the
    source and estimated target class priors with their logit shift (None: no EM)."""

    saved: BatchNormState | None = None
    source: Tensor | None = None
    priors: Tensor | None = None
    shift: Tensor | None = None
    images: int = 0


def adapt(network: nn.Module, batches: Callable[[], Iterable[Tensor]],
          probabilities: Callable[[Tensor], Tensor], *, batchnorm: bool,
          source_priors: Tensor | None, gather: Gather | None = None) -> Adapted:
    """AdaBN when ``batchnorm`` (and the network has BatchNorm), then EM class priors when
    ``source_priors`` are given, over the images ``batches()`` yields (called once per pass):
    what ``test``, ``predict`` and the viewer's Predictor all do. The caller puts the
    statistics back (:func:`restore_batchnorm`) or keeps them."""
    if source_priors is not None and float(source_priors.sum()) == 0:  # before any change
        raise ConfigError(
            "model.evaluation.class_priors=em needs the class priors the network implies on "
            "its source val split, and this model holds none (it was never validated): fit "
            "it with validation, or use class_priors: train")
    done = Adapted()
    if batchnorm and batchnorm_layers(network):
        done.saved = adapt_batchnorm(network, batches(), gather)
    if source_priors is not None:
        done.source = source_priors.double() / source_priors.double().sum()
        done.priors, done.images = estimate_priors(probabilities, batches(), done.source,
                                                   gather=gather)
        done.shift = prior_shift(done.priors, done.source.float())
    return done
