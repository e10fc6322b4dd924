"""The training engine: EMA, schedule, losses, one epoch, evaluation, and `fit`, which runs a
whole training job (one process, or one rank of a torchrun job) from a namespace of options.

The recipe (AdamW, warm-up + cosine, label smoothing, batch augmentation on decoded tensors, an
EMA of the weights) is built for a tiny CNN on ~2,700 images on 2 CPU cores. `fit` reads as its
steps: load the data and teachers, build the model, restore a stopped run, train epoch by epoch
(saving a checkpoint after each), then `finish`: the kept weights, their metrics and plots.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mobile_model import build_model, count_parameters, get_config, inference_parameters
from train.checkpoint import CheckpointError, load_weights, safe_load, save_weights
from train.common import (accuracy, exclusive, keep_freed_memory, markdown_table, percent, progress, save_json, save_text, save_torch, seed_everything,
                          set_threads)
from train.teacher_bank import bank_for_run
from train.data import DataError, augment_batch, iterate_batches, load_splits, render_views, storage_size
from train.distributed import Processes, gather, main_rank_first, setup, sum_over_ranks
from train.plots import plot_confusion, plot_curves
from train.scoring import evaluate
from train.recipes import DEFAULT_BATCH, SHIPPED_TEACHER, recipe_record, recipe_text, result_options

# ---------------------------------------------------------------- the parts of a step

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
    """Whether to keep weights and activations channels-last: on the CPU, where it makes an epoch
    faster (docs/training.md has the measurement); not on GPUs, whose depthwise kernels it can slow."""
    return device.type == "cpu" and not args.no_channels_last


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


def distillation_loss(logits, teacher_logp, temperature: float, kind: str = "kl") -> torch.Tensor:
    """The soft-target loss at temperature T, scaled by T^2. kl: Hinton et al.'s KL(teacher ||
    student). dist: DIST (Huang et al. 2022), which asks the student to match the teacher's
    probabilities only up to scale and shift, by Pearson correlation: across the classes of each
    photo (inter-class) plus across the photos of the batch for each class (intra-class); a small
    student need not reproduce a much stronger teacher's exact confidence."""
    t = temperature
    log_p = F.log_softmax(logits / t, 1)
    if kind == "kl":
        return F.kl_div(log_p, teacher_logp, reduction="batchmean", log_target=True) * t * t
    p, q = log_p.exp(), teacher_logp.exp()
    return (2 - pearson(p, q, 1).mean() - pearson(p, q, 0).mean()) * t * t


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of a and b along dim."""
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def train_one_epoch(model, ema, optimizer, split, args, gens, step: int, total_steps: int, epoch: int, teachers=(),
                    procs: Processes = Processes(), memory_format: torch.memory_format = torch.contiguous_format,
                    bank=None):
    """One pass over the train split. `model` may be DDP-wrapped; `gens` = (data order generator,
    the same on every rank; augmentation generator, this rank's own); batches go to the model in
    `memory_format`, the one its weights are in. The soft targets come from `teachers` run on each
    batch, or from a `bank` (train/teacher_bank.py): each photo then shows one of its recorded views."""
    order_gen, aug_gen = gens
    model.train()
    device = next(model.parameters()).device
    size = ema.model.config.input_size
    loss_sum = correct = seen = 0
    steps_per_epoch = len(split) // args.batch_size   # --batch-size: images per step over every process
    bar = progress(iterate_batches(len(split), args.batch_size // procs.world, order_gen, True, procs.rank, procs.world),
                   enabled=procs.main, total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch")
    for idx in bar:
        lr = lr_at(step, total_steps, args.warmup_epochs * steps_per_epoch, args.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        if bank is None:
            x = augment_batch(split.images[idx], size, aug_gen, scale=(args.crop_scale, 1.0), erase_prob=args.erase_prob)
        else:
            pick = bank.pick(idx, aug_gen)
            x = render_views(split.images[idx], bank.views[idx, pick], size)
        x, y = x.to(device, memory_format=memory_format), split.labels[idx].to(device)  # augmentation stays on the CPU
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            if teachers or bank is not None:
                soft = (teacher_log_probs(teachers, x, args.distill_temperature) if bank is None else
                        bank.probs(idx, pick, args.distill_temperature).clamp_min(1e-8).log().to(device))
                loss = (1 - args.distill_weight) * loss + args.distill_weight * distillation_loss(
                    logits, soft, args.distill_temperature, args.distill_loss)
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


# ---------------------------------------------------------------- a whole training job

@dataclass
class Run:
    """What a training job carries from epoch to epoch: the state a checkpoint holds."""
    model: torch.nn.Module          # the plain model (weights in `memory_format`)
    net: torch.nn.Module            # the model, or the model inside DDP: what trains
    ema: EMA
    optimizer: torch.optim.Optimizer
    order_gen: torch.Generator      # data order: the same on every rank
    aug_gen: torch.Generator        # augmentation: this rank's own
    channels_last: bool
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    step: int = 0
    epoch: int = 0                  # the last finished epoch

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def run_config(args):
    config = replace(get_config(args.model, args.input_size), framing=args.framing)
    return replace(config, flip_average=False) if args.no_flip_average else config


def load_data(args, config, procs: Processes, out: Path, log) -> dict:
    """The decoded splits (rank 0 decodes and writes the cache; the others then map it); with
    --train-on train+val the val images train too (val is still evaluated, for the curves)."""
    with main_rank_first(procs):
        data = load_splits(args.data, storage_size(config.input_size, config.framing), cache_dir=Path(args.cache_dir),
                           framing=config.framing)
    skipped = [reason for d in data.values() for reason in d.skipped]
    log(f"data: {args.data}  " + "  ".join(f"{s}={len(d)}" for s, d in data.items())
        + f"  classes={data['train'].classes}  skipped={len(skipped)}")
    if skipped and procs.main:
        save_text("".join(f"{reason}\n" for reason in skipped), out / "skipped.txt")
        print(f"skipped {len(skipped)} unreadable files; the list with reasons: {out / 'skipped.txt'}")
    if args.train_on == "train+val":
        train, val = data["train"], data["val"]
        data["train"] = replace(train, images=torch.cat([train.images, val.images]),
                                labels=torch.cat([train.labels, val.labels]), paths=train.paths + val.paths)
        log(f"training on train + val: {len(data['train'])} images")
    return data


def fit_batch(args, n_train: int, world: int, log) -> None:
    """--batch-size is the images of one step over all `world` processes, so a recipe means the
    same with any number: it must split evenly. A data set smaller than one batch: with the default
    batch, the batch halves until an epoch holds four steps (so a user's 20 photos a class train
    with the defaults), and says so; a batch the user chose stays theirs, and the error names the
    one that fits."""
    if args.batch_size % world:
        raise DataError(f"--batch-size {args.batch_size} (images per step over all processes) does not split "
                        f"evenly over {world} processes: pass a multiple of {world}")
    if n_train >= args.batch_size:
        return
    fitting = max(world, n_train // 4 // world * world)
    if args.batch_size != DEFAULT_BATCH or world > 1:
        raise DataError(f"train split has {n_train} images, fewer than one batch of {args.batch_size}"
                        f": pass --batch-size {fitting} (ARGS='--batch-size N' with make)")
    batch = args.batch_size
    while batch > 1 and 4 * batch > n_train:
        batch //= 2
    log(f"NOTE: {n_train} training images, fewer than the default batch of {args.batch_size}: batch {batch} "
        "(--batch-size N to choose)")
    args.batch_size = batch


def shipped_teachers(args) -> bool:
    """Whether the run distils from the shipped model's teacher because that is the default, rather
    than from teachers a user or a recipe named."""
    return tuple(args.teacher) == SHIPPED_TEACHER


def load_teachers(args, classes: list[str], device: torch.device, log) -> list:
    teachers = []
    channels_last = channels_last_layout(device, args)
    for path in args.teacher:
        teacher, tckpt = load_weights(path)
        if tckpt["classes"] != classes and shipped_teachers(args):
            # a user's own classes with the default recipe: its dog-emotion teacher cannot teach them
            log(f"NOTE: training without a teacher: the default teacher {path} knows {tckpt['classes']}, "
                f"this data has {classes}. To distil, train a teacher on this data first (make teacher DATA=...) "
                "and pass it: --teacher artifacts/teacher/dog_emotion.pkl")
            return []
        if tckpt["classes"] != classes:
            raise CheckpointError(f"{path}: teacher has classes {tckpt['classes']}; the student needs {classes} "
                                  "(a teacher trained on this data, or --teacher with nothing after it for none)")
        log(f"distilling from {path} ({count_parameters(teacher):,} params, "
            f"val {percent(tckpt['metrics'].get('val_acc'))})")
        if args.teacher_no_flip:
            teacher.config = replace(teacher.config, flip_average=False)
        teachers.append(teacher.to(device, memory_format=torch.channels_last if channels_last
                                   else torch.preserve_format))
    return teachers


def initial_model(args, config, classes: list[str]) -> torch.nn.Module:
    """A new network of the config, or with --init a trained one's weights to fine-tune. Those are
    its inference form, BatchNorm folded into each conv's bias, and they train in that form: its
    statistics are already in the weights, and a fine-tune's batches need no normalising."""
    if not args.init:
        return build_model(config)
    model, ckpt = load_weights(args.init)
    want = replace(config, folded=True)
    if replace(model.config, framing=config.framing) != want or ckpt["classes"] != classes:
        raise CheckpointError(f"--init {args.init}: holds {ckpt['classes']} with {model.config}; this run builds "
                              f"{classes} with {want} (--model and the data must match the file)")
    model.config = want
    return model.train()


def build_run(args, config, procs: Processes, classes: list[str]) -> Run:
    order_gen = seed_everything(args.seed)  # the same on every rank: same init, same batch order
    aug_gen = torch.Generator().manual_seed(augmentation_seed(args.seed, procs.rank))
    model = initial_model(args, config, classes).to(procs.device)
    channels_last = channels_last_layout(procs.device, args)
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ema = EMA(model, args.ema_decay)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    # DDP averages the gradients of all ranks in backward(); BatchNorm statistics stay per rank
    net = model if procs.world == 1 else DistributedDataParallel(
        model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    return Run(model, net, ema, optimizer, order_gen, aug_gen, channels_last)


def data_keys(data: dict) -> dict:
    return {s: d.key for s, d in data.items()}


def restore(run: Run, ckpt_path: Path, args, procs: Processes, data: dict) -> None:
    """Continue a stopped run from its checkpoint, refusing one that would not continue the same run:
    other options, or other data (by the files' content; the path it is reached by may differ)."""
    if not ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint there)")
    state = safe_load(ckpt_path)
    if "rank_states" not in state:
        raise CheckpointError(f"{ckpt_path}: written by an older version of this script; start again without --resume")
    if state["processes"] != procs.world:
        raise CheckpointError(f"{ckpt_path}: written by a run of {state['processes']} processes; resume it with "
                              f"as many (this one has {procs.world})")
    # an option the checkpoint does not know was added later: its default is the old behaviour
    by_content = "data_keys" in state  # absent: written before the data's content was recorded
    changed = {k: (state["args"][k], v) for k, v in result_options(vars(args)).items()
               if k in state["args"] and state["args"][k] != v and not (by_content and k == "data")}
    if changed:
        raise CheckpointError(f"{ckpt_path}: was written with other options ("
                              + ", ".join(f"{k}={old!r}, now {new!r}" for k, (old, new) in changed.items())
                              + "); resume with the same options")
    moved = [s for s, key in data_keys(data).items() if state["data_keys"].get(s) != key] if by_content else []
    if moved:
        raise CheckpointError(f"{ckpt_path}: the files of {'/, '.join(moved)}/ under {args.data} are not the ones this run "
                              "trained on (added, removed or changed since); resume with that data, or start a new run")
    if state.get("channels_last", False) != run.channels_last:  # absent: written before there was a choice
        raise CheckpointError(f"{ckpt_path}: was written in the {layout_name(not run.channels_last)} "
                              f"layout, this run would be {layout_name(run.channels_last)}; "
                              "resume in the same layout (--no-channels-last: NCHW) to continue the same run")
    run.model.load_state_dict(state["model"])
    run.ema.model.load_state_dict(state["ema"])
    run.ema.updates = state["ema_updates"]
    run.optimizer.load_state_dict(state["optimizer"])
    run.order_gen.set_state(state["order_gen"])
    aug_state, torch_rng = state["rank_states"][procs.rank]
    run.aug_gen.set_state(aug_state)
    torch.set_rng_state(torch_rng)
    run.history, run.best, run.step, run.epoch = state["history"], state["best"], state["step"], state["epoch"]


def save_checkpoint(run: Run, args, procs: Processes, rank_states: list, data: dict, path: Path) -> None:
    save_torch({"args": vars(args), "epoch": run.epoch, "step": run.step, "model": run.model.state_dict(),
                "ema": run.ema.model.state_dict(), "ema_updates": run.ema.updates,
                "optimizer": run.optimizer.state_dict(), "order_gen": run.order_gen.get_state(),
                "rank_states": rank_states, "processes": procs.world, "history": run.history, "best": run.best,
                "channels_last": run.channels_last, "data_keys": data_keys(data)}, path)


def end_epoch(run: Run, epoch: int, tr: dict, data: dict, args, classes: list[str], t0: float, out: Path) -> None:
    """Rank 0 after an epoch: evaluate the EMA weights on val, log the row, keep the best-val weights."""
    va = evaluate(run.ema.model, data["val"], args.label_smoothing)
    row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
           "val_acc": va["acc"], "lr": tr["lr"], "seconds": time.time() - t0}
    run.history.append(row)
    run.epoch = epoch
    if va["acc"] > run.best["val_acc"]:
        run.best = {"val_acc": va["acc"], "epoch": epoch}
        save_weights(run.ema.model, classes, out / "best.pkl", {"val_acc": va["acc"], "epoch": epoch})
    print(f"epoch {epoch:3d}/{args.epochs}  train loss {tr['loss']:.3f} acc {tr['acc']:5.1f}  "
          f"val loss {va['loss']:.3f} acc {va['acc']:5.1f}  best {run.best['val_acc']:.1f}@{run.best['epoch']}  "
          f"lr {tr['lr']:.2e}  {row['seconds']:.1f}s  {eta(run.history, args.epochs)}", flush=True)


def eta(history: list[dict], epochs: int) -> str:
    """Time left for the whole run: the last (up to) five epochs' mean, times the epochs to go."""
    recent = [h["seconds"] for h in history[-5:]]
    left = round(sum(recent) / len(recent) * (epochs - history[-1]["epoch"]))
    return f"eta {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"eta {left // 60}m{left % 60:02d}s"


class TrainingStopped(DataError):
    """A run that cannot go on: interrupted, or its loss is no longer a number."""


# Every file a run writes in its --out (and the only ones --force removes)
RUN_FILES = ("last.ckpt", "best.pkl", "final.pkl", "dog_emotion.pkl", "metrics.json", "summary.md", "curves.png",
             "confusion_test.png", "args.toml", "recipe.json", "skipped.txt")
RECIPE_RECORD = "recipe.json"   # the recipe as the run started (train.recipes.recipe_record): what the run log diffs against


def check_out(out: Path, args, main: bool = True) -> None:
    """--out must be a folder this run may write: not a file, and not another run's folder unless
    --resume (continue it) or --force (replace it: the earlier run's files go, nothing else) says so.
    The main process (rank 0, the one that writes there) also removes the temp files a killed run left."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder")
    if not args.resume and not args.force and any((out / f).exists() for f in ("last.ckpt", "metrics.json")):
        raise DataError(f"--out {out}: holds another run (last.ckpt or metrics.json); --resume continues it, "
                        "--force replaces it, or choose another --out")
    if args.force and not args.resume and main:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if args.resume and (out / "metrics.json").exists() and not (out / "last.ckpt").exists():
        raise DataError(f"--out {out}: holds a finished run with no checkpoint to resume")
    for stale in out.glob(".*.tmp") if main and out.is_dir() else ():   # left by a run killed mid-write: never renamed
        if stale.is_file():
            stale.unlink(missing_ok=True)


def fit(args) -> dict:
    """Train from scratch (or --resume), as one process or as one rank of a torchrun job: every rank
    trains on its shard of each batch; rank 0 alone evaluates, prints and writes files, and holds
    the folder's lock: a second job into the same --out is refused while this one runs."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder")
    if int(os.environ.get("RANK", "0")) != 0:
        return train_job(args)
    with exclusive(out / ".run.lock", f"--out {out}: another training run is writing to it now; "
                                      "wait for it to end, or choose another --out"):
        return train_job(args)


def train_job(args) -> dict:
    """fit's work, inside the folder's lock."""
    set_threads(args.threads)
    keep_freed_memory()
    procs = setup(args.device)
    if args.amp and procs.device.type != "cuda":
        raise DataError(f"--amp (bf16 autocast) is for CUDA devices; this run is on {procs.device}")
    out, log = Path(args.out), (print if procs.main else (lambda *a, **k: None))
    check_out(out, args, procs.main)
    config = run_config(args)
    data = load_data(args, config, procs, out, log)
    classes = data["train"].classes
    if not 2 <= len(classes) <= 1000:   # checked now, not after a whole schedule: what a weights file may hold
        raise DataError(f"{args.data}: {len(classes)} class folder(s) ({', '.join(classes[:3])}...); "
                        "a classifier here takes 2 to 1000")
    config = replace(config, num_classes=len(classes))   # the data's classes, not a fixed four
    teachers, bank = load_teachers(args, classes, procs.device, log), None
    if args.teacher_views and teachers:   # the teachers' outputs read from a bank, not computed each step
        with main_rank_first(procs):
            bank, teachers = bank_for_run(args, data, [t.cpu() for t in teachers], log), []
    fit_batch(args, len(data["train"]), procs.world, log)
    run = build_run(args, config, procs, classes)
    steps_per_epoch = len(data["train"]) // args.batch_size
    if args.resume:
        restore(run, out / "last.ckpt", args, procs, data)
        log(f"resumed from {out / 'last.ckpt'} at epoch {run.epoch + 1}")
    log(f"model: {args.model}  params={count_parameters(run.model):,} while training, "
        f"{inference_parameters(run.model):,} folded for inference  input={config.input_size}px  "
        f"epochs={args.epochs}  threads={torch.get_num_threads()}  device={procs.device}  "
        f"layout={layout_name(run.channels_last)}")
    log(f"batch: {args.batch_size} per step" + (f" = {args.batch_size // procs.world} per process x {procs.world} processes; "
                                              f"lr {args.lr:g} as given (not scaled with the batch)" if procs.world > 1 else ""))
    if procs.main:
        save_text(recipe_text(vars(args)), out / "args.toml")  # the resolved options, loadable with --config
        if not (out / RECIPE_RECORD).exists():   # a resumed run keeps the recipe it started with
            save_json(recipe_record(args.config), out / RECIPE_RECORD)
    for epoch in range(run.epoch + 1, args.epochs + 1):
        t0 = time.time()
        try:
            tr, run.step = train_one_epoch(run.net, run.ema, run.optimizer, data["train"], args, (run.order_gen, run.aug_gen),
                                           run.step, args.epochs * steps_per_epoch, epoch, teachers, procs, run.memory_format,
                                           bank)
        except KeyboardInterrupt:
            raise TrainingStopped(f"{out}: stopped by the user in epoch {epoch}; the last finished epoch, {run.epoch}, "
                                  f"is in last.ckpt: the same command with --resume continues from there") from None
        if not math.isfinite(tr["loss"]):
            raise TrainingStopped(f"{out}: the training loss became {tr['loss']} in epoch {epoch} (a learning rate, "
                                  f"temperature or data problem); nothing of this epoch was kept")
        rank_states = gather((run.aug_gen.get_state(), torch.get_rng_state()), procs)
        stopping = bool(args.stop_after) and epoch >= args.stop_after
        if procs.main:
            end_epoch(run, epoch, tr, data, args, classes, t0, out)
            save_checkpoint(run, args, procs, rank_states, data, out / "last.ckpt")
            plot_curves(run.history, out / "curves.png", f"{args.model} ({count_parameters(run.model):,} params): "
                        "train = running, on augmented batches; val = EMA weights")
        if stopping:
            log(f"stopping after epoch {epoch} as asked (--stop-after); continue with --resume")
            return {}
    return finish(out, run, data, args, procs.world) if procs.main else {}


def finish(out: Path, run: Run, data: dict, args, processes: int = 1) -> dict:
    """The kept weights (--keep: the final EMA weights, or the best-val epoch's) reloaded in their
    folded inference form and evaluated (test too, unless --no-test), written as dog_emotion.pkl
    with metrics.json, summary.md and plots."""
    if args.keep == "final":
        save_weights(run.ema.model, data["train"].classes, out / "final.pkl",
                     {"val_acc": run.history[-1]["val_acc"], "epoch": run.epoch})
    model, ckpt = load_weights(out / ("final.pkl" if args.keep == "final" else "best.pkl"))
    results = {s: evaluate(model, d) for s, d in data.items() if s != "test" or not args.no_test}
    classes = data["train"].classes
    test = results.get("test", {})
    if test:
        plot_confusion(np.array(test["confusion"]), classes, out / "confusion_test.png",
                       f"test split, {test['acc']:.1f}% ({args.model})")
    metrics = {
        "model": args.model, "params": count_parameters(model), "train_params": ckpt["params"],
        "config": model.config.to_dict(), "classes": classes, "kept": args.keep,
        "best_epoch": run.best["epoch"], "best_val_acc": run.best["val_acc"],
        "final_val_acc": run.history[-1]["val_acc"], "val_acc": results["val"]["acc"],
        "test_acc": test.get("acc"), "train_acc_eval": results["train"]["acc"],
        "per_class_test": test.get("per_class"), "confusion_test": test.get("confusion"),
        "train_minutes": sum(h["seconds"] for h in run.history) / 60,
        "processes": processes, "batch_per_step": args.batch_size,
        "args": vars(args), "history": run.history,
    }
    save_weights(model, classes, out / "dog_emotion.pkl",
                 {**{k: metrics[k] for k in ("val_acc", "test_acc", "best_epoch", "train_minutes") if metrics[k] is not None},
                  "train_on": args.train_on})   # export: val can calibrate only weights that never trained on it
    save_json(metrics, out / "metrics.json")
    save_text(summary_text(metrics, args, test), out / "summary.md")
    print(f"\nkept the {args.keep} weights (epoch {metrics['best_epoch'] if args.keep == 'best' else run.epoch}): "
          f"val {metrics['val_acc']:.2f}%  test " + (f"{test['acc']:.2f}%" if test else "not read (--no-test)")
          + f"  params {metrics['params']:,}  time {metrics['train_minutes']:.1f} min")
    for c, a in (test.get("per_class") or {}).items():
        print(f"  test {c:8s} {percent(a):>6s}")
    print(f"wrote {out}/dog_emotion.pkl, metrics.json, summary.md, curves.png" + (", confusion_test.png" if test else ""))
    return metrics


def summary_text(metrics: dict, args, test: dict) -> str:
    per_class = [{"class": c, "test accuracy": percent(a)} for c, a in (test.get("per_class") or {}).items()]
    return (f"# Dog-emotion training run: `{args.model}`\n\n"
            f"- parameters: {metrics['params']:,} as shipped (folded), {metrics['train_params']:,} while training\n"
            f"- input: {metrics['config']['input_size']} px\n"
            f"- epochs: {args.epochs} (best val epoch {metrics['best_epoch']}), seed {args.seed}; kept: {args.keep} weights\n"
            f"- training time: {metrics['train_minutes']:.1f} min on {metrics['processes']} process(es) x "
            f"{torch.get_num_threads()} thread(s), {metrics['batch_per_step']} images per step\n"
            f"- val accuracy: {metrics['val_acc']:.2f}% (final epoch {metrics['final_val_acc']:.2f}%, "
            f"best {metrics['best_val_acc']:.2f}% at epoch {metrics['best_epoch']})\n"
            + (f"- **test accuracy: {test['acc']:.2f}%** (n={test['n']}, reported once)\n\n"
               f"{markdown_table(per_class)}\n![confusion](confusion_test.png)\n" if test else "- test: not read (--no-test)\n\n")
            + "![curves](curves.png)\n")
