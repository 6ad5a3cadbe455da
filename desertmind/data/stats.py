"""Dataset scan: per-file checks, class statistics, their JSON cache, and class weights.

``desertmind check-data`` and the data module's class weights both come from :func:`scan`.
Statistics are cached per split in a JSON file, keyed by a fingerprint of the split's file
names, sizes and modification times, so a second scan of an unchanged dataset reads no image.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from tqdm.auto import tqdm

from desertmind.data.classes import CLASS_NAMES, CLASSES, IGNORE_INDEX, NUM_CLASSES, remap
from desertmind.data.imageio import read_mask
from desertmind.data.layout import (
    MASK_DIR,
    Sample,
    list_split,
    load_pair,
    missing_root_message,
    split_files,
)
from desertmind.errors import DatasetError, check_choice
from desertmind.files import write_json

STATS_VERSION = 3  # 2: mean colour per split; 3: known share, no-label problem
STATS_FILE = "desertmind_stats.json"
LABELLED_SPLITS = ("train", "val")  # splits that must have masks
LOW_KNOWN_SHARE = 0.5  # below this share of known mask pixels, check-data warns
Weighting = Literal["none", "inverse_log", "median_frequency", "study_inverse_log"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def default_stats_path(root: str | Path) -> Path:
    """``ROOT/desertmind_stats.json``, or a per-root file in the user cache if ROOT is read-only."""
    root = Path(root).resolve()
    if os.access(root, os.W_OK):
        return root / STATS_FILE
    digest = hashlib.sha1(str(root).encode(errors="surrogateescape")).hexdigest()[:16]
    return Path.home() / ".cache" / "desertmind" / f"stats-{digest}.json"


def fingerprint(root: str | Path, split: str) -> str:
    """Hash of the split's file names, sizes and mtimes (no file is opened)."""
    h = hashlib.sha256()
    for sub, entry in split_files(root, split):
        try:
            st = entry.stat()
        except OSError as e:  # a broken symbolic link, a file removed meanwhile
            raise DatasetError(f"{entry.path}: cannot read file ({e.strerror or e}); a broken "
                               "symbolic link? fix or remove it") from e
        h.update(f"{sub}/{entry.name}:{st.st_size}:{st.st_mtime_ns}\n"
                     .encode(errors="surrogateescape"))  # a name that is not UTF-8
    return h.hexdigest()


def scan_file(sample: Sample) -> dict:
    """Read and check one sample; return its size, class pixel counts and unknown values."""
    try:
        image, mask, raw = load_pair(sample)
    except DatasetError as e:
        return {"name": sample.name, "problem": str(e)}
    h, w = image.shape[:2]
    result: dict = {"name": sample.name, "size": f"{w}x{h}",
                    "rgb_mean": image.reshape(-1, 3).mean(0).tolist()}
    if mask is None:
        return result
    counts = np.bincount(mask.ravel(), minlength=256)
    result["pixels"] = counts[:NUM_CLASSES].tolist()
    if counts[IGNORE_INDEX]:
        values, n = np.unique(raw[mask == IGNORE_INDEX], return_counts=True)
        result["unknown"] = {str(int(v)): int(c) for v, c in zip(values, n, strict=True)}
    return result


def _summarise(split: str, labelled: bool, files: list[dict], problems: list[str]) -> dict:
    pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    images = np.zeros(NUM_CLASSES, dtype=np.int64)
    presence_pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    sizes: Counter = Counter()
    rgb, area = np.zeros(3), 0
    unknown: Counter = Counter()
    unknown_files: Counter = Counter()
    for f in files:
        if "problem" in f:
            problems.append(f["problem"])
            continue
        sizes[f["size"]] += 1
        w, h = (int(v) for v in f["size"].split("x"))
        rgb += np.asarray(f["rgb_mean"]) * w * h
        area += w * h
        if "pixels" in f:
            p = np.asarray(f["pixels"], dtype=np.int64)
            pixels += p
            images += p > 0
            presence_pixels += (p > 0) * p.sum()
        for v, c in f.get("unknown", {}).items():
            unknown[v] += c
            unknown_files[v] += 1
    total = max(int(pixels.sum()), 1)
    n_ok = sum(1 for f in files if "problem" not in f)
    labelled_files = sum(1 for f in files if "pixels" in f)
    unknown_total = sum(unknown.values())
    if labelled_files and not pixels.any():  # nothing to learn from or score against
        values = ", ".join(sorted(unknown, key=int)[:5]) or "none"
        problems.append(f"split {split!r}: no mask pixel is a known class (values found: "
                        f"{values}); the masks must hold the Duality raw ids "
                        f"({', '.join(str(c.raw_id) for c in CLASSES)})")
    return {
        "split": split,
        "labelled": labelled,
        "n_images": len(files),
        "sizes": dict(sizes),
        "rgb_mean": (rgb / max(area, 1)).tolist(),  # over every pixel of the split
        "class_pixels": pixels.tolist(),
        "class_images": images.tolist(),
        "class_presence_pixels": presence_pixels.tolist(),
        "pixel_share": (pixels / total).tolist(),
        "image_share": (images / max(n_ok, 1)).tolist(),
        # the share of mask pixels that are a known class (1.0 when every value is known)
        "known_share": int(pixels.sum()) / max(int(pixels.sum()) + unknown_total, 1),
        "unknown_values": {v: {"pixels": c, "files": unknown_files[v]}
                           for v, c in sorted(unknown.items(), key=lambda kv: int(kv[0]))},
        "problems": problems,
    }


def scan_split(root: str | Path, split: str, workers: int | None = None) -> dict:
    """Check every file of ``split`` (in parallel processes) and summarise its statistics."""
    labelled = split in LABELLED_SPLITS or (Path(root) / split / MASK_DIR).is_dir()
    try:
        samples = list_split(root, split, require_masks=split in LABELLED_SPLITS)
    except DatasetError as e:
        return _summarise(split, labelled, [], [str(e)])
    workers = workers or os.cpu_count() or 1
    bar = {"total": len(samples), "desc": f"checking {split}", "unit": "img", "leave": False,
           "disable": None}  # a bar on a terminal only
    if workers > 1 and len(samples) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            files = list(tqdm(pool.map(scan_file, samples,
                                       chunksize=max(1, len(samples) // 64)), **bar))
    else:
        files = [scan_file(s) for s in tqdm(samples, **bar)]
    return _summarise(split, labelled, files, [])


def scan(root: str | Path, splits: list[str], stats_path: str | Path | None = None,
         workers: int | None = None) -> dict:
    """Statistics for ``splits`` of ``root``, from the cache where a split is unchanged.

    Returns ``{"root", "classes", "splits": {name: summary}}`` and writes it to ``stats_path``
    (default :func:`default_stats_path`). A root that does not exist raises DatasetError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(missing_root_message(root))
    path = Path(stats_path) if stats_path else default_stats_path(root)
    cache = _load_cache(path)
    result = {"version": STATS_VERSION, "root": str(root.resolve()),
              "classes": list(CLASS_NAMES), "splits": dict(cache.get("splits", {}))}
    changed = False
    for split in splits:
        fp = fingerprint(root, split)
        cached = result["splits"].get(split)
        if cached is not None and cached.get("fingerprint") == fp:
            continue
        summary = scan_split(root, split, workers)
        summary["fingerprint"] = fp
        result["splits"][split] = summary
        changed = True
    saved = True
    if changed:
        try:
            write_json(path, result)
        except OSError as e:  # a read-only root and an unwritable HOME: keep the scan anyway
            saved = False
            warnings.warn(f"{path}: cannot save the statistics ({e.strerror or e}); they are "
                          "used for this run but will be computed again next time (set "
                          "--stats / data.stats_path to a writable file)", stacklevel=2)
    result["splits"] = {s: result["splits"][s] for s in splits}
    result["stats_path"] = str(path) if saved else None
    return result


def _load_cache(path: Path) -> dict:
    """The statistics saved at ``path``: {} when there are none, or when they are of an older
    version (then rewritten). A file that is not desertmind's statistics is refused, not
    overwritten: ``--stats`` may name any file, and a user's own JSON is not ours to replace."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):  # nothing saved there (yet)
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the statistics file ({e}); give another "
                           "--stats / data.stats_path") from e
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    splits = data.get("splits") if isinstance(data, dict) else None
    if not (isinstance(data, dict) and "version" in data and isinstance(splits, dict)
            and all(isinstance(v, dict) for v in splits.values())):
        raise DatasetError(f"{path}: not a desertmind statistics file (no version and splits); "
                           "it is left as it is: give another --stats / data.stats_path, or "
                           "delete it if it is an old statistics file")
    return data if data["version"] == STATS_VERSION else {}


def class_weights(split_stats: dict, method: str) -> np.ndarray | None:
    """Per-class loss weights from a split's statistics; None for ``none``.

    - ``inverse_log``: the study's ``1 / log(1.02 + f)`` with ``f`` a class's pixel share,
      normalised to mean 1 over the classes present.
    - ``median_frequency``: ``median(freq) / freq_c`` (Eigen & Fergus), where ``freq_c`` is
      the class's pixels over the pixels of the images it appears in.
    Classes with no pixels in the split get weight 0: they never occur as a target.
    ``study_inverse_log`` is counted on crops instead (:func:`crop_class_pixels`,
    :func:`study_class_weights`).
    """
    check_choice("class weighting (data.class_weighting)", method, WEIGHTINGS)
    if method == "study_inverse_log":
        raise ValueError("study_inverse_log weights come from crop_class_pixels, not split stats")
    if method == "none":
        return None
    pixels = np.asarray(split_stats["class_pixels"], dtype=np.float64)
    present = pixels > 0
    if not present.any():
        raise DatasetError(f"split {split_stats['split']!r} has no labelled pixels; "
                           "cannot compute class weights")
    weights = np.zeros(NUM_CLASSES, dtype=np.float64)
    if method == "inverse_log":
        share = pixels / pixels.sum()
        weights[present] = 1.0 / np.log(1.02 + share[present])
        weights[present] /= weights[present].mean()
    else:
        freq = pixels[present] / np.asarray(split_stats["class_presence_pixels"],
                                            dtype=np.float64)[present]
        weights[present] = np.median(freq) / freq
    return weights


def crop_class_pixels(samples: list[Sample], size: int, seed: int) -> np.ndarray:
    """Pixels per class in one random ``size`` square crop of each mask (whole masks smaller
    than the crop), as the study's phase 3 counted them: through its training dataset, crops
    included."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for s in samples:
        mask = remap(read_mask(s.mask))
        h, w = mask.shape
        if h >= size and w >= size:
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            mask = mask[y:y + size, x:x + size]
        counts += np.bincount(mask[mask != IGNORE_INDEX], minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts


def study_class_weights(pixels: np.ndarray) -> np.ndarray:
    """The study's phase-3 weights: ``1 / log(1.02 + f)``, normalised to mean 1 over all 10
    classes (an absent class gets the largest weight, 1 / log(1.02), as in the study)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.sum() == 0:
        raise DatasetError("no labelled pixels in the crops; cannot compute class weights")
    weights = 1.0 / np.log(1.02 + pixels / pixels.sum())
    return weights / weights.mean()


def _comparison(splits: list[dict]) -> list[str]:
    """Splits side by side: mean colour, then each class's pixel share (labelled splits), so
    a domain shift (darker images, other class balance) shows at a glance."""
    if len(splits) < 2:
        return []
    names = [s["split"] for s in splits]
    width = max(13, *(len(n) + 2 for n in names))
    lines = ["\nsplits side by side", f"  {'':<16}" + "".join(f"{n:>{width}}" for n in names)]
    rgb = ["/".join(f"{v:.0f}" for v in s["rgb_mean"]) for s in splits]
    lines.append(f"  {'mean RGB':<16}" + "".join(f"{v:>{width}}" for v in rgb))
    labelled = [s["labelled"] for s in splits]
    for c in CLASSES:
        cells = [f"{s['pixel_share'][c.train_id]:.2%}" if ok else "-"
                 for s, ok in zip(splits, labelled, strict=True)]
        lines.append(f"  {c.name:<16}" + "".join(f"{v:>{width}}" for v in cells))
    return lines


def strict_findings(result: dict) -> str:
    """What ``--strict`` counts as a problem, in words ("" when nothing): raw mask values
    outside the class table, and splits of mixed image sizes."""
    found = []
    if any(s["unknown_values"] for s in result["splits"].values()):
        found.append("unknown raw values")
    if any(len(s["sizes"]) > 1 for s in result["splits"].values()):
        found.append("mixed image sizes")
    return " and ".join(found)


def format_report(result: dict, strict: bool = False) -> str:
    """The human-readable check-data report."""
    lines = [f"dataset {result['root']}"]
    for split, s in result["splits"].items():
        sizes = ", ".join(f"{k} ({v})" for k, v in s["sizes"].items()) or "-"
        lines.append(f"\n[{split}] {s['n_images']} images"
                     f"{'' if s['labelled'] else ' (no masks)'}; sizes: {sizes}")
        if s["labelled"] and s["n_images"]:
            lines.append(f"  {'class':<16}{'raw id':>7}{'pixel share':>13}{'image share':>13}")
            for c in CLASSES:
                lines.append(f"  {c.name:<16}{c.raw_id:>7}{s['pixel_share'][c.train_id]:>12.2%}"
                             f"{s['image_share'][c.train_id]:>13.1%}")
        if len(s["sizes"]) > 1:
            lines.append("  mixed image sizes: training and prediction need data.image_size "
                         "(height, width) set, e.g. [540, 960] (a problem under --strict)")
        known = s.get("known_share", 1.0)
        if s["labelled"] and s["n_images"] and 0 < known < LOW_KNOWN_SHARE:
            lines.append(f"  WARNING: only {known:.1%} of mask pixels are a known class; the "
                         "rest are ignored in training and scoring. Are these the Duality raw "
                         "ids?")
        if s["unknown_values"]:
            lines.append("  unknown raw values (ignored, index 255): " + ", ".join(
                f"{v}: {u['pixels']} px in {u['files']} file(s)"
                for v, u in s["unknown_values"].items()))
        for p in s["problems"]:
            lines.append(f"  PROBLEM: {p}")
    lines += _comparison([s for s in result["splits"].values() if s["n_images"]])
    n = sum(len(s["problems"]) for s in result["splits"].values())
    unknown = strict_findings(result)
    if n:
        lines.append(f"\n{n} problem(s) found.")
    elif unknown and strict:
        lines.append(f"\n{unknown} found: a problem under --strict.")
    elif unknown:
        lines.append(f"\nno problems found ({unknown} noted above; --strict makes them a "
                     "problem).")
    else:
        lines.append("\nno problems found.")
    if result["stats_path"]:
        lines.append(f"statistics written to {result['stats_path']}")
    else:
        lines.append("statistics not saved (see the warning above)")
    return "\n".join(lines)
