"""Training recipes: TOML files of `train` options (recipes/*.toml), read, checked and keyed.

A recipe sets the defaults of `python -m train.dog_emotion train`; options given on the command
line still win. `extends = "other.toml"` (relative to the recipe's folder) loads that recipe first,
so a variant states only what differs from the one recipe it builds on. Every value is checked by
the same argparse parser the command line goes through, so a recipe can hold nothing the command
line would refuse.
"""
from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from train.common import ProjectError

# Options that are not part of a recipe (how this invocation was asked), and those that change
# where or how fast a run goes but never what it computes: every other option must match for --resume.
NOT_RECIPE_OPTIONS = ("command", "config", "resume", "stop_after", "force")
RUN_ONLY_OPTIONS = NOT_RECIPE_OPTIONS + ("out", "cache_dir", "threads", "no_channels_last", "no_test")


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


def read_recipe(path: Path, chain: tuple = ()) -> dict:
    """A TOML recipe's options, each as (value, the file it came from); `extends` is resolved."""
    if path.resolve() in chain:
        raise RecipeError(f"recipe {path}: extends itself (" + " -> ".join(str(p) for p in chain + (path,)) + ")")
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except OSError as e:
        raise RecipeError(f"recipe {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path}: not valid TOML ({e})") from None
    options = {}
    if "extends" in recipe:
        base = recipe.pop("extends")
        if not isinstance(base, str):
            raise RecipeError(f"recipe {path}: 'extends' takes one recipe file name, not {base!r}")
        options = read_recipe(path.parent / base, chain + (path.resolve(),))
    options.update({key: (value, path) for key, value in recipe.items()})
    return options


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
    for key, (value, source) in read_recipe(Path(path)).items():
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
