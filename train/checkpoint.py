"""The shipped weights format (.pkl) and its safe loader.

A weights file is `torch.save` of a plain dict of tensors, strings, numbers and lists:
{"format", "arch", "config", "classes", "params", "state_dict", "preprocess", "metrics"}.
Format 2 (`config["folded"]`) stores the inference form (BatchNorm folded into the
convolutions, `mobile_model.fold`); format 1 files hold the training form and still load. `load_weights` always returns the inference form. Only `torch.load(..., weights_only=True)` ever reads it, so a file that needs arbitrary objects
unpickled is refused instead of executed.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from mobile_model import MobileCNN, ModelConfig, count_parameters, fold
from train.common import ProjectError, save_torch
from train.data import FRAMINGS, preprocess_spec

FORMAT = "dog-emotion-weights/2"
READABLE_FORMATS = ("dog-emotion-weights/1", FORMAT)
ARCH = "MobileCNN"


class CheckpointError(ProjectError):
    """A weights file or checkpoint that cannot be used; the message names the file."""


MAX_UNPACKED_BYTES = 512 << 20   # no weights file or checkpoint of this project comes near it
# The temperatures a weights file may record (export/calibration.py refuses to fit others): under
# MIN_TEMPERATURE the logits are multiplied by more than 20 and every answer reads as certain; over
# MAX_TEMPERATURE softmax is flat, as if the logits said nothing
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0


def check_archive(path: Path) -> None:
    """Refuse a file that is not a regular file, or a torch.save archive that would unpack to more
    than MAX_UNPACKED_BYTES (a small compressed file can hold a huge tensor), before reading it."""
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a folder, device or pipe)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                total = sum(i.file_size for i in z.infolist())
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: not a readable weights file ({e})") from None
        if total > MAX_UNPACKED_BYTES:
            raise CheckpointError(f"{path}: would unpack to {total / 1e6:.0f} MB, over the {MAX_UNPACKED_BYTES / 1e6:.0f} MB "
                                  "any weights file of this project needs; not loaded")


def safe_load(path: str | Path) -> dict:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    check_archive(path)
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


def state_digest(state_dict: dict) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes: a flipped byte anywhere changes it."""
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(f"{k}|{tuple(v.shape)}|{v.dtype}|".encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(model: MobileCNN, classes: list[str], path: str | Path, metrics: dict | None = None) -> Path:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_torch({
        "format": FORMAT,
        "arch": ARCH,
        "config": model.config.to_dict(),
        "classes": list(classes),
        "params": count_parameters(model),
        "state_dict": state,
        "sha256": state_digest(state),
        "preprocess": preprocess_spec(model.config.input_size, model.config.framing),
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
    config = checked_config(path, ckpt)
    classes = ckpt.get("classes")
    if (not isinstance(classes, list) or len(classes) != config.num_classes or len(set(classes)) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)):
        raise CheckpointError(f"{path}: 'classes' must be a list of {config.num_classes} distinct names, found {classes!r:.100}")
    cal = ckpt.get("calibration")   # a temperature recorded by export/calibration.py, folded at export
    if cal is not None and not (isinstance(cal, dict) and type(cal.get("temperature")) is float
                                and MIN_TEMPERATURE <= cal["temperature"] <= MAX_TEMPERATURE and isinstance(cal.get("fitted_with"), str)):
        raise CheckpointError(f"{path}: 'calibration' must record a temperature in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] and the weights it was "
                              f"fitted with, found {cal!r:.100}")
    if expect is not None and config != expect:
        raise CheckpointError(f"{path}: holds config {config}, but {expect} was asked for")
    model = MobileCNN(config)
    expected, found = model.state_dict(), ckpt["state_dict"]
    if not isinstance(found, dict) or not all(isinstance(v, torch.Tensor) for v in found.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of tensors")
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = [f"{k}: {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: weights do not fit the stored config {config} "
                              f"(missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatches {shapes[:4]})")
    bad = [k for k, v in found.items() if v.dtype != expected[k].dtype or not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensors {bad[:4]} hold NaN or Inf, or the wrong type: the weights are broken")
    if "sha256" in ckpt and ckpt["sha256"] != state_digest(found):   # files written before the digest have none
        raise CheckpointError(f"{path}: its tensors do not match the checksum stored with them: the file is damaged")
    model.load_state_dict(found)
    if ckpt.get("params") not in (None, count_parameters(model)):
        raise CheckpointError(f"{path}: says {ckpt['params']} parameters but the model has {count_parameters(model)}")
    return fold(model.eval()), ckpt


MAX_PARAMETERS = 5_000_000   # a phone model; the largest config here has under 200k


def checked_config(path, ckpt: dict) -> ModelConfig:
    """The stored config, with every field of the type and range a model here can have, and its size
    counted on the meta device before anything is allocated."""
    d = ckpt["config"]
    ints = {"stem": (1, 4096), "input_size": (32, 1024), "num_classes": (2, 1000)}
    try:
        if not isinstance(d, dict):
            raise ValueError("not a table of fields")
        for key, (lo, hi) in ints.items():
            if key in d and not (type(d[key]) is int and lo <= d[key] <= hi):
                raise ValueError(f"{key} = {d[key]!r} is not an integer in {lo}..{hi}")
        stages = d.get("stages", [])
        if not (isinstance(stages, list) and stages and all(
                isinstance(s, list) and len(s) == 3 and all(type(v) is int and 1 <= v <= 4096 for v in s) for s in stages)):
            raise ValueError(f"stages = {stages!r:.80} is not a list of [channels, stride, blocks] integers")
        if d.get("pointwise_groups", 1) != 1 or (d.get("branches") and not d.get("folded")):
            raise ValueError("grouped pointwise convs or unfolded re-parameterization branches (retired forms)")
        if "framing" in d and d["framing"] not in FRAMINGS:
            raise ValueError(f"framing = {d['framing']!r:.40} is not one of {', '.join(FRAMINGS)}")
        if "dropout" in d and not (isinstance(d["dropout"], float) and 0 <= d["dropout"] < 1):
            raise ValueError(f"dropout = {d['dropout']!r} is not a share in [0, 1)")
        config = ModelConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: config is not one this code can build ({e})") from None
    with torch.device("meta"):
        n = count_parameters(MobileCNN(replace(config, folded=False)))
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: config describes {n:,} parameters, over the {MAX_PARAMETERS:,} of any model here")
    return config


def load_for_export(weights: str, flip_average: bool = True):
    """The inference model of `weights`; without flip_average the mirror-image pass leaves the
    graph (an app may then average the two itself, or not)."""
    model, ckpt = load_weights(weights)
    if not flip_average:
        model.config = replace(model.config, flip_average=False)
    return model, ckpt
