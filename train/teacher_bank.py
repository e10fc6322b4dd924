"""The teachers' knowledge, paid once: a bank of the teacher ensemble's logits on recorded views.

Online distillation runs every teacher on every augmented batch of every epoch of every run: with
the four `large` teachers that is more than the student's own step. A bank (FKD, Shen and Xing,
ECCV 2022) records, for every photo of train and of val, `views` random views (draw_views' 13
numbers each: crop, rotation, mirror, colour, erased box) and every teacher's logits on each (flip
averaged unless --teacher-no-flip; each teacher renders the view at its own input size). A student
then draws one of a photo's recorded views each epoch and renders it itself: teacher and student
see the same view (function matching, Beyer et al. 2022), and an epoch costs only the student.
One bank serves every seed, every size and both train and train + val runs of the same teachers
and augmentation; it lives in the cache folder, named by a hash of everything that decides its
content, and a stopped build resumes from its last saved view; a run that asks for more views
than a bank holds extends it (view v of a photo is the same in every bank of it).

    python -m train.bank --config recipes/X.toml [--threads 0]    # build the bank a recipe uses (train/bank.py)
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.checkpoint import CheckpointError, safe_load
from train.common import progress, save_torch
from train.data import VIEW_FIELDS, DecodedSplit, draw_views, render_views

BANK_VERSION = 1
SAVE_EVERY = 8          # views between saves of a build in progress (what a stopped build loses at most)


@dataclass
class TeacherBank:
    """`views[i, v]` is photo i's v-th recorded view; `logits[i, v, m]` teacher m's logits on it."""
    views: torch.Tensor      # (N, V, 13) float32
    logits: torch.Tensor     # (N, V, M, K) float32

    @property
    def num_views(self) -> int:
        return self.views.shape[1]

    def pick(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One recorded view per photo of a batch, drawn uniformly: the view number of each."""
        return torch.randint(self.num_views, (len(idx),), generator=gen)

    def probs(self, idx: torch.Tensor, pick: torch.Tensor, temperature: float) -> torch.Tensor:
        """The teachers' mean softmax at temperature T on the picked views (the ensemble's soft targets)."""
        return F.softmax(self.logits[idx, pick] / temperature, -1).mean(1)


def bank_key(teacher_paths: list[str], splits: dict[str, DecodedSplit], scale: float, erase_prob: float,
             no_flip: bool) -> str:
    """What decides a bank's content, the number of views aside (a bank grows): the teachers' bytes,
    the photos (their content keys and the stored size) and the augmentation the views are drawn from."""
    h = hashlib.sha1(f"bank v{BANK_VERSION}|{scale!r}|{erase_prob!r}|{no_flip}|{VIEW_FIELDS}".encode())
    for path in teacher_paths:
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    for name, split in splits.items():
        h.update(f"|{name}:{split.key}:{tuple(split.images.shape)}".encode())
    return h.hexdigest()[:16]


def recorded_views(n: int, name: str, views: int, scale: float, erase_prob: float) -> torch.Tensor:
    """(n, views, 13): view v of every photo of a split comes from a stream of its own, so a bank
    of more views extends one of fewer and the first views are the same in both."""
    streams = (torch.Generator().manual_seed(int(np.random.SeedSequence([BANK_VERSION, v, *name.encode()]).generate_state(1)[0]))
               for v in range(views))
    return torch.stack([draw_views(n, g, (scale, 1.0), erase_prob=erase_prob) for g in streams], 1)


@torch.no_grad()
def record(split: DecodedSplit, name: str, teachers: list, views: int, scale: float, erase_prob: float,
           partial: Path, have: TeacherBank | None = None, batch_size: int = 256) -> TeacherBank:
    """The bank of one split with `views` views a photo: `have`'s views kept, the rest recorded
    (every teacher on each), saved to `partial` every SAVE_EVERY views and continued from there."""
    bank = TeacherBank(recorded_views(len(split), name, views, scale, erase_prob),
                       torch.full((len(split), views, len(teachers), teachers[0].config.num_classes), float("nan")))
    done = 0
    for earlier in (have, safe_load(partial) if partial.exists() else None):
        if earlier is None:
            continue
        earlier = earlier if isinstance(earlier, TeacherBank) else TeacherBank(earlier["views"], earlier["logits"][:, :earlier["done"]])
        k = min(earlier.logits.shape[1], views)
        if k > done and torch.equal(earlier.views[:, :k], bank.views[:, :k]):
            bank.logits[:, :k], done = earlier.logits[:, :k], k
    if done:
        print(f"bank: {name} has its first {done} of {views} views")
    t0 = time.time()
    for v in progress(range(done, views), desc=f"bank {name}", unit="view", initial=done, total=views):
        for i in range(0, len(split), batch_size):
            images = split.images[i:i + batch_size]
            for m, teacher in enumerate(teachers):
                x = render_views(images, bank.views[i:i + batch_size, v], teacher.config.input_size)
                bank.logits[i:i + batch_size, v, m] = teacher(x.contiguous(memory_format=torch.channels_last)).float()
        if (v + 1) % SAVE_EVERY == 0 and v + 1 < views:
            save_torch({"views": bank.views, "logits": bank.logits, "done": v + 1}, partial)
            left = (time.time() - t0) / (v + 1 - done) * (views - v - 1)
            print(f"bank {name}: {v + 1}/{views} views, about {left / 60:.0f} min left", flush=True)   # for logs
    return bank


def load_or_build(path: Path, splits: dict[str, DecodedSplit], teachers: list, views: int, scale: float,
                  erase_prob: float) -> dict[str, TeacherBank]:
    """The first `views` views of the bank at `path` (written by this module: checked for fit, not
    armoured); recorded first, or extended, when it holds fewer."""
    have = {}
    if path.exists():
        state = safe_load(path)
        have = {name: TeacherBank(state[name]["views"], state[name]["logits"]) for name in splits}
        for name, bank in have.items():
            if len(bank.views) != len(splits[name]) or not torch.isfinite(bank.logits).all():
                raise CheckpointError(f"{path}: does not fit the {name} split ({len(splits[name])} photos); "
                                      "delete it and it is rebuilt")
        if all(b.num_views >= views for b in have.values()):
            return {name: TeacherBank(b.views[:, :views], b.logits[:, :views]) for name, b in have.items()}
    missing = sum(len(s) * (views - (have[n].num_views if n in have else 0)) for n, s in splits.items()) * len(teachers)
    photos, classes = sum(len(s) for s in splits.values()), teachers[0].config.num_classes
    size = photos * views * (len(VIEW_FIELDS) + len(teachers) * classes) * 4   # float32 views and logits
    print(f"bank: {views} views of {' + '.join(f'{len(s)} {n}' for n, s in splits.items())} photos x "
          f"{len(teachers)} teachers: {missing:,} teacher passes (each with its flip unless told) to record -> {path} "
          f"({size / 1e6:.0f} MB on disk and in memory; about 20 min per 400,000 passes on 2 cores of a 2-core "
          "AMD EPYC, the time left prints every few views)")
    t0 = time.time()
    banks = {name: record(split, name, teachers, views, scale, erase_prob, path.with_name(f"{path.stem}.{name}.partial"),
                          have.get(name)) for name, split in splits.items()}
    save_torch({name: {"views": b.views, "logits": b.logits} for name, b in banks.items()}, path)
    for name in splits:
        path.with_name(f"{path.stem}.{name}.partial").unlink(missing_ok=True)
    print(f"bank: recorded in {(time.time() - t0) / 60:.1f} min, {path.stat().st_size / 1e6:.1f} MB")
    return banks


def bank_for_run(args, data: dict, teachers: list, log=print) -> TeacherBank:
    """The bank of the run's teachers on its train photos (train, or train then val as the run stacks
    them), from the cache folder, built there first when missing."""
    splits = {s: data[s] for s in ("train", "val")}
    if args.train_on == "train+val":   # load_data stacked val after train: record each split on its own
        n = len(data["train"]) - len(data["val"])
        splits["train"] = DecodedSplit(data["train"].images[:n], data["train"].labels[:n], data["train"].classes,
                                       key=data["train"].key)   # the stack keeps train's own content key
    key = bank_key(args.teacher, splits, args.crop_scale, args.erase_prob, args.teacher_no_flip)
    path = Path(args.cache_dir) / f"bank-{key}.pt"
    banks = load_or_build(path, splits, teachers, args.teacher_views, args.crop_scale, args.erase_prob)
    log(f"teacher bank: {path.name}, {args.teacher_views} recorded views a photo, {len(teachers)} teachers")
    if args.train_on == "train+val":
        return TeacherBank(torch.cat([banks["train"].views, banks["val"].views]),
                           torch.cat([banks["train"].logits, banks["val"].logits]))
    return banks["train"]
