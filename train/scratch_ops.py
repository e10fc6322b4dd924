"""Activations, softmax, cross-entropy and their derivatives, by hand (see docs/derivations.md).

Plain tensor arithmetic only: no torch.nn, no torch.nn.functional, no autograd. Every derivative
takes the activation's *input* x (the pre-activation), which is what the backward pass has at
hand: d_sigmoid(x) = s(1 - s) with s = sigmoid(x). tests/test_mnist_scratch.py checks each one
against autograd in float64.
"""
from __future__ import annotations

import torch


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    # For x << 0, exp(-x) overflows to inf and 1/(1+inf) is exactly 0.0, the correctly rounded
    # answer: IEEE arithmetic makes the plain formula safe, with no NaN, in 4 tensor ops.
    return torch.reciprocal(1 + torch.exp(-x))


def d_sigmoid(x: torch.Tensor) -> torch.Tensor:
    s = sigmoid(x)
    return s * (1 - s)


def tanh(x: torch.Tensor) -> torch.Tensor:
    # tanh(x) = 2 sigmoid(2x) - 1 inherits sigmoid's overflow safety
    return 2 * sigmoid(2 * x) - 1


def d_tanh(x: torch.Tensor) -> torch.Tensor:
    t = tanh(x)
    return 1 - t * t


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax of (B, C) logits; subtracting the row max keeps exp() <= 1."""
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def d_softmax(x: torch.Tensor) -> torch.Tensor:
    """Full Jacobian per row: (B, C) -> (B, C, C), J[b, i, j] = s_i (delta_ij - s_j)."""
    s = softmax(x)
    return torch.diag_embed(s) - s.unsqueeze(2) * s.unsqueeze(1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    shifted = x - x.max(dim=1, keepdim=True).values
    return shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))


def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    y = torch.zeros(len(labels), num_classes, dtype=dtype)
    y[torch.arange(len(labels)), labels] = 1
    return y


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_i y_i log softmax(z)_i, with y one-hot (or any distribution)."""
    return -(y * log_softmax(logits)).sum(dim=1).mean()


def d_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the batch-mean cross-entropy with respect to the logits: (softmax(z) - y) / B."""
    return (softmax(logits) - y) / logits.shape[0]
