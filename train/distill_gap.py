"""How far a distilled student is from its teachers, and where: KL(teachers || student) and top-1
agreement on three kinds of view, to tell a memorised bank from a student that lacks capacity.

- bank views: views the teacher bank records (the first --views of every train photo's recorded
  views, regenerated from their seeded streams and rendered as the bank renders them);
- fresh views: views drawn the same way from a stream the bank never used;
- val: the evaluation view of every val photo.

Low on the bank and high on fresh views says the student learnt the bank's views by heart (more
views pay); high everywhere says it lacks capacity or compute. The teachers run here (their mean
softmax, each flip-averaged as in the bank); nothing is read from or written to a bank file.

    python -m train.distill_gap --student weights/dog_emotion.pkl [--views 4] [--threads 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from train.checkpoint import load_weights
from train.engine import for_input_size
from train.common import ARTIFACTS, at_least, command_errors, markdown_table, set_threads
from train.data import DEFAULT_DATA, draw_views, load_splits, render_views, storage_size, eval_transform
from train.recipes import SHIPPED_TEACHER
from train.teacher_bank import recorded_views

FRESH_SEED = 20261207   # a stream of views no bank draws from (banks seed theirs per view number)


@torch.no_grad()
def probs_of(model, x: torch.Tensor) -> torch.Tensor:
    return F.softmax(model(for_input_size(x, model.config.input_size)), 1)


@torch.no_grad()
def gap(student, teachers: list, images: torch.Tensor, views: torch.Tensor | None, batch: int = 200) -> dict:
    """Mean KL(teachers' mean softmax || student's softmax) in nats and top-1 agreement (%) over
    `images` rendered through `views` ((N, V, 13); None: the evaluation view)."""
    kl_sum, agree, n = 0.0, 0, 0
    for v in range(1 if views is None else views.shape[1]):
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            # each model sees the view rendered at its own size, as the bank renders it (the
            # evaluation view is the student's, resized)
            rendered = {size: eval_transform(chunk, student.config.input_size) if views is None
                        else render_views(chunk, views[i:i + batch, v], size)
                        for size in {m.config.input_size for m in (student, *teachers)}}
            p = torch.stack([probs_of(t, rendered[t.config.input_size]) for t in teachers]).mean(0)
            q = probs_of(student, rendered[student.config.input_size])
            kl_sum += F.kl_div(q.clamp_min(1e-8).log(), p, reduction="sum").item()
            agree += (p.argmax(1) == q.argmax(1)).sum().item()
            n += len(chunk)
    return {"KL (nats)": round(kl_sum / n, 4), "top-1 agreement (%)": round(100 * agree / n, 2), "views": n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", nargs="+", default=["weights/dog_emotion.pkl"], help="student weights .pkl (default: %(default)s)")
    ap.add_argument("--teacher", nargs="+", default=list(SHIPPED_TEACHER), help="the teachers (default: the shipped four)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root (default: %(default)s)")
    ap.add_argument("--views", type=at_least(1, 32), default=4, help="bank and fresh views per train photo (default: %(default)s)")
    ap.add_argument("--crop-scale", type=float, default=0.25, help="smallest crop area of a view, as the bank's (default: %(default)s)")
    ap.add_argument("--erase-prob", type=float, default=0.25, help="erase share of a view, as the bank's (default: %(default)s)")
    ap.add_argument("--threads", type=at_least(0), default=0, help="torch threads, 0 = torch's default (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "distill_gap.md"), help="the table, Markdown (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        set_threads(args.threads)
        teachers = [load_weights(t)[0] for t in args.teacher]
        rows = []
        for path in args.student:
            student, _ = load_weights(path)
            cfg = student.config
            data = load_splits(args.data, storage_size(cfg.input_size, cfg.framing), ("train", "val"),
                               Path(ARTIFACTS / "cache"), cfg.framing)
            train = data["train"].images
            bank = recorded_views(len(train), "train", args.views, args.crop_scale, args.erase_prob)
            fresh_gen = torch.Generator().manual_seed(FRESH_SEED)
            fresh = torch.stack([draw_views(len(train), fresh_gen, (args.crop_scale, 1.0), erase_prob=args.erase_prob)
                                 for _ in range(args.views)], 1)
            for kind, images, views in (("bank views", train, bank), ("fresh views", train, fresh),
                                        ("val", data["val"].images, None)):
                row = {"student": Path(path).name, "framing": cfg.framing, "views of": kind, **gap(student, teachers, images, views)}
                print(row, flush=True)
                rows.append(row)
        table = markdown_table(rows)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        print(table)


if __name__ == "__main__":
    main()
