"""Dog-emotion classifier: train from scratch, evaluate, predict.

    python -m train.dog_emotion train    [--data DIR] [--model small] [--epochs N] [--resume]
    python -m train.dog_emotion evaluate --data DIR [--weights weights/dog_emotion.pkl]
    python -m train.dog_emotion predict  IMAGE... [--weights weights/dog_emotion.pkl]
    python -m train.dog_emotion compare  RUN_DIR... [--until N] [--out runs.png]   # val curves, recipes ranked by mean val
    torchrun --standalone --nproc_per_node 2 -m train.dog_emotion train --batch-size 32 ...   # DDP

The recipe (AdamW, warm-up + cosine, label smoothing, batch augmentation on decoded tensors, an
EMA of the weights, selection on val) is built for a tiny CNN on ~2,700 images on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mobile_model import CONFIGS, SHIPPED, build_model, count_parameters, get_config, inference_parameters
from train.checkpoint import CheckpointError, load_weights, safe_load, save_weights
from train.common import (ARTIFACTS, SHIPPED_WEIGHTS, accuracy, markdown_table, progress, resolve_device, save_json,
                          save_text, save_torch, seed_everything, set_threads)
from train.distributed import Processes, barrier, gather, setup, sum_over_ranks, teardown
from train.data import (DEFAULT_DATA, BadImage, DataError, augment_batch, check_data_root, class_names,
                        eval_batches, is_split_root, iterate_batches, load_folder, load_input, load_splits, mix_batch,
                        storage_size)
from train.plots import plot_confusion, plot_curves, plot_runs

# ---------------------------------------------------------------- training

class EMA:
    """Exponential moving average of all weights and buffers; evaluated instead of the raw model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up: short memory early on
        for ema_v, v in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema_v.copy_(v)


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # no weight decay on BatchNorm and biases: decaying them only hurts a network this small
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def channels_last_layout(device: torch.device, args) -> bool:
    """Whether to keep weights and activations channels-last: on the CPU, where an epoch of the
    shipped recipe ran 1.37x faster than in NCHW on one thread, 1.25x on two (measured here); not
    on GPUs, whose depthwise kernels it can slow down."""
    return device.type == "cpu" and not args.no_channels_last


def channels_last_trainable(model: torch.nn.Module) -> bool:
    """Whether a model may train channels-last. Not when a strided 1x1 conv reads fewer channels per
    group than oneDNN's input block (8 with AVX2, 16 with AVX-512): its x64 kernel for that conv's
    weight gradient in channels-last writes past its workspace (oneDNN issue 6035: wrong gradients,
    hangs or crashes; a stem re-parameterization branch over RGB died here with a double free)."""
    return not any(m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels // m.groups < 16
                   for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def layout_name(channels_last: bool) -> str:
    return "channels-last" if channels_last else "NCHW"


def for_input_size(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                         align_corners=False)


@torch.no_grad()
def teacher_log_probs(teachers: list, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the teachers' mean softmax at temperature T: an ensemble's soft targets. A teacher
    with another input size sees its own bilinear resize of the same augmented view."""
    probs = torch.stack([F.softmax(t(for_input_size(x, t.config.input_size)) / temperature, 1)
                         for t in teachers]).mean(0)
    return probs.clamp_min(1e-8).log()


def distillation_loss(logits, teacher_logp, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher || student) at temperature T, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), teacher_logp, reduction="batchmean", log_target=True) * t * t


def train_one_epoch(model, ema, optimizer, split, args, gens, step: int, total_steps: int, epoch: int, teachers=(),
                    procs: Processes = Processes(), memory_format: torch.memory_format = torch.contiguous_format):
    """One pass over the train split. `model` may be DDP-wrapped; `gens` = (data order generator,
    the same on every rank; augmentation generator, this rank's own); batches go to the model in
    `memory_format`, the one its weights are in."""
    order_gen, aug_gen = gens
    model.train()
    device = next(model.parameters()).device
    size = ema.model.config.input_size
    loss_sum = correct = seen = 0
    steps_per_epoch = len(split) // (args.batch_size * procs.world)
    bar = progress(iterate_batches(len(split), args.batch_size, order_gen, True, procs.rank, procs.world),
                   enabled=procs.main, total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch")
    for idx in bar:
        lr = lr_at(step, total_steps, args.warmup_epochs * steps_per_epoch, args.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x = augment_batch(split.images[idx], size, aug_gen, scale=(args.crop_scale, 1.0), erase_prob=args.erase_prob)
        x, target = mix_batch(x, split.labels[idx], len(split.classes), aug_gen, args.mix_prob)
        x, target = x.to(device, memory_format=memory_format), target.to(device)  # augmentation stays on the CPU
        y = target.argmax(1)  # the dominant label, for the running train accuracy
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=args.label_smoothing)
            if teachers:
                loss = (1 - args.distill_weight) * loss + args.distill_weight * distillation_loss(
                    logits, teacher_log_probs(teachers, x, args.distill_temperature), args.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(ema_source(model))
        step += 1
        loss_sum += loss.item() * len(y)
        correct += accuracy(logits, y) * len(y) / 100
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", lr=f"{lr:.2e}")
    loss_sum, correct, seen = sum_over_ranks([loss_sum, correct, seen], procs)  # the epoch log covers all ranks
    return {"loss": loss_sum / seen, "acc": 100 * correct / seen, "lr": lr}, step


def ema_source(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP wrapper (its state_dict keys have no 'module.' prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def augmentation_seed(seed: int, rank: int) -> int:
    """A seed per (run seed, rank): each DDP rank augments its shard with its own random stream."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


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


def evaluate(model, split, label_smoothing: float = 0.0) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of a decoded split."""
    logits = predict_logits(model, split.images)
    pred = logits.argmax(1)
    k = len(split.classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    cm.index_put_((split.labels, pred), torch.ones_like(pred), accumulate=True)
    per_class = {c: (100 * cm[i, i].item() / cm[i].sum().item()) if cm[i].sum() else float("nan")
                 for i, c in enumerate(split.classes)}
    return {"loss": F.cross_entropy(logits, split.labels, label_smoothing=label_smoothing).item(),
            "acc": accuracy(pred, split.labels), "correct": int((pred == split.labels).sum()), "n": len(split),
            "per_class": per_class, "confusion": cm.tolist()}


def train(args) -> dict:
    """Train from scratch (or --resume), as one process or as one rank of a torchrun job: every rank
    trains on its shard of each batch; rank 0 alone evaluates, prints and writes files."""
    set_threads(args.threads)
    procs = setup(args.device)
    device = procs.device
    if args.amp and device.type != "cuda":
        raise DataError(f"--amp (bf16 autocast) is for CUDA devices; this run is on {device}")
    out = Path(args.out)
    config = get_config(args.model, args.input_size)
    if args.no_flip_average:
        config = replace(config, flip_average=False)
    if args.branches:
        config = replace(config, branches=args.branches)
    if not procs.main:
        barrier()  # rank 0 decodes and writes the cache first; the others then map it
    data = load_splits(args.data, storage_size(config.input_size), cache_dir=Path(args.cache_dir))
    if procs.main:
        barrier()
    classes = data["train"].classes
    skipped = [reason for d in data.values() for reason in d.skipped]
    log = print if procs.main else (lambda *a, **k: None)
    log(f"data: {args.data}  " + "  ".join(f"{s}={len(d)}" for s, d in data.items())
        + f"  classes={classes}  skipped={len(skipped)}")
    if skipped and procs.main:
        save_text("".join(f"{reason}\n" for reason in skipped), out / "skipped.txt")
        print(f"skipped {len(skipped)} unreadable files; the list with reasons: {out / 'skipped.txt'}")

    device_channels_last = channels_last_layout(device, args)
    teachers = []
    for path in args.teacher:
        teacher, tckpt = load_weights(path)
        if tckpt["classes"] != classes:
            raise CheckpointError(f"{path}: teacher has classes {tckpt['classes']}; the student needs {classes}")
        log(f"distilling from {path} ({count_parameters(teacher):,} params, "
            f"val {tckpt['metrics'].get('val_acc', float('nan')):.1f}%)")
        if args.teacher_no_flip:
            teacher.config = replace(teacher.config, flip_average=False)
        # forward only: channels_last_trainable's fault (a weight gradient) cannot hit a teacher
        teachers.append(teacher.to(device, memory_format=torch.channels_last if device_channels_last
                                   else torch.preserve_format))
    order_gen = seed_everything(args.seed)  # the same on every rank: same init, same batch order
    aug_gen = torch.Generator().manual_seed(augmentation_seed(args.seed, procs.rank))
    model = build_model(config).to(device)
    channels_last = device_channels_last and channels_last_trainable(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = EMA(model, args.ema_decay)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    # DDP averages the gradients of all ranks in backward(); BatchNorm statistics stay per rank
    net = model if procs.world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch = args.batch_size * procs.world
    steps_per_epoch = len(data["train"]) // global_batch
    if steps_per_epoch == 0:
        raise DataError(f"train split has {len(data['train'])} images, fewer than one batch of {global_batch}"
                        + (f" ({args.batch_size} per process x {procs.world})" if procs.world > 1 else ""))
    total_steps = args.epochs * steps_per_epoch
    history, best, start_epoch, step = [], {"val_acc": -1.0, "epoch": 0}, 1, 0
    ckpt_path = out / "last.ckpt"
    if args.resume:
        if not ckpt_path.exists():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint there)")
        state = safe_load(ckpt_path)
        if "rank_states" not in state:
            raise CheckpointError(f"{ckpt_path}: written by an older version of this script; start again without --resume")
        if state["processes"] != procs.world:
            raise CheckpointError(f"{ckpt_path}: written by a run of {state['processes']} processes; resume it with "
                                  f"as many (this one has {procs.world})")
        changed = {k: (state["args"].get(k), v) for k, v in result_options(vars(args)).items() if state["args"].get(k) != v}
        if changed:
            raise CheckpointError(f"{ckpt_path}: was written with other options ("
                                  + ", ".join(f"{k}={old!r}, now {new!r}" for k, (old, new) in changed.items())
                                  + "); resume with the same options")
        if state.get("channels_last", False) != channels_last:  # absent: written before there was a choice
            raise CheckpointError(f"{ckpt_path}: was written in the {layout_name(not channels_last)} "
                                  f"layout, this run would be {layout_name(channels_last)}; "
                                  "resume in the same layout (--no-channels-last: NCHW) to continue the same run")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        order_gen.set_state(state["order_gen"])
        aug_state, torch_rng = state["rank_states"][procs.rank]
        aug_gen.set_state(aug_state)
        torch.set_rng_state(torch_rng)
        history, best, step = state["history"], state["best"], state["step"]
        start_epoch = state["epoch"] + 1
        log(f"resumed from {ckpt_path} at epoch {start_epoch}")

    log(f"model: {args.model}  params={count_parameters(model):,} while training, "
        f"{inference_parameters(model):,} folded for inference  input={model.config.input_size}px  "
        f"epochs={args.epochs}  threads={torch.get_num_threads()}  device={device}  "
        f"layout={layout_name(channels_last)}")
    log(f"batch: {global_batch} per step" + (f" = {args.batch_size} per process x {procs.world} processes; "
                                              f"lr {args.lr:g} as given (not scaled with the batch)" if procs.world > 1 else ""))
    if procs.main:
        save_text(recipe_text(args), out / "args.toml")  # the resolved options, loadable with --config
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        tr, step = train_one_epoch(net, ema, optimizer, data["train"], args, (order_gen, aug_gen), step, total_steps,
                                   epoch, teachers, procs, memory_format)
        rank_states = gather((aug_gen.get_state(), torch.get_rng_state()), procs)
        stopping = bool(args.stop_after) and epoch >= args.stop_after
        if not procs.main:
            if stopping:
                return {}
            continue
        va = evaluate(ema.model, data["val"], args.label_smoothing)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
               "val_acc": va["acc"], "lr": tr["lr"], "seconds": time.time() - t0}
        history.append(row)
        if va["acc"] > best["val_acc"]:
            best = {"val_acc": va["acc"], "epoch": epoch}
            save_weights(ema.model, classes, out / "best.pkl", {"val_acc": va["acc"], "epoch": epoch})
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {tr['loss']:.3f} acc {tr['acc']:5.1f}  "
              f"val loss {va['loss']:.3f} acc {va['acc']:5.1f}  best {best['val_acc']:.1f}@{best['epoch']}  "
              f"lr {tr['lr']:.2e}  {row['seconds']:.1f}s", flush=True)
        save_torch({"args": vars(args), "epoch": epoch, "step": step, "model": model.state_dict(),
                    "ema": ema.model.state_dict(), "ema_updates": ema.updates,
                    "optimizer": optimizer.state_dict(), "order_gen": order_gen.get_state(),
                    "rank_states": rank_states, "processes": procs.world, "history": history, "best": best,
                    "channels_last": channels_last}, ckpt_path)
        plot_curves(history, out / "curves.png", f"{args.model} ({count_parameters(model):,} params): "
                    "train = running, on augmented batches; val = EMA weights")
        if stopping:
            print(f"stopping after epoch {epoch} as asked (--stop-after); continue with --resume")
            return {}
    return finish(out, history, data, args, procs.world) if procs.main else {}


def finish(out: Path, history: list[dict], data: dict, args, processes: int = 1) -> dict:
    """Reload the val-selected weights in their folded inference form, report test once, write
    metrics.json, summary.md and plots."""
    model, ckpt = load_weights(out / "best.pkl")
    results = {s: evaluate(model, d) for s, d in data.items()}
    classes = data["test"].classes
    plot_confusion(np.array(results["test"]["confusion"]), classes, out / "confusion_test.png",
                   f"test split, {results['test']['acc']:.1f}% ({args.model})")
    train_seconds = sum(h["seconds"] for h in history)
    metrics = {
        "model": args.model, "params": count_parameters(model), "train_params": ckpt["params"],
        "config": model.config.to_dict(),
        "classes": classes, "best_epoch": max(history, key=lambda h: h["val_acc"])["epoch"],
        "val_acc": results["val"]["acc"], "test_acc": results["test"]["acc"],
        "train_acc_eval": results["train"]["acc"], "per_class_test": results["test"]["per_class"],
        "confusion_test": results["test"]["confusion"], "train_minutes": train_seconds / 60,
        "processes": processes, "batch_per_step": args.batch_size * processes,
        "args": vars(args), "history": history,
    }
    save_weights(model, classes, out / "dog_emotion.pkl",
                 {k: metrics[k] for k in ("val_acc", "test_acc", "best_epoch", "train_minutes")})
    save_json(metrics, out / "metrics.json")
    per_class = [{"class": c, "test accuracy (%)": round(a, 1)} for c, a in results["test"]["per_class"].items()]
    save_text(f"# Dog-emotion training run: `{args.model}`\n\n"
              f"- parameters: {metrics['params']:,} as shipped (folded), {metrics['train_params']:,} while training\n- input: {model.config.input_size} px\n"
              f"- epochs: {args.epochs} (best val epoch {metrics['best_epoch']}), seed {args.seed}\n"
              f"- training time: {metrics['train_minutes']:.1f} min on {processes} process(es) x "
              f"{torch.get_num_threads()} thread(s), {metrics['batch_per_step']} images per step\n"
              f"- val accuracy: {metrics['val_acc']:.2f}% (selection)\n"
              f"- **test accuracy: {metrics['test_acc']:.2f}%** (n={results['test']['n']}, reported once)\n\n"
              f"{markdown_table(per_class)}\n![curves](curves.png)\n![confusion](confusion_test.png)\n",
              out / "summary.md")
    print(f"\nbest epoch {metrics['best_epoch']}: val {metrics['val_acc']:.2f}%  test {metrics['test_acc']:.2f}%  "
          f"params {metrics['params']:,}  time {metrics['train_minutes']:.1f} min")
    for c, a in results["test"]["per_class"].items():
        print(f"  test {c:8s} {a:5.1f}%")
    print(f"wrote {out}/dog_emotion.pkl, metrics.json, summary.md, curves.png, confusion_test.png")
    return metrics


# ---------------------------------------------------------------- evaluate / predict

def cmd_evaluate(args) -> dict:
    model, ckpt = load_weights(args.weights)
    model.to(resolve_device(args.device))
    root = check_data_root(args.data)
    size = storage_size(model.config.input_size)
    cache = Path(args.cache_dir) if args.cache_dir else None
    folder = root / args.split if is_split_root(root) else root
    found = class_names(folder)
    if found != ckpt["classes"]:
        raise DataError(f"{folder}: class folders {found} differ from the model's classes {ckpt['classes']}")
    split = load_folder(folder, ckpt["classes"], size, cache)
    r = evaluate(model, split)
    lo, hi = wilson_interval(r["correct"], r["n"])
    print(f"{folder}: {r['n']} images, {len(split.skipped)} skipped" + (" (named above)" if split.skipped else ""))
    print(f"  accuracy {r['acc']:.2f}% (95% interval {lo:.1f}-{hi:.1f}%)")
    for c, a in r["per_class"].items():
        print(f"  {c:8s} {a:5.1f}%")
    result = {"accuracy": round(r["acc"], 2), "ci95": [round(lo, 2), round(hi, 2)], "n": r["n"],
              "params": count_parameters(model),
              "skipped": len(split.skipped), "per_class": {c: round(a, 2) for c, a in r["per_class"].items()},
              "weights": str(args.weights), "data": str(folder)}
    print(json.dumps(result))
    return result


@torch.no_grad()
def cmd_predict(args) -> list[dict]:
    """Label and class probabilities of every file that can be read; each one that cannot is named.
    Exits non-zero when any failed. --json: one object per line and file, the keys the browser demo uses."""
    model, ckpt = load_weights(args.weights)
    device = resolve_device(args.device)
    model.to(device)
    results, failed = [], 0
    for path in args.images:
        try:
            x = load_input(path, model.config.input_size)
        except BadImage as e:
            failed += 1
            row = {"file": str(path), "error": str(e)}
            print(json.dumps(row) if args.json else f"error: {e}", file=sys.stdout if args.json else sys.stderr)
            results.append(row)
            continue
        probs = model(x.to(device)).softmax(1)[0].cpu()
        row = {"file": str(path), "label": ckpt["classes"][probs.argmax().item()],
               "probabilities": {c: round(p.item(), 4) for c, p in zip(ckpt["classes"], probs)}}
        print(json.dumps(row) if args.json else
              f"{path}: {row['label']}  " + "  ".join(f"{c} {p:.3f}" for c, p in row["probabilities"].items()))
        results.append(row)
    if failed:
        raise SystemExit(f"{failed} of {len(args.images)} images could not be read")
    return results


def read_run(run_dir: str | Path) -> dict:
    """A training run's options and per-epoch history: metrics.json once it has finished,
    last.ckpt while it is still going (or was stopped)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        with open(run_dir / "metrics.json") as f:
            run = json.load(f)
    elif (run_dir / "last.ckpt").is_file():
        run = safe_load(run_dir / "last.ckpt")
    else:
        raise DataError(f"{run_dir}: not a training run folder (no metrics.json or last.ckpt in it)")
    if not run.get("history"):
        raise DataError(f"{run_dir}: the run has no finished epoch yet")
    return {"args": run["args"], "history": run["history"], "finished": "test_acc" in run}


def cmd_compare(args) -> dict[str, list[dict]]:
    """Val curves of several runs in one figure, a table of their best val epochs, and the runs
    grouped by recipe (runs that differ only in seed) ranked by their mean best val: the statistic
    the selection rule in docs/results.md ranks recipes by. Test accuracy is left out on purpose:
    this is for choosing between recipes, which is val's job."""
    names = [Path(d).name for d in args.runs]   # the folder name, or the whole path where two share a name
    runs = {(n if names.count(n) == 1 else str(d)): read_run(d) for n, d in zip(names, args.runs)}
    for name, run in runs.items():               # --until: equal epochs for schedules of different lengths
        run["history"] = [r for r in run["history"] if not args.until or r["epoch"] <= args.until]
        if not run["history"]:
            raise DataError(f"{name}: no epoch up to --until {args.until}")
    rows, by_recipe = [], {}
    for name, run in runs.items():
        h, a = run["history"], run["args"]
        best = max(h, key=lambda r: r["val_acc"])
        rows.append({"run": name, "model": a["model"], "seed": a["seed"],
                     "epochs": f"{h[-1]['epoch']}/{a['epochs']}" + ("" if run["finished"] else " (running or stopped)"),
                     "best val (%)": f"{best['val_acc']:.2f} at {best['epoch']}",
                     f"mean val, last {args.last} epochs (%)": f"{np.mean([r['val_acc'] for r in h[-args.last:]]):.2f}",
                     "minutes": f"{sum(r['seconds'] for r in h) / 60:.1f}"})
        by_recipe.setdefault(recipe_key(a), []).append((name, best["val_acc"]))
    means = [(g, np.mean([v for _, v in g])) for g in by_recipe.values()]
    # the range beside the mean: on 400 val images two seeds of one recipe can differ by more
    # than two recipes' means do, and the reader should see when that is so
    recipes = [{"runs": ", ".join(n for n, _ in g), "seeds": len(g), "mean best val (%)": f"{mean:.3f}",
                "best val range (%)": f"{min(v for _, v in g):.2f}-{max(v for _, v in g):.2f}"}
               for g, mean in sorted(means, key=lambda gm: -gm[1])]
    print(markdown_table(rows))
    print("\nBy recipe (runs that differ only in seed), best first:\n")
    print(markdown_table(recipes))
    plot_runs({name: run["history"] for name, run in runs.items()}, args.out,
              f"val accuracy and loss per epoch (EMA weights); bold: running mean over {args.window} epochs",
              args.window)
    print(f"wrote {args.out}")
    return {"runs": rows, "recipes": recipes}


# Options that are not part of a recipe (how this invocation was asked), and those that change
# where or how fast a run goes but never what it computes: every other option must match for --resume.
NOT_RECIPE_OPTIONS = ("command", "config", "resume", "stop_after")
RUN_ONLY_OPTIONS = NOT_RECIPE_OPTIONS + ("out", "cache_dir", "threads", "no_channels_last")


def result_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in RUN_ONLY_OPTIONS}


def recipe_key(run_args: dict) -> str:
    """What a run trained, leaving out its seed and where or how fast it ran: two runs with the
    same key are draws of one recipe."""
    return json.dumps({k: v for k, v in result_options(run_args).items() if k != "seed"}, sort_keys=True)


def recipe_text(args) -> str:
    """The run's resolved options as TOML (JSON's strings, numbers, booleans and lists are TOML too)."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in vars(args).items() if k not in NOT_RECIPE_OPTIONS)


def read_recipe(path: Path, chain: tuple = ()) -> dict:
    """A TOML recipe's options, each with the file it came from. `extends = "other.toml"` (a path
    relative to the recipe's folder) loads that recipe first and this file's options override its
    options, so a variant states only what differs from the recipe it builds on."""
    if path.resolve() in chain:
        raise SystemExit(f"error: recipe {path}: extends itself (" + " -> ".join(str(p) for p in chain + (path,)) + ")")
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except OSError as e:
        raise SystemExit(f"error: recipe {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"error: recipe {path}: not valid TOML ({e})")
    options = {}
    if "extends" in recipe:
        base = recipe.pop("extends")
        if not isinstance(base, str):
            raise SystemExit(f"error: recipe {path}: 'extends' takes one recipe file name, not {base!r}")
        options = read_recipe(path.parent / base, chain + (path.resolve(),))
    options.update({key: (value, path) for key, value in recipe.items()})
    return options


def apply_recipe(parser: argparse.ArgumentParser, path: str) -> None:
    """Make a TOML recipe's values the parser's defaults, checked as the command line would check
    them; a key the parser does not know is an error. The command line still overrides any of them."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, (value, source) in read_recipe(Path(path)).items():
        if key not in actions:
            raise SystemExit(f"error: recipe {source}: unknown option {key!r} (known: {', '.join(sorted(actions))})")
        action = actions[key]
        if (action.nargs in ("*", "+")) != isinstance(value, list):
            raise SystemExit(f"error: recipe {source}: option {key!r} takes "
                             f"{'a list' if action.nargs in ('*', '+') else 'one value'}, not {value!r}")
        try:
            values = value if isinstance(value, list) else [value]
            if action.type is not None:
                values = [action.type(str(v)) for v in values]
            if action.choices is not None and any(v not in action.choices for v in values):
                raise ValueError(f"{value!r} is not one of {sorted(action.choices)}")
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise SystemExit(f"error: recipe {source}: option {key!r}: {e}")
        defaults[key] = values if isinstance(value, list) else values[0]
    parser.set_defaults(**defaults)


def fraction(text: str) -> float:
    """argparse type for shares and probabilities: a float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from scratch; writes weights, curves, metrics under --out")
    t.add_argument("--config", default="", help="TOML recipe (recipes/*.toml) whose values become the defaults; "
                                                 "`extends = \"other.toml\"` in it builds on another recipe; "
                                                 "options given on the command line win (default: none)")
    t.add_argument("--data", default=str(DEFAULT_DATA), help="split root {train,val,test}/<class>/ (default: %(default)s)")
    t.add_argument("--model", default=SHIPPED, choices=sorted(CONFIGS), help="model size from mobile_model.CONFIGS (default: %(default)s)")
    t.add_argument("--input-size", type=int, default=0, help="input resolution in px, 0 = the config's (default: %(default)s)")
    t.add_argument("--branches", type=int, default=0, help="extra parallel conv branches per conv while training, folded away for inference (default: %(default)s)")
    t.add_argument("--no-flip-average", action="store_true", help="evaluate without the built-in mirror-image averaging (teachers: half the cost)")
    t.add_argument("--epochs", type=int, default=150, help="training epochs (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    t.add_argument("--lr", type=float, default=4e-3, help="peak AdamW learning rate (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on conv/linear weights (default: %(default)s)")
    t.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing (default: %(default)s)")
    t.add_argument("--crop-scale", type=fraction, default=0.55, help="smallest area share of a random crop (default: %(default)s)")
    t.add_argument("--erase-prob", type=fraction, default=0.0, help="share of images with one random box erased (default: %(default)s)")
    t.add_argument("--mix-prob", type=fraction, default=0.0, help="share of batches mixed with MixUp or CutMix (default: %(default)s)")
    t.add_argument("--warmup-epochs", type=int, default=5, help="linear warm-up epochs before cosine decay (default: %(default)s)")
    t.add_argument("--ema-decay", type=float, default=0.998, help="EMA decay per step of the evaluated weights (default: %(default)s)")
    t.add_argument("--teacher", nargs="*", default=[], help="weights .pkl of models trained here from scratch to distil from; several = their ensemble (default: none)")
    t.add_argument("--teacher-no-flip", action="store_true", help="teachers see the student's view only, not also its "
                                                                 "mirror image: half the teacher's cost (default: off)")
    t.add_argument("--distill-weight", type=float, default=0.7, help="share of the distillation term in the loss (default: %(default)s)")
    t.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature for distillation (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, data order and augmentation (default: %(default)s)")
    t.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps (default: %(default)s)")
    t.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default: off, float32)")
    t.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default (default: %(default)s)")
    t.add_argument("--no-channels-last", action="store_true",
                   help="keep tensors NCHW on the CPU (channels-last, the default there, made an epoch "
                        "1.25-1.37x faster here; same results to float rounding)")
    t.add_argument("--out", default=str(ARTIFACTS / "train"), help="output folder (default: %(default)s)")
    t.add_argument("--cache-dir", default=str(ARTIFACTS / "cache"), help="decoded-image cache folder (default: %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.ckpt")
    t.add_argument("--stop-after", type=int, default=0, help="stop after this epoch (to test --resume; default: run all)")

    for name, helptext in (("evaluate", "accuracy of a weights file on a folder of class subfolders"),
                           ("predict", "label and class probabilities for image files")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights .pkl (default: %(default)s)")
        s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
        if name == "evaluate":
            s.add_argument("--data", default=str(DEFAULT_DATA), help="folder of <class>/ subfolders, or a split root (default: %(default)s)")
            s.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to use when --data is a split root (default: %(default)s)")
            s.add_argument("--cache-dir", default="", help="decoded-image cache folder (default: no cache)")
        else:
            s.add_argument("images", nargs="+", help="image files")
            s.add_argument("--json", action="store_true", help='one JSON object per line and file: {"file", "label", '
                                                               '"probabilities"} or {"file", "error"}')
    c = sub.add_parser("compare", help="val curves of several training runs in one figure, and their best epochs")
    c.add_argument("runs", nargs="+", help="run folders (the --out of `train`), finished or not")
    c.add_argument("--out", default=str(ARTIFACTS / "compare.png"), help="figure to write (default: %(default)s)")
    c.add_argument("--window", type=int, default=9, help="epochs in the running mean drawn bold (default: %(default)s)")
    c.add_argument("--last", type=int, default=10, help="the table's mean val covers this many final epochs (default: %(default)s)")
    c.add_argument("--until", type=int, default=0, help="count epochs up to this one only, to compare schedules of "
                                                        "different lengths at equal epochs (default: all)")
    p.train_parser = t  # main() loads --config recipes into it
    return p


def main(argv=None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", ""):
        apply_recipe(parser.train_parser, args.config)
        args = parser.parse_args(argv)
    try:
        {"train": train, "evaluate": cmd_evaluate, "predict": cmd_predict, "compare": cmd_compare}[args.command](args)
    except (DataError, CheckpointError) as e:
        raise SystemExit(f"error: {e}")
    teardown()


if __name__ == "__main__":
    main()
