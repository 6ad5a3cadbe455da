from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from desertmind.cli.main import main
from desertmind.data.classes import RAW_IDS, remap
from desertmind.data.imageio import read_image, read_mask
from desertmind.data.synth import generate
from desertmind.errors import DatasetError


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    return bool(files) and files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def test_synth_is_deterministic_for_a_seed(synth_root: Path, tmp_path: Path, tiny_spec: dict):
    again = generate(tmp_path / "again", **tiny_spec)
    assert _same_tree(synth_root, again)
    other = generate(tmp_path / "other", **{**tiny_spec, "seed": tiny_spec["seed"] + 1})
    assert not _same_tree(synth_root, other)


def test_synth_writes_the_duality_format_and_uses_every_class(synth_root: Path):
    for split, n in (("train", 8), ("val", 4)):
        images = sorted((synth_root / split / "Color_Images").glob("*.png"))
        masks = sorted((synth_root / split / "Segmentation").glob("*.png"))
        assert len(images) == len(masks) == n
        assert [p.name for p in images] == [p.name for p in masks]
    seen: set[int] = set()
    for m in (synth_root / "train" / "Segmentation").glob("*.png"):
        mask = read_mask(m)  # refuses anything but single-channel uint16
        assert mask.shape == (48, 80)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(RAW_IDS)
    img = read_image(next((synth_root / "train" / "Color_Images").glob("*.png")))
    assert img.shape == (48, 80, 3) and img.dtype == np.uint8


def test_synth_cli_refuses_to_overwrite(tmp_path: Path, capsys):
    args = ["synth", str(tmp_path / "d"), "--n-train", "2", "--n-val", "1",
            "--height", "24", "--width", "32"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_sky_is_above_landscape(synth_root: Path):
    for m in (synth_root / "val" / "Segmentation").glob("*.png"):
        mask = read_mask(m)
        sky_rows = np.nonzero((mask == 10000).any(1))[0]
        land_rows = np.nonzero((mask == 7100).any(1))[0]
        assert sky_rows.min() == 0 and land_rows.max() == mask.shape[0] - 1
        assert np.median(np.nonzero(mask == 10000)[0]) < np.median(np.nonzero(mask == 7100)[0])


@pytest.mark.parametrize("bad", [["--n-train", "-1"], ["--height", "4"]])
def test_synth_rejects_nonsense_arguments(tmp_path: Path, bad, capsys):
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "d"), *bad])
    assert "must be at least" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _split_stats(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's mean RGB over its images and its class shares over its pixels."""
    means, counts = [], np.zeros(10)
    for p in sorted((root / split / "Color_Images").glob("*.png")):
        means.append(read_image(p).reshape(-1, 3).mean(0))
        mask = remap(read_mask(root / split / "Segmentation" / p.name))
        counts += np.bincount(mask.ravel(), minlength=10)[:10]
    return np.mean(means, axis=0), counts / counts.sum()


def test_the_shifted_domain_is_darker_rocky_and_lacks_three_classes(tmp_path: Path):
    root = generate(tmp_path / "d", n_train=16, n_val=0, height=72, width=128, seed=1,
                    n_shifted=16)
    assert not (root / "val").exists()  # 0 scenes: not written

    (src_rgb, src_share), (dst_rgb, dst_share) = (_split_stats(root, "train"),
                                                  _split_stats(root, "test_shifted"))
    assert (dst_rgb < 0.92 * src_rgb).all()  # darker in every channel
    assert dst_share[[4, 5, 6]].sum() == 0 and src_share[[4, 5, 6]].min() > 0
    assert dst_share[7] > 3 * src_share[7]  # rocks
    again = generate(tmp_path / "again", n_train=0, n_val=0, height=72, width=128, seed=1,
                     n_shifted=16)
    assert _same_tree(root / "test_shifted", again / "test_shifted")


def test_the_dusk_desert_is_a_second_shift_with_other_absent_classes(tmp_path: Path):
    root = generate(tmp_path / "d", n_train=16, n_val=0, height=72, width=128, seed=2,
                    n_shifted=0, n_dusk=16)
    assert not (root / "test_shifted").exists()

    (src_rgb, src_share), (dusk_rgb, dusk_share) = (_split_stats(root, "train"),
                                                    _split_stats(root, "test_dusk"))
    assert dusk_rgb.sum() < 0.8 * src_rgb.sum()  # dim
    assert dusk_rgb[0] / dusk_rgb[2] > 1.3 * src_rgb[0] / src_rgb[2]  # warm: red over blue
    # Trees, Lush Bushes and Flowers never; Ground Clutter and Logs (absent from test_shifted)
    # still there
    assert dusk_share[[0, 1, 5]].sum() == 0 and src_share[[0, 1, 5]].min() > 0
    assert dusk_share[4] > 0 and dusk_share[6] > 0
    assert main(["synth", str(tmp_path / "cli"), "--n-train", "0", "--n-val", "0",
                 "--n-dusk", "2", "--height", "32", "--width", "48"]) == 0
    assert len(list((tmp_path / "cli" / "test_dusk" / "Color_Images").glob("*.png"))) == 2


def test_the_sealed_desert_is_a_third_look_from_its_own_seed_stream(tmp_path: Path):
    """Cooler light, another camera (half resolution, JPEG blocking), a third set of absent
    classes; its own seed stream, so no scene repeats another split's; never trained on."""
    root = generate(tmp_path / "d", n_train=16, n_val=0, height=72, width=128, seed=3,
                    n_sealed=16)
    (src_rgb, src_share), (sealed_rgb, sealed_share) = (_split_stats(root, "train"),
                                                        _split_stats(root, "test_sealed"))
    assert sealed_rgb[2] / sealed_rgb[0] > src_rgb[2] / src_rgb[0]  # cooler light
    assert sealed_share[[1, 3, 6]].sum() == 0 and src_share[[1, 3, 6]].min() > 0
    assert sealed_share[5] > 0 and sealed_share[4] > 0  # Flowers, Clutter: absent elsewhere
    sealed = [read_image(p) for p in sorted((root / "test_sealed" / "Color_Images").iterdir())]
    # the camera: lower resolution, so neighbouring pixels differ less than the source's
    source = [read_image(p) for p in sorted((root / "train" / "Color_Images").iterdir())]

    def step(images):
        return np.mean([np.abs(np.diff(i.astype(float), axis=1)).mean() for i in images])
    assert step(sealed) < 0.7 * step(source)
    again = generate(tmp_path / "again", n_train=0, n_val=0, height=72, width=128, seed=3,
                     n_sealed=16)
    assert _same_tree(root / "test_sealed", again / "test_sealed")
    with pytest.raises(DatasetError, match="domain 'sealed'"):
        generate(tmp_path / "no", n_train=2, n_val=0, height=32, width=48, domain="sealed")
    assert main(["synth", str(tmp_path / "cli"), "--n-train", "0", "--n-val", "0",
                 "--n-sealed", "2", "--height", "32", "--width", "48"]) == 0
    assert len(list((tmp_path / "cli" / "test_sealed" / "Color_Images").glob("*.png"))) == 2
