"""The shipped weights format (.pkl) and its safe loader.

A weights file is `torch.save` of a plain dict of tensors, strings, numbers and lists:
{"format", "arch", "config", "classes", "params", "state_dict", "preprocess", "metrics"}.
Format 2 (`config["folded"]`) stores the inference form (BatchNorm and re-parameterization
branches folded into the convolutions, `mobile_model.fold`); format 1 files hold the training
form and still load. `load_weights` always returns the inference form. Only `torch.load(..., weights_only=True)` ever reads it, so a file that needs arbitrary objects
unpickled is refused instead of executed.
"""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import torch

from mobile_model import MobileCNN, ModelConfig, count_parameters, fold
from train.common import ProjectError, save_torch
from train.data import preprocess_spec

FORMAT = "dog-emotion-weights/2"
READABLE_FORMATS = ("dog-emotion-weights/1", FORMAT)
ARCH = "MobileCNN"


class CheckpointError(ProjectError):
    """A weights file or checkpoint that cannot be used; the message names the file."""


def safe_load(path: str | Path) -> dict:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message goes on to suggest weights_only=False: the one thing not to do with
        # a file from elsewhere, so it is never repeated
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable weights file (not a torch.save file)") from None
        raise CheckpointError(f"{path}: refused: not a plain weights file (tensors, numbers, strings and "
                              f"containers only); reading the rest could run code, so it was not loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable weights file ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def save_weights(model: MobileCNN, classes: list[str], path: str | Path, metrics: dict | None = None) -> Path:
    return save_torch({
        "format": FORMAT,
        "arch": ARCH,
        "config": model.config.to_dict(),
        "classes": list(classes),
        "params": count_parameters(model),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "preprocess": preprocess_spec(model.config.input_size),
        "metrics": metrics or {},
    }, path)


def load_weights(path: str | Path, expect: ModelConfig | None = None) -> tuple[MobileCNN, dict]:
    """Rebuild the model stored in `path`, in its inference (folded) form, in eval mode; refuse
    files of another architecture or config. `expect` is compared with the stored config."""
    ckpt = safe_load(path)
    if ckpt.get("arch") != ARCH or "config" not in ckpt or "state_dict" not in ckpt:
        found = ckpt.get("arch") or ("a bare state_dict" if all(isinstance(v, torch.Tensor) for v in ckpt.values())
                                     else f"keys {sorted(ckpt)[:6]}")
        raise CheckpointError(f"{path}: not a {ARCH} weights file (found {found}); "
                              f"expected a file written by `python -m train.dog_emotion train`")
    if ckpt.get("format", READABLE_FORMATS[0]) not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: weights format {ckpt['format']!r} is not one this version reads "
                              f"({', '.join(READABLE_FORMATS)})")
    config = ModelConfig.from_dict(ckpt["config"])
    if expect is not None and config != expect:
        raise CheckpointError(f"{path}: holds config {config}, but {expect} was asked for")
    model = MobileCNN(config)
    expected, found = model.state_dict(), ckpt["state_dict"]
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = [f"{k}: {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: weights do not fit the stored config {config} "
                              f"(missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatches {shapes[:4]})")
    model.load_state_dict(ckpt["state_dict"])
    if ckpt.get("params") not in (None, count_parameters(model)):
        raise CheckpointError(f"{path}: says {ckpt['params']} parameters but the model has {count_parameters(model)}")
    return fold(model.eval()), ckpt


def load_for_export(weights: str, flip_average: bool = True):
    """The inference model of `weights`; without flip_average the mirror-image pass leaves the
    graph (an app may then average the two itself, or not)."""
    model, ckpt = load_weights(weights)
    if not flip_average:
        model.config = replace(model.config, flip_average=False)
    return model, ckpt
