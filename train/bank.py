"""Build (or check) the teacher bank a recipe's runs use, on every core, before they start side by
side: the command over train/teacher_bank.py.

    python -m train.bank --config recipes/X.toml [--threads 0]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from train import engine
from train.checkpoint import CheckpointError
from train.common import command_errors, set_threads
from train.recipes import parse_train_args
from train.teacher_bank import bank_for_run


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    with command_errors():
        args = parse_train_args(argv)
        if not args.teacher_views or not args.teacher:
            raise CheckpointError(f"recipe {args.config}: no teacher bank to build (it sets no teacher, or teacher_views = 0)")
        set_threads(args.threads)
        config = engine.run_config(args)
        args.train_on = "train"   # the bank covers train and val alike; train+val runs stack the two
        data = engine.load_data(args, config, engine.Processes(), Path(args.cache_dir), print)
        teachers = engine.load_teachers(args, data["train"].classes, torch.device("cpu"), print)
        bank_for_run(args, data, teachers)


if __name__ == "__main__":
    main()
