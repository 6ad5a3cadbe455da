"""LightningDataModule for the Duality off-road dataset."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from desertmind.data.cache import CACHES, Cache, open_cache
from desertmind.data.dataset import OffroadDataset, collate
from desertmind.data.imageio import read_header
from desertmind.data.layout import Sample, list_images, list_split
from desertmind.data.sampling import EpochSampler
from desertmind.data.stats import (
    WEIGHTINGS,
    Weighting,
    class_weights,
    crop_class_pixels,
    scan,
    study_class_weights,
)
from desertmind.data.transforms import (
    PRESETS,
    TRANSFERS,
    Preset,
    Transfer,
    build_transform,
)
from desertmind.errors import ConfigError, DatasetError, check_choice


def _mixed_sizes(samples: list[Sample]) -> bool:
    """Whether the images are of more than one size (read from their headers, not decoded);
    an unreadable header is left for the reader to name."""
    sizes = set()
    for s in samples:
        try:
            sizes.add(read_header(s.image))
        except DatasetError:
            continue
        if len(sizes) > 1:
            return True
    return False


class OffroadDataModule(L.LightningDataModule):
    """Train / val / test / predict data of one dataset root; arguments mirror the config.

    Hooks:
        setup: pairs the stage's files (missing folders, unpaired or empty splits fail here,
            before any training).
        *_dataloader: uint8 batches; train shuffles and drops the last incomplete batch
            (BatchNorm cannot train on a batch of one).
        on_after_batch_transfer: on the device, makes images float RGB 0-255 (the network
            scales them itself: :class:`~desertmind.models.SegmentationNetwork`) in a true
            precision's dtype, and masks int64, so the host-to-device copy stays uint8.

    Args:
        root: dataset root holding the split folders.
        train_dir: the training split's folder under ``root``.
        val_dir: the validation split's folder under ``root`` (validate scores it).
        test_dir: a labelled split under ``root`` that ``test`` scores (e.g. testImages).
        predict_dir: images ``predict`` writes class maps for: a split folder under ``root``
            or any folder of images (absolute or relative).
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        eval_batch_size: images per batch of validate, test and predict.
        num_workers: DataLoader worker processes (persistent when > 0).
        image_size: (height, width) every image is resized to; None keeps the full size.
        train_preset: augmentation preset, one of :data:`~desertmind.data.transforms.PRESETS`.
        domain_randomise: also randomise light and colour (the ``domain_random`` preset's
            photometric steps and flip) after the preset's own steps, crops included: how
            ``configs/domain_generalisation.yaml`` adds domain randomisation to any phase.
        crop_size: square crop side for the ``crop`` and ``strong`` presets.
        class_weighting: ``none``, ``inverse_log`` or ``median_frequency``, computed from the
            train split's statistics (see ``desertmind check-data``), or ``study_inverse_log``,
            the study's: counted on one random ``crop_size`` crop per training mask.
        stats_path: where those statistics are cached; default ``ROOT/desertmind_stats.json``.
        pin_memory: pinned host memory; None means on when CUDA is available.
        cache: ``none`` decodes the PNGs every epoch; ``memory`` or ``disk`` decode each
            labelled split once and serve it from a decoded uint8 copy, about 100x cheaper
            per sample (see :mod:`desertmind.data.cache`).
        cache_dir: where ``disk`` keeps its copies; default ``~/.cache/desertmind/decoded``.
        target_dir: a folder of unlabelled images of the domain the model will be used on (a
            plain folder, or a split folder whose ``Color_Images`` are taken; its masks, if
            any, are never read). Used by ``target_transfer`` and by self-training.
        target_batches: also yield a batch of ``target_dir`` images with every training batch
            (self-training); the CLI links it to ``model.self_training.weight > 0``.
        target_transfer: ``fda`` or ``histogram``: move training images' appearance toward a
            random target image with probability ``target_transfer_p`` (albumentations' FDA
            and HistogramMatching).
        target_transfer_p: the probability that a training image's appearance is moved.
    """

    def __init__(
        self,
        root: str = "data/offroad",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        predict_dir: str | None = None,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        image_size: tuple[int, int] | None = None,
        train_preset: Preset = "none",
        domain_randomise: bool = False,
        crop_size: int = 512,
        class_weighting: Weighting = "none",
        stats_path: str | None = None,
        pin_memory: bool | None = None,
        cache: Cache = "none",
        cache_dir: str | None = None,
        target_dir: str | None = None,
        target_transfer: Transfer = "none",
        target_transfer_p: float = 0.5,
        target_batches: bool = False,
    ) -> None:
        super().__init__()
        # Python callers bypass the CLI's Literal check: fail here, not at setup
        check_choice("data.train_preset", train_preset, PRESETS)
        check_choice("data.class_weighting", class_weighting, WEIGHTINGS)
        check_choice("data.cache", cache, CACHES)
        check_choice("data.target_transfer", target_transfer, TRANSFERS)
        if not 0 <= target_transfer_p <= 1:
            raise ConfigError(f"data.target_transfer_p={target_transfer_p}: a probability, "
                              "between 0 and 1")
        if target_transfer != "none" and target_dir is None:
            raise ConfigError(f"data.target_transfer={target_transfer} needs unlabelled target "
                              "images: set data.target_dir to a folder of them")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 16):
            raise ConfigError(f"data.image_size={list(image_size)}: (height, width), each at "
                              "least 16 pixels, or null for the full size")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers}: the number of DataLoader worker "
                              "processes, 0 (load in the main process) or more")
        if crop_size < 16:
            raise ConfigError(f"data.crop_size={crop_size}: at least 16 pixels")
        self.save_hyperparameters()
        self.root = Path(root)
        self.datasets: dict[str, OffroadDataset] = {}
        self._weights: torch.Tensor | None = None
        self.seed: int | None = None  # the training order's and augmentations' (EpochSampler)
        self._predict_one_by_one = False  # full-size prediction of images of several sizes

    def _eval_transform(self):
        return build_transform("none", self.hparams.image_size)

    def _labelled(self, split: str, train: bool = False) -> OffroadDataset:
        """A labelled split's dataset, served from the decoded cache when one is configured."""
        hp = self.hparams
        samples = list_split(self.root, split)
        if train and len(samples) < hp.batch_size:  # before any cache is built
            raise DatasetError(f"{self.root / split}: {len(samples)} training images, fewer "
                               f"than batch_size={hp.batch_size}")
        decoded = open_cache(samples, hp.cache, self.root / split, hp.cache_dir)
        transform = self._eval_transform()
        if not train:
            return OffroadDataset(samples, transform, decoded)
        transform = build_transform(hp.train_preset, hp.image_size, hp.crop_size, None,
                                    hp.target_transfer, hp.target_transfer_p,
                                    randomise=hp.domain_randomise)
        references = self.target_images() if hp.target_transfer != "none" else None
        return OffroadDataset(samples, transform, decoded, references, self.seed)

    def _images(self, folder: str) -> list[Sample]:
        """Unlabelled samples of a folder given as a path, or relative to the dataset root."""
        path = Path(folder)
        if not path.is_dir() and (self.root / path).is_dir():
            path = self.root / path
        return list_images(path)

    def target_images(self) -> list[Path]:
        """The unlabelled target images of ``target_dir`` (never their masks)."""
        return [s.image for s in self._images(self.hparams.target_dir)]

    def target_use(self) -> str | None:
        """How training uses the unlabelled ``target_dir`` images, in words (a run that does is
        transductive: it has seen the images it may later be tested on), or None."""
        hp = self.hparams
        uses = [f"{hp.target_transfer} transfer"] if hp.target_transfer != "none" else []
        if hp.target_batches:
            uses.append("self-training batches")
        return f"{' and '.join(uses)} from {hp.target_dir}" if uses else None

    def prepare_data(self) -> None:
        """Build the disk cache of the splits this run reads, once per node (Lightning calls
        this on one process before the others run ``setup``)."""
        hp = self.hparams
        if hp.cache != "disk" or self.trainer is None:
            return
        splits = {"fit": [hp.train_dir, hp.val_dir], "validate": [hp.val_dir],
                  "test": [hp.test_dir]}.get(self.trainer.state.fn, [])
        for split in filter(None, splits):
            open_cache(list_split(self.root, split), "disk", self.root / split, hp.cache_dir)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            self.check_fit()
            if self.seed is None:
                self.seed = self._training_seed()
            self.datasets["train"] = self._labelled(hp.train_dir, train=True)
        if stage in ("fit", "validate"):
            self.datasets["val"] = self._labelled(hp.val_dir)
        if stage == "test":
            if hp.test_dir is None:
                raise DatasetError("no test split configured: set --data.test_dir (a labelled "
                                   "split folder under the dataset root)")
            self.datasets["test"] = self._labelled(hp.test_dir)
        if stage == "predict":
            if hp.predict_dir is None:
                raise DatasetError("no images to predict: set --data.predict_dir")
            images = self._images(hp.predict_dir)
            self.datasets["predict"] = OffroadDataset(images, self._eval_transform())
            self._predict_one_by_one = hp.image_size is None and _mixed_sizes(images)

    def check_fit(self) -> None:
        """Refuse settings that only training cannot use (the CLI asks before any run folder
        is written; ``setup("fit")`` asks again for Python callers)."""
        if self.hparams.batch_size < 2:
            raise ConfigError(f"data.batch_size={self.hparams.batch_size}: training needs at "
                              "least 2 images per batch (BatchNorm cannot normalise one); "
                              "data.eval_batch_size may be 1")

    def class_weights(self) -> torch.Tensor | None:
        """Loss weights per class from the train split's statistics, or None (cached)."""
        hp = self.hparams
        if hp.class_weighting == "none":
            return None
        if self._weights is None and hp.class_weighting == "study_inverse_log":
            seed = int(torch.randint(2**31 - 1, ()).item())  # seed_everything decides it
            pixels = crop_class_pixels(list_split(self.root, hp.train_dir), hp.crop_size, seed)
            self._weights = torch.as_tensor(study_class_weights(pixels), dtype=torch.float32)
        if self._weights is None:
            stats = scan(self.root, [hp.train_dir], hp.stats_path)["splits"][hp.train_dir]
            if stats["problems"]:
                raise DatasetError(f"{self.root / hp.train_dir}: cannot compute class weights; "
                                   f"problems found: {stats['problems'][0]} (run "
                                   "`desertmind check-data` for the full list)")
            weights = class_weights(stats, hp.class_weighting)
            self._weights = torch.as_tensor(weights, dtype=torch.float32)
        return self._weights

    def _training_seed(self) -> int:
        """The seed of the training order and augmentations: ``seed_everything``'s own seed
        (Lightning's ``PL_GLOBAL_SEED``) when a run has one, else drawn; rank 0's in every
        process. Drawing it from torch's RNG alone gave each DDP process its own (whatever the
        process group's start had consumed), so the ranks' shares of an epoch were not one
        permutation's, and a multi-process run not the single-process run it should equal."""
        env = os.environ.get("PL_GLOBAL_SEED")
        seed = int(env) if env is not None else int(torch.randint(2**31 - 1, ()).item())
        trainer = self.trainer
        return int(trainer.strategy.broadcast(seed)) if trainer is not None else seed

    def state_dict(self) -> dict:
        """Saved in every checkpoint, however the fit was started: the seed of the training
        order and augmentations, how training used target images (an evaluation of the
        checkpoint then says it is transductive), and the dataset root as an absolute path
        (``data.root`` may be relative to the folder training ran in)."""
        return {"seed": self.seed, "target_use": self.target_use(),
                "root": str(self.root.resolve())}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run takes the interrupted run's seed (Lightning calls this after
        ``setup`` and before the first ``train_dataloader``)."""
        self.seed = state_dict.get("seed", self.seed)

    def _train_sampler(self, dataset: OffroadDataset, stream: int) -> EpochSampler:
        """The epoch's order and augmentations from (seed, epoch); on a resume, the epoch
        Lightning restored, less the batches it has already done."""
        trainer = self.trainer
        if self.seed is None:
            raise RuntimeError("setup('fit') draws the training seed; call it first")
        if trainer is None:
            return EpochSampler(dataset, self.seed + stream)
        loop = trainer.fit_loop
        sampler = EpochSampler(dataset, self.seed + stream, trainer.world_size,
                               trainer.global_rank, epoch=loop.epoch_progress.current.processed)
        if loop.restarting:  # where the shorter loader of a cycling pair was, too
            # Lightning warns that a plain DataLoader cannot resume mid-epoch; this one does
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that "
                                    "ended before the epoch ended")
            done = loop.epoch_loop.batch_progress.current.processed
            per_pass = len(sampler) // self.hparams.batch_size  # drop_last
            sampler.skip = done % per_pass * self.hparams.batch_size if per_pass else 0
        return sampler

    def _loader(self, split: str, train: bool = False, stream: int = 0) -> DataLoader:
        hp = self.hparams
        workers = hp.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        dataset = self.datasets[split]
        sampler = self._train_sampler(dataset, stream) if train else None
        trainer = self.trainer
        if not train and trainer is not None and trainer.world_size > 1:
            # every sample exactly once across processes: the default DistributedSampler pads
            # with repeated samples, which would count them twice in the metrics
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if split == "predict" and self._predict_one_by_one:
            batch_size = 1  # each image at its own size: a batch needs one size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        source = self._loader("train", train=True)
        if not self.hparams.target_batches:
            return source
        if self.hparams.target_dir is None:
            raise ConfigError("self-training needs unlabelled target images: set "
                              "data.target_dir")
        if "target" not in self.datasets:
            images = self._images(self.hparams.target_dir)
            if len(images) < self.hparams.batch_size:
                raise DatasetError(f"{self.hparams.target_dir}: {len(images)} target images, "
                                   f"fewer than batch_size={self.hparams.batch_size}")
            self.datasets["target"] = OffroadDataset(images, self.datasets["train"].transform)
        # an epoch is as long as the longer of the two; the shorter one cycles
        target = self._loader("target", train=True, stream=1)
        return CombinedLoader({"source": source, "target": target}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "source" in batch:  # self-training: a labelled and an unlabelled batch
            return {k: self.on_after_batch_transfer(b, dataloader_idx) for k, b in batch.items()}
        batch["image"] = batch["image"].float()  # RGB 0-255: the network scales it itself
        if "mask" in batch:
            batch["mask"] = batch["mask"].long()
        if self.trainer is not None:
            # Lightning casts a batch to a true precision's dtype (bf16-true, 16-true) before
            # the transfer, while images are still uint8: cast the float images made here
            batch = self.trainer.precision_plugin.convert_input(batch)
        return batch
