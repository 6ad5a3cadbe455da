"""configs/recipes: the published recipes that beat the study and the foundation-model recipes
parse, say their source (and, until measured, that they are not), and train (shrunk to seconds,
random weights, the smallest variant of their encoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from desertmind.cli.main import main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))
#: the foundation-model recipes, not yet measured on the real data: their smallest encoder
FOUNDATION = {"dinov3_vitb_dpt": "tu-vit_small_patch16_dinov3",
              "dinov3_vitb_dpt_lora": "tu-vit_small_patch16_dinov3",
              "convnext_b_dinov3_upernet": "tu-convnext_tiny"}


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"mobilenet_native_crops", "deeplabv3plus_r101",
                                         *FOUNDATION}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_states_its_published_figure_and_source(recipe: Path):
    header = "".join(line for line in recipe.read_text().splitlines(keepends=True)
                      if line.startswith("#"))
    if recipe.stem in FOUNDATION:
        assert "Not yet measured on the real data" in header and "Sources:" in header
    else:
        assert "Published: val mIoU" in header and "repo " in header


def _recipe_param(recipe: Path):
    """Foundation recipes train their real (smallest) network: layer decay and adapters need
    a real encoder, which the stand-in is not (slow: test_foundation.py covers their parts in
    make test)."""
    slow = (pytest.mark.slow,) if recipe.stem in FOUNDATION else ()
    return pytest.param(recipe, id=recipe.stem, marks=slow)


@pytest.mark.parametrize("recipe", [_recipe_param(r) for r in RECIPES])
def test_each_recipe_resolves_and_trains(recipe: Path, synth_root: Path, tmp_path: Path, capsys,
                                         phase_args):
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(recipe), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["logger"]["init_args"]["name"] == f"recipes/{recipe.stem}"
    # the overrides, not the phase file; the stand-in network unless the recipe is a
    # foundation one
    arch = None if recipe.stem in FOUNDATION else "tiny"
    shrink = phase_args("phase1", synth_root, tmp_path, arch=arch)[4:]
    smaller = (["--model.network.backbone", FOUNDATION[recipe.stem]] if recipe.stem in FOUNDATION
               else [])
    assert main(["fit", "-c", str(recipe), "-c", str(recipe.parents[1] / "demo.yaml"), *shrink,
                 *smaller, "--model.network.weights", "none", "--trainer.precision", "32-true",
                 "--trainer.log_every_n_steps", "1"]) == 0
    assert (tmp_path / "recipes" / recipe.stem / "checkpoints" / "best.ckpt").is_file()
    if cfg["model"]["param_groups"]["layer_decay"] < 1:  # the LR monitor plots every layer's group
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (run,) = (tmp_path / "recipes" / recipe.stem).glob("version_*")
        events = EventAccumulator(str(run))
        events.Reload()
        tags = {t for t in events.Tags()["scalars"] if t.startswith("lr-")}
        assert {"lr-AdamW/backbone.0", "lr-AdamW/backbone.1", "lr-AdamW/head"} <= tags
        decayed = [events.Scalars(f"lr-AdamW/backbone.{k}")[0].value for k in (0, 1)]
        assert decayed[0] == pytest.approx(decayed[1] * cfg["model"]["param_groups"]["layer_decay"])


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
    net = m["network"]
    assert (net["arch"], net["backbone"], m["loss"]) == ("deeplabv3plus", "resnet101",
                                                         "0.5 ce + 0.5 dice")
    assert plus["data"]["image_size"] == [512, 896] and plus["trainer"]["max_epochs"] == 60
    assert plus["freeze"]["unfreeze_at_epoch"] == 5 and plus["trainer"]["precision"] == "bf16-mixed"
    assert m["optimizer"]["init_args"]["lr"] * m["param_groups"]["backbone_lr_mult"] == \
        pytest.approx(3e-5)


def test_the_foundation_recipes_keep_their_settings(capsys):
    def resolved(name: str) -> dict:
        with pytest.raises(SystemExit):
            main(["fit", "-c", str(RECIPES[0].parent / f"{name}.yaml"), "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    dpt, lora, convnext = (resolved(name) for name in FOUNDATION)
    m = dpt["model"]["network"]
    assert (m["arch"], m["backbone"], m["weights"]) == ("dpt", "tu-vit_base_patch16_dinov3",
                                                        "lvd1689m")
    assert dpt["model"]["param_groups"]["layer_decay"] == 0.9 and m["lora"]["rank"] == 0
    assert dpt["data"]["image_size"] is None and dpt["speed"]["grad_checkpointing"] is True
    assert dpt["ema"]["init_args"]["decay"] == 0.999
    assert lora["model"]["network"]["lora"]["rank"] == 16
    assert lora["model"]["param_groups"]["layer_decay"] == 1.0
    assert lora["model"]["optimizer"]["init_args"]["weight_decay"] == 0.05
    assert lora["ema"] == dpt["ema"] and lora["model"]["network"]["backbone"] == m["backbone"]
    c = convnext["model"]["network"]
    assert (c["arch"], c["backbone"], c["weights"]) == ("upernet", "tu-convnext_base",
                                                        "dinov3_lvd1689m")
