"""Probabilities a user can read as confidence: one temperature fitted on val, folded into the
classifier, and the calibration it buys measured on test.

    python -m export.calibration --weights weights/dog_emotion.pkl --sibling RUN/dog_emotion.pkl   # make temperature

Weights trained on train + val have no held-out photos to fit on: val is learnt, and a model is
surer of photos it learnt than of new ones, so a temperature fitted there over-sharpens. This
command fits T on val with the logits of a *sibling*, a run of the same recipe trained on train
only, and records it in the weights file (key "calibration"); `make export` then folds that T
instead of fitting one on the weights' own val logits.

Temperature scaling (Guo et al. 2017) divides the logits by one T > 0 fitted to minimise the
negative log-likelihood on held-out data. It moves no argmax, so accuracy is unchanged. Folding
T into the last linear layer (its weight and bias divided by T) gives the calibrated logits with
no parameter added; flip averaging is a mean of two logit vectors, so it commutes with the fold.
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from export.runtimes import batched_logits, make_runner
from train.checkpoint import MAX_TEMPERATURE, MIN_TEMPERATURE, CheckpointError, load_weights
from train.common import ARTIFACTS, SHIPPED_WEIGHTS, command_errors, save_torch
from train.data import DEFAULT_DATA, check_data_root, load_for_model
from train.plots import plt, save_figure

BINS = 15   # the usual count for expected calibration error


class CalibrationError(CheckpointError):
    """Logits that cannot give a temperature a user could trust; the message names whose they are."""


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, whose: str = "the logits") -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T), in float64 (Newton on log T would
    do as well; L-BFGS is torch's own). The NLL is convex in 1/T, so the minimum is the minimum.
    Refused outside [MIN_TEMPERATURE, MAX_TEMPERATURE], and for logits that are not all finite."""
    if not torch.isfinite(logits).all():
        raise CalibrationError(f"{whose}: {int((~torch.isfinite(logits)).sum())} val logits are not finite numbers; "
                               "no temperature can be fitted to them")
    z, y = logits.double(), labels
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss
    opt.step(closure)
    t = float(log_t.detach().exp())
    if not (math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise CalibrationError(f"{whose}: fit T = {t:.3g} on val, outside [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]: "
                               + ("the logits say nothing of val (is it a trained model?)" if t > 1 else
                                  "sure of every val photo, as a model is of photos it trained on"))
    return t


@torch.no_grad()
def fold_temperature(model: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy of `model` whose logits are the original's divided by `temperature`."""
    calibrated = copy.deepcopy(model)
    calibrated.classifier.weight.div_(temperature)
    calibrated.classifier.bias.div_(temperature)
    return calibrated


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict:
    """NLL, expected calibration error (the gap between confidence and accuracy, weighted by the
    share of images in each confidence bin) and the per-bin numbers for a reliability diagram."""
    probs = logits.double().softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            share = inside.double().mean().item()
            acc, mean_conf = correct[inside].mean().item(), conf[inside].mean().item()
            ece += share * abs(acc - mean_conf)
            rows.append({"lo": lo.item(), "hi": hi.item(), "n": int(inside.sum()), "accuracy": acc, "confidence": mean_conf})
    return {"nll": F.cross_entropy(logits.double(), labels).item(), "ece": ece, "bins": rows,
            "mean_confidence": conf.mean().item(), "accuracy": correct.mean().item()}


def plot_reliability(before: dict, after: dict, temperature: float, path: str | Path, fitted_on: str = "val") -> Path:
    """Accuracy against confidence per bin, before and after the temperature; the diagonal is perfect."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, report, title in ((axes[0], before, "as trained"), (axes[1], after, f"temperature T = {temperature:.3f}")):
        centres = [(b["lo"] + b["hi"]) / 2 for b in report["bins"]]
        width = 1 / BINS
        ax.bar(centres, [b["accuracy"] for b in report["bins"]], width=width * 0.9, alpha=0.75, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.scatter(centres, [b["confidence"] for b in report["bins"]], color="C1", s=14, zorder=3, label="mean confidence")
        ax.set_xlabel("confidence (largest probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}: ECE {100 * report['ece']:.1f}%, NLL {report['nll']:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"reliability on the test split (temperature fitted on {fitted_on})")
    fig.tight_layout()
    return save_figure(fig, path)


NEAR_COPY = 0.01   # two runs of one recipe from other seeds differ by about 1 (relative distance of their weights)


def relative_distance(a: dict, b: dict) -> float:
    """|a - b| / |b| over every floating tensor of two state dicts of one architecture."""
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point())
    norm = sum(float(b[k].double().pow(2).sum()) for k in b if b[k].is_floating_point())
    return math.sqrt(diff / max(norm, 1e-30))


def record_sibling_temperature(weights: str | Path, sibling: str | Path, data: str | Path) -> dict:
    """Fit T on val with `sibling`'s logits and store it in `weights` under "calibration" (the
    tensors untouched; the file rewritten atomically). Returns the record."""
    model, ckpt = load_weights(weights)
    twin, twin_ckpt = load_weights(sibling)
    if twin.config != model.config or twin_ckpt["classes"] != ckpt["classes"]:
        raise CheckpointError(f"{sibling}: holds {twin.config} for {twin_ckpt['classes']}, not the {model.config} for "
                              f"{ckpt['classes']} of {weights}: a sibling is a run of the same recipe")
    if relative_distance(twin.state_dict(), model.state_dict()) < NEAR_COPY:   # both folded: one layout
        raise CheckpointError(f"{sibling}: the same weights as {weights}, or a near copy; the sibling must be another run "
                              "of the recipe, one that did not train on val")
    val = load_for_model(check_data_root(data) / "val", ckpt["classes"], model.config, ARTIFACTS / "cache")
    logits = torch.from_numpy(batched_logits(make_runner("eager", model=twin), val.images, model.config.input_size))
    temperature = fit_temperature(logits, val.labels, str(sibling))
    record = {"temperature": temperature, "fitted_with": str(sibling), "val_images": len(val),
              "sibling_val_nll": calibration_report(logits / temperature, val.labels)["nll"]}
    ckpt["calibration"] = record   # load_weights' dict is the file as stored
    save_torch(ckpt, weights)
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights to record the temperature in (default: %(default)s)")
    ap.add_argument("--sibling", required=True, help="weights of the same recipe trained on train only, e.g. "
                    "artifacts/train/dog_emotion.pkl of `make train`: its val logits are held out")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root whose val/ the sibling never saw (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        record = record_sibling_temperature(args.weights, args.sibling, args.data)
    print(f"T = {record['temperature']:.4f} fitted on {record['val_images']} val photos with {args.sibling}'s logits "
          f"(its val NLL after T: {record['sibling_val_nll']:.3f}); recorded in {args.weights}: `make export` folds it")


if __name__ == "__main__":
    main()
