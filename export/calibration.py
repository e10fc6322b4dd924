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
from train.checkpoint import MAX_TEMPERATURE, CheckpointError, load_weights, state_digest
from train.common import ARTIFACTS, SHIPPED_WEIGHTS, command_errors, save_torch
from train.data import DEFAULT_DATA, check_data_root, load_folder, storage_size
from train.plots import plt, save_figure

BINS = 15   # the usual count for expected calibration error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T), in float64 (Newton on log T would
    do as well; L-BFGS is torch's own). The NLL is convex in 1/T, so the minimum is the minimum."""
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
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature fit failed (T = {t})")
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


def record_sibling_temperature(weights: str | Path, sibling: str | Path, data: str | Path) -> dict:
    """Fit T on val with `sibling`'s logits and store it in `weights` under "calibration" (the
    tensors untouched; the file rewritten atomically). Returns the record."""
    model, ckpt = load_weights(weights)
    twin, twin_ckpt = load_weights(sibling)
    if twin.config != model.config or twin_ckpt["classes"] != ckpt["classes"]:
        raise CheckpointError(f"{sibling}: holds {twin.config} for {twin_ckpt['classes']}, not the {model.config} for "
                              f"{ckpt['classes']} of {weights}: a sibling is a run of the same recipe")
    if state_digest(twin_ckpt["state_dict"]) == state_digest(ckpt["state_dict"]):
        raise CheckpointError(f"{sibling}: the same weights as {weights}; the sibling must be a run that did not train on val")
    val = load_folder(check_data_root(data) / "val", ckpt["classes"], storage_size(model.config.input_size), ARTIFACTS / "cache")
    logits = torch.from_numpy(batched_logits(make_runner("eager", model=twin), val.images, model.config.input_size))
    temperature = fit_temperature(logits, val.labels)
    if not temperature < MAX_TEMPERATURE:   # softmax(z / T) is then flat: the logits say nothing about val
        raise CheckpointError(f"{sibling}: its val logits fit T = {temperature:.3g}, no better than a uniform guess; "
                              "is it a trained run of the recipe?")
    record = {"temperature": temperature, "fitted_with": str(sibling), "val_images": len(val),
              "sibling_val_nll": calibration_report(logits / temperature, val.labels)["nll"]}
    ckpt["calibration"] = record   # load_weights' dict is the file as stored
    save_torch(ckpt, weights)
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights to record the temperature in (default: %(default)s)")
    ap.add_argument("--sibling", required=True, help="weights of the same recipe trained on train only, e.g. "
                    "artifacts/runs/mid-final/dog_emotion.pkl: its val logits are held out")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root whose val/ the sibling never saw (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        record = record_sibling_temperature(args.weights, args.sibling, args.data)
    print(f"T = {record['temperature']:.4f} fitted on {record['val_images']} val photos with {args.sibling}'s logits "
          f"(its val NLL after T: {record['sibling_val_nll']:.3f}); recorded in {args.weights}: `make export` folds it")


if __name__ == "__main__":
    main()
