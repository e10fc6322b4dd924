"""Inference and scoring, the library that training, evaluation, export and the benchmark share:
logits of a decoded split, accuracy with its Wilson interval, per-class accuracy and the confusion
matrix, and an ensemble's logits. Nothing here trains."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from train.common import accuracy
from train.data import eval_batches


@torch.no_grad()
def predict_logits(model, images_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    if len(images_uint8) == 0:
        return torch.empty(0, model.config.num_classes)
    device = next(model.parameters()).device
    return torch.cat([model(x.to(device)).float().cpu()
                      for x in eval_batches(images_uint8, model.config.input_size, batch_size)])


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy, in percent: how far a 400-image split's number
    could move on another sample of the same data (about +-4.5 points at 70%)."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def test_accuracy(weights, data) -> float:
    """Accuracy of a weights file on the test split of a split root, framed as the model frames
    photos: the number `make evaluate` prints."""
    from train.checkpoint import load_weights
    from train.data import load_for_model
    model, ckpt = load_weights(weights)
    return evaluate(model, load_for_model(Path(data) / "test", ckpt["classes"], model.config))["acc"]


def evaluate(model, split, label_smoothing: float = 0.0) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of a decoded split."""
    return score(predict_logits(model, split.images), split, label_smoothing)


def ensemble_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Several models' logits on the same images as one model's: the log of their mean softmax."""
    return torch.stack([lg.softmax(1) for lg in logits]).mean(0).clamp_min(1e-12).log()


def score(logits: torch.Tensor, split, label_smoothing: float = 0.0) -> dict:
    """evaluate()'s numbers from logits already computed (one model's, or an ensemble's)."""
    pred = logits.argmax(1)
    k = len(split.classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    cm.index_put_((split.labels, pred), torch.ones_like(pred), accumulate=True)
    per_class = {c: (100 * cm[i, i].item() / cm[i].sum().item()) if cm[i].sum() else None  # None: no images
                 for i, c in enumerate(split.classes)}
    return {"loss": F.cross_entropy(logits, split.labels, label_smoothing=label_smoothing).item(),
            "acc": accuracy(pred, split.labels), "correct": int((pred == split.labels).sum()), "n": len(split),
            "per_class": per_class, "confusion": cm.tolist()}
