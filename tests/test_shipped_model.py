"""The shipped model's parameter count as README states it, a regression guard on its accuracy, and
README's quick start run word for word on a fresh clone."""
import os
import re
import subprocess

import pytest
import torch

from mobile_model import CONFIGS, SHIPPED, build_model, count_parameters, inference_parameters
from train import dog_emotion
from train.checkpoint import load_weights
from train.common import REPO_ROOT, RUN_LOG, SHIPPED_WEIGHTS
from train.recipes import SHIP_RUN_OPTIONS, SHIPPED_TEACHER, recipe_record, run_values
from train.runlog import read_log

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


def test_the_train_commands_defaults_are_the_shipped_recipe_and_make_train_uses_them():
    # one place: `python -m train.dog_emotion train` is `make train` is the shipped model's recipe,
    # on train only (val held out); the shipped file is that run with SHIP_RUN_OPTIONS
    default = dog_emotion.parse_args(["train"])
    assert default.model == SHIPPED and default.config == ""
    assert default.epochs == 300 and tuple(default.teacher) == SHIPPED_TEACHER and default.teacher_views == 32
    assert default.train_on == "train" and default.threads == 0
    assert dog_emotion.parse_args(["train", *SHIP_RUN_OPTIONS]).train_on == "train+val"
    assert re.search(r"^RECIPE \?=\s*$", (REPO_ROOT / "Makefile").read_text(), re.M), "make train passes no recipe"
    # the run that made the shipped file (run log: seed 0, declared in advance) ran exactly these
    # values: its recipe then (recipes/mini14-bank.toml, on train only) with --train-on train+val
    shipped_run = next(r for r in read_log(RUN_LOG) if r["run"] == "mini14-bank-tv-s0")
    assert shipped_run["seed"] == 0 and shipped_run["options"] == "--train-on train+val"
    today, ran = {**recipe_record("")["values"], "train_on": "train+val"}, run_values(shipped_run)
    assert {k: v for k, v in ran.items() if k in today} == today
    assert {k: v for k, v in ran.items() if k not in today} == {"branches": 0, "mix_prob": 0.0}   # options since removed: off
    assert dog_emotion.parse_args(["train", "--teacher"]).teacher == []    # `--teacher` alone: none


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


@pytest.mark.slow
def test_the_quick_start_runs_as_written_on_a_fresh_clone_and_prints_readmes_output(tmp_path):
    """A newcomer's first command: README's quick start, in a clone of this repository with
    ../shared beside it, prints README's output line. The clone shares this checkout's .venv (its
    requirements dated back so that make sees it current): building one is `make venv`'s test."""
    shared = REPO_ROOT.parent / "shared"
    if not (shared / "datasets" / "dog_emotion" / "test").is_dir():
        pytest.skip(f"{shared}/datasets/dog_emotion not found: the quick start reads a photo of it")
    command = re.search(r"## Quick start\n\n```bash\n(.*?)\n```\n\n```\n(.*?)\n```", README, re.S)
    assert command, "README's quick start: a bash block with the command, then a block with its output"
    line, output = command.group(1).split("#")[0].strip(), command.group(2).strip()
    clone = tmp_path / "work" / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (tmp_path / "work" / "shared").symlink_to(shared)
    (clone / ".venv").symlink_to(REPO_ROOT / ".venv")
    for name in ("requirements.txt", "requirements.lock"):
        os.utime(clone / name, (0, 0))
    done = subprocess.run(["bash", "-c", line], cwd=clone, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert output in done.stdout, (output, done.stdout[-2000:])
