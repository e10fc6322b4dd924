"""The shipped model's parameter count as README states it, and a regression guard on its accuracy."""
import re

import pytest
import torch

from mobile_model import CONFIGS, SHIPPED, build_model, count_parameters, inference_parameters
from train import dog_emotion
from train.checkpoint import load_weights
from train.common import REPO_ROOT, SHIPPED_RECIPE, SHIPPED_WEIGHTS
from train.recipes import read_recipe

README = (REPO_ROOT / "README.md").read_text()
SHIPPED_LINE = re.search(r"\| parameters \(as it ships, BatchNorm folded\) \| ([\d,]+) \(`(\w+)`\).*?"
                         r"\| test accuracy, the shipped file \| ([\d.]+)%", README, re.S)


def test_readme_states_the_shipped_model():
    assert SHIPPED_LINE, "README's table must have the rows 'parameters (as it ships, ...) | N (`name`)' and 'test accuracy, the shipped file | X%'"
    assert SHIPPED_LINE.group(2) == SHIPPED


def test_parameter_count_matches_readme_and_weights_file():
    stated = int(SHIPPED_LINE.group(1).replace(",", ""))
    assert inference_parameters(build_model(SHIPPED)) == stated
    loaded, ckpt = load_weights(SHIPPED_WEIGHTS)
    assert loaded.config.folded, "the shipped file holds the folded inference form"
    assert ckpt["params"] == stated == count_parameters(loaded)
    # the count is the sum over the layers, nothing hidden in buffers (a folded model has none)
    assert stated == sum(p.numel() for p in loaded.parameters()) and not list(loaded.buffers())
    # float32 weights plus a little metadata: nothing else rides along
    assert SHIPPED_WEIGHTS.stat().st_size < 4 * stated + 100_000


def test_the_shipped_recipe_trains_the_shipped_model_and_make_train_uses_it():
    assert read_recipe(SHIPPED_RECIPE)["model"][0] == SHIPPED
    makefile_default = re.search(r"^RECIPE \?= (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert makefile_default and makefile_default.group(1) == SHIPPED_RECIPE.relative_to(REPO_ROOT).as_posix()
    # the command's own defaults are the shipped recipe, so `python -m train.dog_emotion train` is `make train`
    default = vars(dog_emotion.parse_args(["train"]))
    explicit = vars(dog_emotion.parse_args(["train", "--config", str(SHIPPED_RECIPE)]))
    assert {k: v for k, v in default.items() if k != "config"} == {k: v for k, v in explicit.items() if k != "config"}
    assert default["epochs"] == 160 and default["teacher"] == ["weights/teacher_large_distilled.pkl"]
    assert default["train_on"] == "train+val" and default["threads"] == 0
    assert dog_emotion.parse_args(["train", "--config", ""]).teacher == []    # '' is no recipe at all


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_named_config_builds_and_runs(name):
    model = build_model(name).eval()
    size = model.config.input_size
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 4)


@pytest.mark.slow
def test_shipped_weights_reproduce_readme_test_accuracy(real_data, capsys):
    stated = float(SHIPPED_LINE.group(3))
    result = dog_emotion.cmd_evaluate(dog_emotion.parse_args(
        ["evaluate", "--data", str(real_data), "--split", "test"]))
    assert result["n"] == 400 and result["skipped"] == 0
    assert abs(result["accuracy"] - stated) <= 1.0, f"measured {result['accuracy']}%, README says {stated}%"
