"""The Duality dataset layout on disk: pairing images with masks, and reading a pair.

Layout: ``ROOT/<split>/Color_Images/NAME.png`` paired by file name with
``ROOT/<split>/Segmentation/NAME.png`` (uint16 raw ids). Test splits may have no masks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from desertmind.data.classes import remap
from desertmind.data.imageio import read_image, read_mask
from desertmind.errors import DatasetError

IMAGE_DIR = "Color_Images"
MASK_DIR = "Segmentation"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_SHOW = 5  # how many file names an error message lists


@dataclass(frozen=True)
class Sample:
    """One image and its mask file (None for an unlabelled split)."""

    name: str
    image: Path
    mask: Path | None


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_symlink() and not p.exists():
            raise DatasetError(f"{p}: broken symbolic link (its target {os.readlink(p)} does not "
                               "exist); fix or remove the link")
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        if p.stem in files:
            raise DatasetError(f"{folder}: two files share the name {p.stem!r}: "
                               f"{files[p.stem].name} and {p.name}")
        files[p.stem] = p
    return files


def split_files(root: str | Path, split: str) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry of a split's image and mask folders, as (folder name, entry), sorted by name."""
    for sub in (IMAGE_DIR, MASK_DIR):
        folder = Path(root) / split / sub
        if folder.is_dir():
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                yield sub, entry


def _names(names: list[str]) -> str:
    more = f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def missing_root_message(root: Path) -> str:
    """Say where a dataset should be, for a root that does not exist or is not a folder."""
    if root.exists():
        return (f"dataset root {root} is a file, not a folder: point --data.root / DATA= at "
                "the folder that holds train/ and val/")
    return (f"dataset root {root} does not exist. Put the Duality Offroad Segmentation dataset "
            f"there (ROOT/train/Color_Images, ROOT/train/Segmentation, ROOT/val/...), point "
            f"--data.root / DATA= at it, or generate a synthetic one with "
            f"`desertmind synth {root}`.")


def list_images(folder: str | Path) -> list[Sample]:
    """Unlabelled samples from a plain image folder, or from a split folder's Color_Images."""
    folder = Path(folder)
    if (folder / IMAGE_DIR).is_dir():
        folder = folder / IMAGE_DIR
    if folder.is_file():
        raise DatasetError(f"{folder}: is a file, not a folder of images; give the folder "
                           f"that holds it ({folder.parent})")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    images = _files(folder, IMAGE_EXTS)
    subfolders = sorted(p.name for p in folder.iterdir()
                        if p.is_dir() and not p.name.startswith("."))
    if subfolders:  # one folder is read, not a tree: say what was left out
        warnings.warn(f"{folder}: {len(subfolders)} subfolder(s) not read ({_names(subfolders)}): "
                      "only the images directly in the folder are used; give each subfolder "
                      "on its own", stacklevel=2)
    if not images:
        raise DatasetError(f"{folder}: no images (.png/.jpg) found"
                           + (" directly in it (only in subfolders)" if subfolders else ""))
    return [Sample(n, p, None) for n, p in images.items()]


def list_split(root: str | Path, split: str, require_masks: bool = True) -> list[Sample]:
    """Pair ``split``'s images and masks by file name, refusing any unpaired file.

    A split without a ``Segmentation`` folder is returned unlabelled when ``require_masks``
    is False (test sets such as ``testImages``); otherwise it is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(missing_root_message(root))
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"{split_dir}: split folder not found (folders in {root}: "
                           f"{', '.join(found) or 'none'})")
    img_dir, mask_dir = split_dir / IMAGE_DIR, split_dir / MASK_DIR
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: image folder not found")
    images = _files(img_dir, IMAGE_EXTS)
    if not images:
        raise DatasetError(f"{img_dir}: split '{split}' is empty (no .png/.jpg images)")
    if not mask_dir.is_dir():
        if require_masks:
            raise DatasetError(f"{mask_dir}: mask folder not found (split '{split}' needs masks)")
        return [Sample(n, p, None) for n, p in images.items()]
    masks = _files(mask_dir, (".png",))
    problems = []
    no_mask = sorted(images.keys() - masks.keys())
    no_image = sorted(masks.keys() - images.keys())
    lossy = {n: p for n, p in _files(mask_dir, (".jpg", ".jpeg")).items() if n in no_mask}
    if lossy:  # a mask there, in a format that cannot hold raw ids
        problems.append(f"{len(lossy)} mask(s) in {mask_dir} are JPEG, not PNG: "
                        f"{_names([p.name for p in lossy.values()])}; masks must be 16-bit PNGs "
                        "of raw ids (JPEG is 8-bit and lossy: its values are not the class ids)")
        no_mask = [n for n in no_mask if n not in lossy]
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in {img_dir} have no mask in {mask_dir}: "
                        f"{_names(no_mask)}")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in {mask_dir} have no image in {img_dir}: "
                        f"{_names(no_image)}")
    if problems:
        raise DatasetError("; ".join(problems))
    return [Sample(n, p, masks[n]) for n, p in images.items()]


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a sample: RGB image, train-id mask (or None) and raw mask (or None).

    The raw mask is remapped through the lookup table right after reading; unknown raw
    values become the ignore index.
    """
    image = read_image(sample.image)
    if sample.mask is None:
        return image, None, None
    raw = read_mask(sample.mask)
    if raw.shape != image.shape[:2]:
        raise DatasetError(
            f"{sample.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
            f"{sample.image.name} is {image.shape[1]}x{image.shape[0]} (width x height)")
    return image, remap(raw), raw
