"""Run by tests/test_distributed.py under torchrun: one epoch of DDP training with the real
train_one_epoch on generated data, recording after every optimizer step whether all ranks hold
the same weights, and the (rank-averaged) gradient of every step.

    torchrun --standalone --nproc_per_node N tests/ddp_worker.py --batch-size B --steps S --out FILE

It trains twice from the same init: with BatchNorm as in training (batch statistics), and with
BatchNorm frozen (running statistics). Augmentation is replaced by the deterministic centre crop
and dropout is off, so a 2-process run with batch B and a 1-process run with batch 2B see the same
pixels in the same steps: with frozen BatchNorm nothing but the summation order may differ.
"""
import argparse
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobile_model import build_model, get_config  # noqa: E402
from train import engine  # noqa: E402
from train.data import DecodedSplit, eval_transform  # noqa: E402
from train.distributed import gather, setup, teardown  # noqa: E402


def train_steps(split, args, procs, order_seed: int, frozen_bn: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(replace(get_config("nano", 32), dropout=0.0))
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    if frozen_bn:  # normalise with the running statistics: no batch statistics at all
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.forward = partial(F.batch_norm, running_mean=m.running_mean, running_var=m.running_var,
                                    weight=m.weight, bias=m.bias, training=False, eps=m.eps)
    ema = engine.EMA(model, 0.9)
    optimizer = engine.make_optimizer(model, args.lr, 0.0)
    net = DistributedDataParallel(model) if procs.world > 1 else model
    identical, grads = [], []
    optimizer_step = optimizer.step

    def step_and_compare(*a, **kw):
        """The real optimizer step, then: does every rank hold the same weights? (BatchNorm's
        running statistics stay per rank until DDP broadcasts rank 0's at the next forward.)"""
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimizer_step(*a, **kw)
        states = gather({k: v.detach().clone() for k, v in model.named_parameters()}, procs)
        identical.append(all(torch.equal(states[0][k], other[k]) for other in states[1:] for k in states[0]))

    optimizer.step = step_and_compare
    gens = (torch.Generator().manual_seed(order_seed),
            torch.Generator().manual_seed(engine.augmentation_seed(0, procs.rank)))
    total = len(split) // args.batch_size
    _, steps = engine.train_one_epoch(net, ema, optimizer, split, args, gens, 0, total, 1, (), procs)
    return {"identical_after_each_step": identical, "steps": steps, "grads": grads, "init": init,
            "params": {k: v.detach() for k, v in model.named_parameters()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, required=True, help="per process")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--order-seed", type=int, default=0, help="seed of the batch order (the init is always seed 0)")
    ap.add_argument("--out", required=True)
    cli = ap.parse_args()
    torch.set_num_threads(1)
    procs = setup("cpu")
    engine.augment_batch = lambda x, size, gen, **kw: eval_transform(x, size)
    # the same generated data on every rank, a colour per class plus noise: one epoch of `steps` global batches
    data_gen = torch.Generator().manual_seed(123)
    n = cli.batch_size * procs.world * cli.steps
    labels = torch.randint(0, 4, (n,), generator=data_gen)
    colours = torch.tensor([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]]).view(4, 3, 1, 1)
    noise = torch.randint(-60, 61, (n, 3, 36, 36), generator=data_gen)
    split = DecodedSplit((colours[labels] + noise).clamp(0, 255).to(torch.uint8), labels, ["a", "b", "c", "d"])
    args = SimpleNamespace(batch_size=cli.batch_size * procs.world, lr=2e-3, warmup_epochs=0, crop_scale=1.0, erase_prob=0.0,
                           label_smoothing=0.0, distill_weight=0.0, amp=False)
    results = {mode: train_steps(split, args, procs, cli.order_seed, mode == "frozen_bn")
               for mode in ("batch_stats", "frozen_bn")}
    if procs.main:
        torch.save({"processes": procs.world, **results}, cli.out)
    teardown()


if __name__ == "__main__":
    main()
