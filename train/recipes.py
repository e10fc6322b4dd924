"""Training recipes: TOML files of `train` options (recipes/*.toml), read, checked and keyed.

A recipe sets the defaults of `python -m train.dog_emotion train` (`add_train_options` below is
that command's whole set of options); options given on the command line still win. There is one
layer: the command's own defaults are the shipped model's recipe (`train --help` shows them), and a
recipe file states only what differs from them; no recipe builds on another, and a seed is the
--seed option, not a file. Every value is checked by the same argparse parser the command line
goes through, so a recipe can hold nothing the command line would refuse.
"""
from __future__ import annotations

import argparse
import json
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mobile_model import CONFIGS, SHIPPED
from train.common import ARTIFACTS, ProjectError, at_least, device_name, fraction, real
from train.data import DEFAULT_DATA, FRAMINGS



@dataclass(frozen=True)
class TeacherRun:
    """One teacher of the shipped model: the recipe and seed it trains from scratch with, and the file it ships as."""
    recipe: str      # recipes/<recipe>.toml
    seed: int
    weights: str

    @property
    def name(self) -> str:
        """Its run folder: `make artifacts/runs/<name>/dog_emotion.pkl` trains it, as `make reproduce` does."""
        return f"{self.recipe}-s{self.seed}"


# The shipped model's teachers, named once (the default --teacher, `make teachers`, `make reproduce`):
# the four `large` trained from scratch, read from a bank of SHIPPED_TEACHER_VIEWS recorded views of
# every photo (train/teacher_bank.py)
SHIPPED_TEACHERS = (TeacherRun("large", 0, "weights/teacher_large.pkl"),
                    TeacherRun("large", 1, "weights/teacher_large_s1.pkl"),
                    TeacherRun("large", 2, "weights/teacher_large_s2.pkl"),
                    TeacherRun("teacher-large128", 3, "weights/teacher_large128.pkl"))
SHIPPED_TEACHER = tuple(t.weights for t in SHIPPED_TEACHERS)
# The shipped file is the defaults with these options: its recipe was fixed on val in advance, so its
# final run also learns from val (and its temperature is fitted on a train-only sibling's val logits)
SHIP_RUN_OPTIONS = ("--train-on", "train+val")
SHIPPED_TEACHER_VIEWS = 32
DEFAULT_BATCH = 64   # images per step; a data set smaller than one batch gets a smaller one (engine.fit_batch)

# Options that are not part of a recipe (how this invocation was asked), and those that change
# where or how fast a run goes but never what it computes: every other option must match for --resume.
NOT_RECIPE_OPTIONS = ("command", "config", "resume", "stop_after", "force")
RUN_ONLY_OPTIONS = NOT_RECIPE_OPTIONS + ("out", "cache_dir", "threads", "no_channels_last", "no_test")


MAX_RECIPE_BYTES = 64_000


class RecipeError(ProjectError):
    """A recipe file that cannot be used; the message names the file."""


def result_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in RUN_ONLY_OPTIONS}


def recipe_key(run_args: dict) -> str:
    """What a run trained, leaving out its seed and where or how fast it ran: two runs with the
    same key are draws of one recipe."""
    return json.dumps({k: v for k, v in result_options(run_args).items() if k != "seed"}, sort_keys=True)


def recipe_text(options: dict) -> str:
    """A run's resolved options as TOML (JSON's strings, numbers, booleans and lists are TOML too)."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items() if k not in NOT_RECIPE_OPTIONS)


def read_recipe(path: Path) -> dict:
    """A TOML recipe's options as written. A recipe stands alone: what it does not set is the train
    command's default, so reading one file (and `train --help`) tells everything a run did."""
    if path.exists() and not path.is_file():   # a folder, /dev/zero, a pipe: never read (it could hang or never end)
        raise RecipeError(f"recipe {path}: not a regular file")
    if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {path}: {path.stat().st_size:,} bytes, not a recipe (at most {MAX_RECIPE_BYTES:,})")
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except OSError as e:
        raise RecipeError(f"recipe {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path}: not valid TOML ({e})") from None
    except RecursionError:
        raise RecipeError(f"recipe {path}: nested too deeply to be a recipe") from None
    if "extends" in recipe:
        raise RecipeError(f"recipe {path}: 'extends' is gone, recipes stand alone on the train command's defaults: "
                          f"copy the options of {recipe['extends']!r} that differ from `train --help` into this file")
    return recipe


def as_argv(key: str, value) -> list[str]:
    """One recipe entry as the command line would spell it."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    return [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]


def recipe_defaults(path: str | Path, options_parser: argparse.ArgumentParser) -> dict:
    """The recipe's values, parsed and checked by `options_parser` (the command's own options, built
    with exit_on_error=False): an unknown key, a list where one value belongs, a value of the wrong
    type or outside its range is a RecipeError naming the file it came from."""
    defaults = vars(options_parser.parse_args([]))
    parsed = {}
    source = Path(path)
    for key, value in read_recipe(source).items():
        if key not in defaults or key in NOT_RECIPE_OPTIONS:
            known = sorted(k for k in defaults if k not in NOT_RECIPE_OPTIONS)
            raise RecipeError(f"recipe {source}: unknown option {key!r} (known: {', '.join(known)})")
        if isinstance(defaults[key], list) != isinstance(value, list):
            raise RecipeError(f"recipe {source}: option {key!r} takes "
                              f"{'a list' if isinstance(defaults[key], list) else 'one value'}, not {value!r}")
        if isinstance(defaults[key], bool) and not isinstance(value, bool):
            raise RecipeError(f"recipe {source}: option {key!r} takes true or false, not {value!r}")
        try:
            parsed[key] = getattr(options_parser.parse_args(as_argv(key, value)), key)
        except argparse.ArgumentError as e:
            raise RecipeError(f"recipe {source}: option {key!r}: {e}") from None
    return parsed


# ---------------------------------------------------------------- the options a recipe can set

# Bounds on the options that scale work: past them a run is a typo, not a plan (10,000 epochs of
# the shipped recipe is three months on two cores; 1,024 views a photo is a bank of ~12 h, 0.4 GB)
MAX_EPOCHS = 10_000
MAX_TEACHER_VIEWS = 1024


def input_size(text: str) -> int:
    """argparse type of --input-size: 0 (the config's own) or 32..1024 px."""
    value = int(text)
    if value != 0 and not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text} px is outside 32..1024 (0: the config's own)")
    return value


def add_train_options(t: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option of `train`: the subcommand's and the parser that checks a recipe's values."""
    t.add_argument("--config", default="",
                   help="TOML recipe (recipes/*.toml) whose values replace the defaults below; options given on the "
                        "command line win (default: none: the defaults below are the shipped model's recipe)")
    t.add_argument("--data", default=str(DEFAULT_DATA), help="split root {train,val,test}/<class>/ (default: %(default)s)")
    t.add_argument("--model", default=SHIPPED, choices=sorted(CONFIGS), help="model size from mobile_model.CONFIGS (default: %(default)s)")
    t.add_argument("--input-size", type=input_size, default=0, help="input resolution in px, 0 = the config's (default: %(default)s)")
    t.add_argument("--framing", default="crop", choices=FRAMINGS,
                   help="how a photo becomes the input square, in training and in every use of the model: crop (shorter "
                        "side, centre square) or squash (the whole photo scaled to the input, aspect not kept: what "
                        "MediaPipe's ImageClassifier does with an app's bitmap) (default: %(default)s)")
    t.add_argument("--init", default="",
                   help="start from the weights of this .pkl (same --model; its inference form, BatchNorm folded) "
                        "instead of a random init: fine-tuning (default: none)")
    t.add_argument("--no-flip-average", action="store_true", help="evaluate without the built-in mirror-image averaging (teachers: half the cost)")
    t.add_argument("--epochs", type=at_least(1, MAX_EPOCHS), default=300, help="training epochs (default: %(default)s)")
    t.add_argument("--batch-size", type=at_least(1), default=DEFAULT_BATCH, help="images per step, over all processes "
                   "of a DDP run; halved for a data set smaller than one batch (default: %(default)s)")
    t.add_argument("--lr", type=real(0, 10, low_open=True), default=4e-3, help="peak AdamW learning rate (default: %(default)s)")
    t.add_argument("--weight-decay", type=real(0, 10), default=0.05, help="AdamW weight decay on conv/linear weights (default: %(default)s)")
    t.add_argument("--label-smoothing", type=real(0, 1, high_open=True), default=0.1, help="label smoothing (default: %(default)s)")
    t.add_argument("--crop-scale", type=fraction, default=0.25, help="smallest area share of a random crop (default: %(default)s)")
    t.add_argument("--erase-prob", type=fraction, default=0.25, help="share of images with one random box erased (default: %(default)s)")
    t.add_argument("--warmup-epochs", type=at_least(0), default=5, help="linear warm-up epochs before cosine decay (default: %(default)s)")
    t.add_argument("--ema-decay", type=real(0, 1, high_open=True), default=0.998, help="EMA decay per step of the evaluated weights (default: %(default)s)")
    t.add_argument("--teacher", nargs="*", default=list(SHIPPED_TEACHER),
                   help="weights .pkl of models trained here from scratch to distil from; several = their ensemble; "
                        "`--teacher` alone: none (default: %(default)s; skipped with a NOTE when its classes are not the data's)")
    t.add_argument("--teacher-no-flip", action="store_true", help="teachers see the student's view only, not also its "
                                                                 "mirror image: half the teacher's cost (default: off)")
    t.add_argument("--teacher-views", type=at_least(0, MAX_TEACHER_VIEWS), default=SHIPPED_TEACHER_VIEWS,
                   help="read the teachers' outputs from a bank of this many recorded views of every photo, built "
                        "once in --cache-dir and shared by every run of the same teachers (train/teacher_bank.py); 0: run the "
                        "teachers on every batch (default: %(default)s)")
    t.add_argument("--distill-weight", type=fraction, default=0.7, help="share of the distillation term in the loss (default: %(default)s)")
    t.add_argument("--distill-loss", default="kl", choices=("kl", "dist"),
                   help="the distillation term: kl (Hinton's KL divergence) or dist (DIST: Pearson correlation of the "
                        "probabilities across classes and across the batch) (default: %(default)s)")
    t.add_argument("--distill-temperature", type=real(0.05, 100), default=2.0, help="softmax temperature for distillation (default: %(default)s)")
    t.add_argument("--seed", type=at_least(0), default=0, help="seed for init, data order and augmentation (default: %(default)s)")
    t.add_argument("--device", type=device_name, default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps (default: %(default)s)")
    t.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default: off, float32)")
    t.add_argument("--threads", type=at_least(0), default=0, help="torch intra-op threads, 0 = torch's default (default: %(default)s)")
    t.add_argument("--no-channels-last", action="store_true",
                   help="keep tensors NCHW on the CPU (channels-last, the default there, is faster on CPUs; "
                        "same results to float rounding)")
    t.add_argument("--out", default=str(ARTIFACTS / "train"), help="output folder (default: %(default)s)")
    t.add_argument("--cache-dir", default=str(ARTIFACTS / "cache"), help="decoded-image cache folder (default: %(default)s)")
    t.add_argument("--keep", default="final", choices=("final", "best"),
                   help="weights kept as dog_emotion.pkl: the EMA at the last epoch, or at the best-val epoch (default: %(default)s)")
    t.add_argument("--train-on", default="train", choices=("train", "train+val"),
                   help="splits that train: train (val held out, its accuracy honest), or train+val for a final model "
                        "whose recipe val already chose, as the shipped file was (default: %(default)s)")
    t.add_argument("--no-test", action="store_true", help="do not evaluate the test split at the end (search runs: "
                                                          "test is read once per final candidate)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.ckpt")
    t.add_argument("--force", action="store_true", help="start afresh in an --out folder that holds another run "
                                                        "(its files are replaced; default: refuse)")
    t.add_argument("--stop-after", type=at_least(0), default=0, help="stop after this epoch (to test --resume; default: run all)")
    return t


def recipe_of(argv: list[str]) -> dict:
    """The values of the recipe that a `train` command line's --config names ({} for none: the
    defaults are the shipped recipe), read before the whole line is parsed (as timm does), so that
    they become the defaults the rest of the line overrides."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    config = pre.parse_known_args(argv)[0].config
    return recipe_defaults(config, add_train_options(argparse.ArgumentParser(exit_on_error=False))) if config else {}


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """`train`'s options with --config's recipe as their defaults, for the library's commands that
    run a recipe's parts (the bank, the benchmark's training layouts)."""
    parser = add_train_options(argparse.ArgumentParser(description="the options of `python -m train.dog_emotion train`"))
    parser.set_defaults(**recipe_of(argv))
    return parser.parse_args(argv)


def recipe_record(config: str) -> dict:
    """What a run's recipe said when the run started: its file and its values, every option the
    command line did not set (the file's, else the command's defaults). Kept in the run folder
    (recipe.json), so the run log describes the run as it was, whatever later happens to the recipe
    file or the defaults."""
    parser = add_train_options(argparse.ArgumentParser(exit_on_error=False))
    values = vars(parser.parse_args([]))
    if config:
        values.update(recipe_defaults(config, parser))
    values = {k: v for k, v in result_options(values).items() if k not in ("data", "seed")}   # where; the run's own
    return {"recipe": str(Path(config).resolve()) if config else "", "values": values}


def recipe_overrides(run_args: dict, recorded: dict) -> str:
    """What a run changed on the command line against its recipe (seed aside), as the command line
    spells it: e.g. '--epochs 60 --teacher-no-flip'. `recorded`: the recipe as the run saw it
    (recipe_record)."""
    base = recorded["values"]
    diffs = {k: v for k, v in result_options(run_args).items()
             if k not in ("seed", "data") and k in base and base[k] != v}   # data: where, not what
    return " ".join(" ".join(as_argv(k, v)) for k, v in sorted(diffs.items()))


def run_values(row: dict) -> dict | None:
    """What a run of the run log trained with: its recipe's values (recipe_record, as the run saw
    them) with its command-line options (recipe_overrides) applied, e.g. the shipped runs' recipe
    file on train only with --train-on train+val. An option added since the run took its default,
    which is the behaviour the run had. None for a row whose options are not today's train options
    (early rows describe how they ran in words)."""
    parser = add_train_options(argparse.ArgumentParser(exit_on_error=False))
    parser.set_defaults(**row["recipe_values"])
    try:
        given, unknown = parser.parse_known_args(shlex.split(row["options"]))
    except (argparse.ArgumentError, ValueError):
        return None
    return None if unknown else {k: v for k, v in result_options(vars(given)).items() if k not in ("data", "seed", "config")}
