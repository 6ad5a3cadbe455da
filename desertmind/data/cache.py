"""The decoded cache: every image and mask of a split decoded once, then served from memory.

Decoding one 960x540 PNG pair costs about 10 ms of CPU; copying the same pair out of a decoded
uint8 buffer costs about 0.1 ms. With ``data.cache`` set, a split is decoded once (masks
already mapped to train ids) into two flat uint8 buffers, and samples are views into them:

- ``disk``: numpy memmaps in ``CACHE_DIR/<split>-<path hash>-<content key>/``, kept between
  runs. Every DataLoader worker and every run maps the same pages of the OS page cache, so
  nothing is copied per worker. A numpy memmap is the plain single-machine form; Lightning's
  ``litdata`` streams optimised shards to many nodes, but brings its own sampler and shuffling,
  which would replace the DataModule's (and its unrepeated evaluation sampler under DDP).
- ``memory``: the same buffers in shared memory (torch tensors moved there with
  ``share_memory_``), built per run and per process, never written to disk: workers, forked or
  spawned, receive a handle, not a copy.

The content key hashes every file's path, size and modification time, the class table, and
every mask's bytes: a changed, added or removed file gives a new key, so the split is rebuilt and
the old version is deleted. Masks are read in full because a label edit that keeps the size and
the modification time (``cp -p``, ``rsync -a`` of a corrected mask) would otherwise train on the
old labels; masks are small PNGs and a CRC-32 runs at about 6 GB/s on one core of our CPU
machine, so the read costs little next to training. An image edited that way is not seen
(touch it, or delete the cache folder). Before decoding, the size is read from
the PNG headers and the build is refused when it would not fit, saying how much it needs and
where.

The cache's own files can be damaged too (a disk error, a stray write of the same size): the
index holds a CRC-32 of every sample's image and mask bytes, checked once per process and
version of the files when the cache is opened (about 2 GB/s, so 3 s for the whole Falcon train
split), and a damaged cache is rebuilt with a warning naming the sample, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from desertmind.data.classes import class_table, unknown_values
from desertmind.data.imageio import read_header
from desertmind.data.layout import Sample, load_pair
from desertmind.errors import ConfigError, DatasetError
from desertmind.files import atomic_dir, write_json

Cache = Literal["none", "memory", "disk"]
CACHES: tuple[str, ...] = get_args(Cache)

FORMAT = 2  # bump when the files' layout changes: old caches then get new keys (2: CRCs)
IMAGES, MASKS, INDEX = "images.u8", "masks.u8", "index.json"
_SLACK = 256 * 2**20  # free space left after a build, so the cache never fills a disk


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/desertmind/decoded`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "desertmind" / "decoded"


@dataclass
class DecodedSplit:
    """A split's decoded pairs: ``pair(i)`` returns sample ``i``'s RGB image (H, W, 3) and
    train-id mask (H, W) as uint8 views into the cache, without a copy (the batch collation
    makes the one copy). A disk cache is mapped copy-on-write, so a write into a view stays in
    the process; a memory cache is shared, so nothing may write into a view: the augmentation
    pipelines return new arrays (tested for every preset).

    On pickling (spawned DataLoader workers) a disk cache sends its folder and is mapped again
    on the other side; a memory cache sends shared-memory handles.
    """

    shapes: np.ndarray  # (N, 2) height, width
    unknown: list[dict[int, int]]  # per sample: raw values outside the class table -> pixels
    images: torch.Tensor | None = None  # memory: flat shared uint8 buffers
    masks: torch.Tensor | None = None
    folder: Path | None = None  # disk
    _offsets: np.ndarray = field(init=False, repr=False)
    _maps: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        pixels = self.shapes[:, 0] * self.shapes[:, 1]
        self._offsets = np.concatenate([[0], np.cumsum(pixels)])

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        if self._maps is None:
            if self.folder is not None:
                # copy-on-write: writable views whose changes stay private to the process
                try:
                    self._maps = (np.memmap(self.folder / IMAGES, np.uint8, "c"),
                                  np.memmap(self.folder / MASKS, np.uint8, "c"))
                except (OSError, ValueError) as e:  # each new worker maps the files again
                    raise DatasetError(
                        f"{self.folder}: the decoded cache was removed or changed while this "
                        f"run used it ({e}); run again (it is rebuilt), and leave the cache "
                        "folder alone while a run uses it") from e
            else:
                self._maps = (self.images.numpy(), self.masks.numpy())
        return self._maps

    def checksums(self, index: int) -> list[int]:
        """CRC-32 of sample ``index``'s image and mask bytes, as stored in the index."""
        image, mask = self.pair(index)
        return [zlib.crc32(memoryview(np.ascontiguousarray(image)).cast("B")),
                zlib.crc32(memoryview(np.ascontiguousarray(mask)).cast("B"))]

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self._buffers()
        (h, w), start, end = self.shapes[index], self._offsets[index], self._offsets[index + 1]
        return images[3 * start:3 * end].reshape(h, w, 3), masks[start:end].reshape(h, w)


def open_cache(samples: list[Sample], mode: Cache, split_dir: Path,
               cache_dir: str | Path | None = None, progress: bool = True) -> DecodedSplit | None:
    """Return the split's decoded cache for ``mode`` (None for ``none``), building it if needed.

    Every sample must have a mask: the cache holds labelled splits only (an unlabelled folder
    is read once per prediction anyway).
    """
    if mode == "none":
        return None
    if mode not in CACHES:
        raise ConfigError(f"data.cache={mode!r}: one of {', '.join(CACHES)}")
    if any(s.mask is None for s in samples):
        raise ConfigError(f"{split_dir}: data.cache holds labelled splits only; this one has "
                          "no masks")
    if mode == "memory":
        return _build_memory(samples, split_dir, progress)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _open_disk(samples, split_dir, folder, progress)


def content_key(samples: list[Sample]) -> str:
    """Hash of the format, the class table, every file's path, size and mtime, and every
    mask's bytes (a same-size label edit with its mtime kept still changes the key)."""
    h = hashlib.sha256(json.dumps([FORMAT, class_table()]).encode())
    for s in samples:
        for path in (s.image, s.mask):
            try:
                st = path.stat()
                crc = zlib.crc32(path.read_bytes()) if path == s.mask else 0
            except OSError as e:
                raise DatasetError(f"{path}: cannot read file ({e.strerror or e})") from e
            h.update(f"{s.name}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{crc}\n"
                     .encode(errors="surrogateescape"))  # a name that is not UTF-8
    return h.hexdigest()[:16]


def _label(split_dir: Path) -> str:
    """``<split>-<hash of its absolute path>``: two roots' ``train`` never share a cache."""
    path = str(Path(split_dir).resolve())
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", Path(split_dir).name) or "split"
    return f"{name}-{hashlib.sha256(path.encode(errors='surrogateescape')).hexdigest()[:8]}"


def _header_shapes(samples: list[Sample]) -> np.ndarray:
    """(height, width) of every image from its PNG/JPEG header, without decoding."""
    shapes = np.empty((len(samples), 2), dtype=np.int64)
    for i, s in enumerate(samples):
        for path in (s.image, s.mask):
            w, h = read_header(path, "image" if path == s.image else "mask")  # the pixel limit
            if path == s.image:
                shapes[i] = h, w
            elif (h, w) != tuple(shapes[i]):
                raise DatasetError(f"{path}: mask is {w}x{h} but its image {s.image.name} is "
                                   f"{shapes[i][1]}x{shapes[i][0]} (width x height)")
    return shapes


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _need(shapes: np.ndarray) -> int:
    return int((shapes[:, 0] * shapes[:, 1]).sum()) * 4  # 3 image bytes + 1 mask byte


def _refuse(split_dir: Path, needed: int, free: int, where: str, advice: str) -> None:
    if needed + _SLACK > free:
        raise DatasetError(
            f"{split_dir}: the decoded cache of this split needs {_size(needed)} in {where}, "
            f"which has {_size(free)} available; {advice}, or use --data.cache none")


def _fill(samples: list[Sample], shapes: np.ndarray, images: np.ndarray, masks: np.ndarray,
          what: str, progress: bool) -> list[dict[int, int]]:
    """Decode every pair into the flat buffers, several at once (OpenCV releases the GIL)."""
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])

    def one(i: int) -> dict[int, int]:
        image, mask, raw = load_pair(samples[i])
        if image.shape[:2] != tuple(shapes[i]):
            raise DatasetError(f"{samples[i].image}: decodes to {image.shape[1]}x"
                               f"{image.shape[0]} but its header says {shapes[i][1]}x"
                               f"{shapes[i][0]}")
        start, end = offsets[i], offsets[i + 1]
        images[3 * start:3 * end] = image.reshape(-1)
        masks[start:end] = mask.reshape(-1)
        return unknown_values(mask, raw)

    pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
    try:
        return list(tqdm(pool.map(one, range(len(samples))), total=len(samples), unit="img",
                         desc=f"decoding {what}", disable=None if progress else True,
                         leave=False))
    finally:  # on an error, stop at once instead of decoding the rest first
        pool.shutdown(cancel_futures=True)


def _build_memory(samples: list[Sample], split_dir: Path, progress: bool) -> DecodedSplit:
    shapes = _header_shapes(samples)
    needed = _need(shapes)
    _refuse(split_dir, needed, psutil.virtual_memory().available, "memory",
            "use --data.cache disk")
    if Path("/dev/shm").is_dir():  # torch's shared memory lives there (small in containers)
        _refuse(split_dir, needed, shutil.disk_usage("/dev/shm").free, "/dev/shm",
                "enlarge /dev/shm (docker run --shm-size) or use --data.cache disk")
    pixels = needed // 4
    images = torch.empty(3 * pixels, dtype=torch.uint8).share_memory_()
    masks = torch.empty(pixels, dtype=torch.uint8).share_memory_()
    unknown = _fill(samples, shapes, images.numpy(), masks.numpy(), str(split_dir), progress)
    return DecodedSplit(shapes, unknown, images=images, masks=masks)


def _open_disk(samples: list[Sample], split_dir: Path, cache_dir: Path,
               progress: bool) -> DecodedSplit:
    label = _label(split_dir)
    folder = cache_dir / f"{label}-{content_key(samples)}"
    cached = _read_index(folder, len(samples))
    if cached is not None:
        return cached
    shapes = _header_shapes(samples)
    needed = _need(shapes)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"{cache_dir}: cannot create the cache folder ({e.strerror or e}); "
                           "set --data.cache_dir to a writable folder") from e
    _refuse(split_dir, needed, shutil.disk_usage(cache_dir).free, str(cache_dir),
            "set --data.cache_dir to a larger disk")
    pixels = needed // 4
    try:
        with atomic_dir(folder) as tmp:
            images = np.memmap(tmp / IMAGES, np.uint8, "w+", shape=(3 * pixels,))
            masks = np.memmap(tmp / MASKS, np.uint8, "w+", shape=(pixels,))
            unknown = _fill(samples, shapes, images, masks, str(split_dir), progress)
            images.flush(), masks.flush()
            del images, masks
            built = DecodedSplit(shapes, unknown, folder=tmp)
            crcs = [built.checksums(i) for i in range(len(built))]
            del built  # its maps of the temporary files
            write_json(tmp / INDEX, {
                "format": FORMAT, "split": str(split_dir.resolve()),
                "names": [s.name for s in samples], "shapes": shapes.tolist(),
                "unknown": [{str(k): v for k, v in u.items()} for u in unknown],
                "crc32": crcs})
    except OSError as e:  # a read-only or vanished cache folder: the run's to fix, in a line
        reason = getattr(e, "reason", None) or e.strerror or e
        raise DatasetError(f"{cache_dir}: cannot write the decoded cache of {split_dir} "
                           f"({reason}); set --data.cache_dir to a writable folder, "
                           "or use --data.cache none") from e
    for old in cache_dir.glob(f"{label}-*"):  # earlier versions of this split
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    split = DecodedSplit(shapes, unknown, folder=folder)
    _VERIFIED[folder] = _version(folder)
    return split


#: disk caches whose content this process has checked, with the version of the files it saw
_VERIFIED: dict[Path, tuple] = {}


def _version(folder: Path) -> tuple:
    """What changes when a cache file is written to: inode, size and mtime of each."""
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns)
                 for st in ((folder / name).stat() for name in (IMAGES, MASKS, INDEX)))


def _damaged_sample(split: DecodedSplit, crcs: list, names: list[str]) -> str | None:
    """The first sample whose bytes differ from the index's CRCs (None: all intact)."""
    for i in range(len(split)):
        if split.checksums(i) != list(crcs[i]):
            return names[i]
    return None


def _read_index(folder: Path, count: int) -> DecodedSplit | None:
    """The cache in ``folder`` if it is complete and consistent, else None (it is rebuilt)."""
    problem = "incomplete or damaged"  # also a damaged index.json, unreadable as JSON
    try:
        index = json.loads((folder / INDEX).read_text())
        shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
        pixels = int((shapes[:, 0] * shapes[:, 1]).sum())
        ok = (index["format"] == FORMAT and len(shapes) == count
              and len(index["crc32"]) == count
              and (folder / IMAGES).stat().st_size == 3 * pixels
              and (folder / MASKS).stat().st_size == pixels)
        if ok:
            unknown = [{int(k): v for k, v in u.items()} for u in index["unknown"]]
            split = DecodedSplit(shapes, unknown, folder=folder)
            version = _version(folder)
            if _VERIFIED.get(folder) != version:
                damaged = _damaged_sample(split, index["crc32"], index["names"])
                ok = damaged is None
                problem = f"damaged (the bytes of {damaged} differ from when it was built)"
                if ok:
                    _VERIFIED[folder] = version
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        _VERIFIED.pop(folder, None)
        if folder.exists():
            warnings.warn(f"{folder}: decoded cache {problem}; rebuilding it", stacklevel=3)
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                raise DatasetError(f"{folder}: decoded cache {problem} and cannot be removed; "
                                   f"delete it (rm -r {folder}) or use --data.cache none")
        return None
    return split
