"""configs/recipes: the published recipes that beat the study parse, say their source, and
train (shrunk to seconds, random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from desertmind.cli.main import main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"mobilenet_native_crops", "deeplabv3plus_r101"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_states_its_published_figure_and_source(recipe: Path):
    header = "".join(line for line in recipe.read_text().splitlines(keepends=True)
                      if line.startswith("#"))
    assert "Published: val mIoU" in header and "repo " in header


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_resolves_and_trains(recipe: Path, synth_root: Path, tmp_path: Path, capsys,
                                         phase_args):
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(recipe), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["logger"]["init_args"]["name"] == f"recipes/{recipe.stem}"
    shrink = phase_args("phase1", synth_root, tmp_path)[4:]  # the overrides, not the phase file
    assert main(["fit", "-c", str(recipe), "-c", str(recipe.parents[1] / "demo.yaml"), *shrink,
                 "--model.weights", "none", "--trainer.precision", "32-true"]) == 0
    assert (tmp_path / "recipes" / recipe.stem / "checkpoints" / "best.ckpt").is_file()


def test_the_recipes_keep_their_published_settings(capsys):
    def resolved(name: str) -> dict:
        with pytest.raises(SystemExit):
            main(["fit", "-c", str(RECIPES[0].parent / f"{name}.yaml"), "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    mobile = resolved("mobilenet_native_crops")
    assert (mobile["data"]["crop_size"], mobile["data"]["train_preset"]) == (513, "scale_crop")
    assert mobile["data"]["image_size"] is None and mobile["trainer"]["max_epochs"] == 50
    assert mobile["model"]["scheduler"]["class_path"].endswith("PolyLR")
    plus = resolved("deeplabv3plus_r101")
    m = plus["model"]
    assert (m["arch"], m["backbone"], m["loss"]) == ("deeplabv3plus", "resnet101",
                                                     "0.5 ce + 0.5 dice")
    assert plus["data"]["image_size"] == [512, 896] and plus["trainer"]["max_epochs"] == 60
    assert plus["freeze"]["unfreeze_at_epoch"] == 5 and plus["trainer"]["precision"] == "bf16-mixed"
    assert m["optimizer"]["init_args"]["lr"] * m["backbone_lr_mult"] == pytest.approx(3e-5)
