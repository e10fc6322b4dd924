"""Training as several processes (DDP via torchrun, CPU/gloo, 2 processes) on small generated data."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY as TINY_TRAIN, write_split_root
from train import dog_emotion

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_TRAIN, "--epochs", "3"]   # each test's own --batch-size comes later and wins


def torchrun(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on a free local port, so runs never collide on torchrun's fixed default
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 or not check, f"exit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


def run_train(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return torchrun(nproc, "-m", "train.dog_emotion", "train", *args, check=check)


def test_two_processes_write_what_one_writes_and_resume_exactly(tmp_path):
    root = write_split_root(tmp_path / "d", per_class=6)  # 24 train images: 3 steps of 2 x 4
    common = ["--data", str(root), "--cache-dir", str(tmp_path / "cache"), *TINY]
    dog_emotion.main(["train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")])
    run_train(2, *common, "--batch-size", "8", "--out", str(tmp_path / "two"))   # the same 8 a step, 4 a process
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    ckpt = torch.load(tmp_path / "two" / "last.ckpt", weights_only=True)
    assert ckpt["processes"] == 2 and len(ckpt["rank_states"]) == 2 and ckpt["step"] == 9
    summary = (tmp_path / "two" / "summary.md").read_text()
    assert "2 process(es)" in summary and "8 images per step" in summary

    # stopped after epoch 1 and resumed: bit-identical to the uninterrupted run (every rank's
    # augmentation generator and RNG state is restored, not just rank 0's)
    run_train(2, *common, "--batch-size", "8", "--out", str(tmp_path / "resumed"), "--stop-after", "1")
    assert not (tmp_path / "resumed" / "dog_emotion.pkl").exists()
    run_train(2, *common, "--batch-size", "8", "--out", str(tmp_path / "resumed"), "--resume")
    straight = torch.load(tmp_path / "two" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    for k in ("model", "ema"):
        assert all(torch.equal(straight[k][n], resumed[k][n]) for n in straight[k])
    with pytest.raises(SystemExit, match="written by a run of 2 processes; resume it with as many"):
        dog_emotion.main(["train", *common, "--batch-size", "8", "--out", str(tmp_path / "resumed"), "--resume"])


def test_an_error_on_rank_0_alone_ends_the_job_with_its_message(tmp_path):
    # rank 0 reads the data first while rank 1 waits at a barrier; rank 0's error must end the job
    # (torchrun stops rank 1) and name the path, not leave rank 1 waiting out the 3-hour timeout
    missing = tmp_path / "no-such-folder"
    done = run_train(2, "--data", str(missing), "--out", str(tmp_path / "out"), *TINY, check=False)
    assert done.returncode != 0
    assert "error:" in done.stderr and str(missing) in done.stderr
    assert not (tmp_path / "out" / "last.ckpt").exists()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """The same steps as 2 processes x batch 16, 1 process x batch 32, and 1 x 32 in another order."""
    out = tmp_path_factory.mktemp("ddp")
    runs = {}
    for name, nproc, batch, order in (("two", 2, 16, 0), ("one", 1, 32, 0), ("other_order", 1, 32, 1)):
        torchrun(nproc, "tests/ddp_worker.py", "--batch-size", str(batch), "--steps", "6",
                 "--order-seed", str(order), "--out", str(out / f"{name}.pt"))
        runs[name] = torch.load(out / f"{name}.pt", weights_only=True)
    return runs


def test_both_ranks_hold_identical_weights_after_every_step(worker_runs):
    for mode in ("batch_stats", "frozen_bn"):
        assert worker_runs["two"][mode]["identical_after_each_step"] == [True] * 6


def test_two_processes_average_gradients_like_one_process_with_twice_the_batch(worker_runs):
    # BatchNorm frozen, dropout off, same pixels: 2 x 16 is 1 x 32 up to float summation order
    two, one = worker_runs["two"]["frozen_bn"], worker_runs["one"]["frozen_bn"]
    assert all(relative(g2, g1) < 1e-5 for g2, g1 in zip(two["grads"], one["grads"]))
    update = torch.cat([(one["params"][k] - one["init"][k]).flatten() for k in one["params"]])
    gap = torch.cat([(two["params"][k] - one["params"][k]).flatten() for k in one["params"]])
    assert gap.norm() < 1e-4 * update.norm()


def test_batch_statistics_are_what_separates_two_processes_from_one(worker_runs):
    # in training mode each rank normalises by its own 16 images' statistics, not all 32's (no
    # SyncBatchNorm on CPUs): the first step's gradient then points along the 1-process one
    # (measured cosine 0.44) without equalling it, and far closer than a different batch's (0.02)
    two, one, other = (worker_runs[n]["batch_stats"]["grads"][0] for n in ("two", "one", "other_order"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(two, one, 0) > 0.3 and cos(two, one, 0) > cos(other, one, 0) + 0.2
    assert relative(two, one) > 1e-3, "batch statistics per rank should make a visible difference"
