"""One evaluation of one network: its options, the test-time adaptation they ask for, the
scores, and the record a ``metrics.json`` needs.

``validate`` / ``test`` / ``predict`` (the module's steps), the test-time adaptation callback,
the single-image :class:`~desertmind.inference.predictor.Predictor`, the viewer's ranking of a
split and the dashboards' prediction grid all predict through an :class:`Evaluation`, so the
same network and options give the same masks everywhere, and nothing writes evaluation state
into a model from outside: what adaptation changed lives here, and :meth:`Evaluation.restore`
puts the network back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from desertmind.data.classes import CLASS_NAMES
from desertmind.data.layout import IMAGE_DIR
from desertmind.models.adaptation import BatchNormState, Gather, adapt, restore_batchnorm
from desertmind.models.network import SegmentationNetwork
from desertmind.models.prediction import (
    EvalOptions,
    class_probabilities,
    labels_of,
    predict_confidence,
    predict_maps,
    predict_scores,
)


def pretraining_saw(record: dict | None, folder: str | Path | None) -> bool:
    """Whether pretraining (``record``) read the images of ``folder`` (a split folder or its
    ``Color_Images``)."""
    if not record or folder is None:
        return False
    folder = Path(folder).resolve()
    seen = {Path(f) for f in record["folders"]}
    return folder in seen or folder / IMAGE_DIR in seen


@dataclass
class Evaluation:
    """``network`` evaluated under ``options``.

    Args:
        network: the network (its mode is the caller's: eval for scoring).
        options: TTA, sliding window, class restriction and test-time adaptation.
        source_priors: the class priors the network's posteriors imply on the source val
            split (what EM class priors start from); None or zeros: unknown.
        target_use: how training used unlabelled target images, in words (None: it did not).
        pretraining: the self-supervised pretraining the weights descend from (its folders:
            an evaluation of images it read is transductive), None: none.
    """

    network: SegmentationNetwork
    options: EvalOptions = field(default_factory=EvalOptions)
    source_priors: Tensor | None = None
    target_use: str | None = None
    pretraining: dict | None = None
    #: the class prior log-ratio test-time adaptation estimated (None: none)
    shift: Tensor | None = field(default=None, init=False)
    #: what the last adaptation did: ``images``, ``batchnorm``, ``class_priors`` and
    #: ``source_priors`` (empty: none)
    adaptation: dict = field(default_factory=dict, init=False)
    _saved: BatchNormState | None = field(default=None, init=False, repr=False)

    # adaptation ----------------------------------------------------------------------------
    def adapt(self, batches: Callable[[], Iterable[Tensor]], images: int,
              say: str | None = None, gather: Gather | None = None) -> dict:
        """Adapt to the images ``batches()`` yields (as the network takes them; called once per
        pass) when the options ask for it: AdaBN, then EM class priors. Until :meth:`restore`,
        every score is the adapted network's. ``images`` is how many there are; ``say``
        names the run in the line that prints the estimated priors (None: silent); ``gather``
        (under DDP) makes every process adapt to all the images, not its own share."""
        self.restore()
        self.adaptation = {}
        if not self.options.adapts:
            return self.adaptation
        priors = None
        if self.options.class_priors == "em":
            priors = (self.source_priors if self.source_priors is not None
                      else torch.zeros(len(CLASS_NAMES)))
        done = adapt(self.network, batches,
                     lambda x: class_probabilities(self.network, x, self.options),
                     batchnorm=self.options.adapt_bn, source_priors=priors, gather=gather)
        self._saved = done.saved
        report: dict = {"images": images}
        if self.options.adapt_bn:
            report["batchnorm"] = ("recomputed from the evaluated images (AdaBN)"
                                   if done.saved is not None
                                   else "none: the network has no BatchNorm layer")
        if done.shift is not None:
            self.shift = done.shift
            report["source_priors"] = dict(zip(CLASS_NAMES, _rounded(done.source), strict=True))
            report["class_priors"] = dict(zip(CLASS_NAMES, _rounded(done.priors), strict=True))
            if say is not None:
                shares = ", ".join(f"{n} {v:.3f}" for n, v in report["class_priors"].items())
                print(f"desertmind {say}: class priors estimated by EM on {done.images} "
                      f"images: {shares}", file=sys.stderr)
        self.adaptation = report
        return report

    def restore(self) -> None:
        """Put the trained BatchNorm statistics back and stop re-weighting by class priors
        (the record of what was done stays until the next :meth:`adapt`)."""
        if self._saved is not None:
            restore_batchnorm(self.network, self._saved)
            self._saved = None
        self.shift = None

    def record(self, evaluated: str | Path | None = None) -> dict[str, object]:
        """Whether (and how) the scores used the target images, for ``metrics.json``: through
        training (``target_use``), through self-supervised pretraining on the ``evaluated``
        folder's images, or through test-time adaptation; and what adaptation did."""
        adapted = {k: v for k, v in self.adaptation.items()
                   if k in ("batchnorm", "class_priors") and not str(v).startswith("none")}
        training = self.target_use
        if pretraining_saw(self.pretraining, evaluated):
            seen = (f"self-supervised pretraining ({self.pretraining.get('method')}) on these "
                    f"images ({evaluated}), in the weights of "
                    f"{self.pretraining.get('checkpoint', 'the checkpoint')}")
            training = f"{training}; {seen}" if training else seen
        return {"transductive": bool(training or adapted),
                "training": training, "test_time": sorted(adapted),
                "pretraining": self.pretraining,
                "adaptation": self.adaptation,
                # <stage>/mIoU is over these classes' argmax when set
                "predict_classes": self.options.predict_classes}

    # scoring -------------------------------------------------------------------------------
    def scores(self, images: Tensor, options: EvalOptions | None = None) -> Tensor:
        """Class scores (N, C, H, W) of RGB 0-255 images: TTA probabilities when the options
        ask for TTA, else logits; re-weighted by the adapted class priors."""
        return predict_scores(self.network, images, options or self.options, self.shift)

    def labels_of(self, scores: Tensor) -> Tensor:
        """Train ids (N, H, W) of scores, restricted to the options' classes."""
        return labels_of(scores, self.options)

    @torch.no_grad()
    def labels(self, images: Tensor, options: EvalOptions | None = None) -> Tensor:
        """Train ids (N, H, W) at the input's size, as ``validate`` scores them."""
        return labels_of(self.scores(images, options), options or self.options)

    @torch.no_grad()
    def maps(self, images: Tensor, sizes: Sequence[tuple[int, int]],
             options: EvalOptions | None = None) -> list[Tensor]:
        """Class-id maps (uint8, CPU), one per image at its size in ``sizes``."""
        return predict_maps(self.network, images, sizes, options or self.options, self.shift)

    @torch.no_grad()
    def confidence(self, images: Tensor, sizes: Sequence[tuple[int, int]],
                   options: EvalOptions | None = None) -> list[tuple[Tensor, Tensor]]:
        """(class-id map, confidence of its class) per image at its size in ``sizes``."""
        return predict_confidence(self.network, images, sizes, options or self.options,
                                  self.shift)


def _rounded(values: Tensor) -> list[float]:
    return [round(float(v), 5) for v in values]
