"""Plumbing every command in this repo shares (train/, export/ and benchmark/ import it from here):
paths, seeding, threads, the error boundary, temporary files and atomic writes, progress bars,
accuracy, tables."""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import math
import os
import platform
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"
SHIPPED_WEIGHTS = REPO_ROOT / "weights" / "dog_emotion.pkl"   # the model that ships to phones
RUN_LOG = REPO_ROOT / "docs" / "runs.jsonl"   # one row per training run of the search: docs/results.md's tables


class ProjectError(Exception):
    """A problem with what the user gave (a file, a folder, an option), stated so that they can fix
    it: the message names the thing and the problem. Library code raises subclasses of it; the
    commands turn it into one line (`command_errors`)."""


class DeviceError(ProjectError):
    """A device that was asked for is not there."""


class CommandFailed(SystemExit):
    """Exit status 2 after the message went to stderr; str() is the message (for tests and callers)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextmanager
def command_errors():
    """The one error boundary of every command's main(): a ProjectError becomes
    `error: <file or option>: <problem>` on stderr and exit status 2, with no traceback; so does a
    file system error that names its path (a full disk, an unwritable folder, a file where a folder
    was asked for), and Ctrl-C. A reader that closed the pipe (`predict ... | head`) ends it quietly."""
    try:
        yield
        sys.stdout.flush()   # here, not at exit, where a closed pipe's error could no longer be caught
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")   # the interpreter's last flush would raise again
        raise SystemExit(0) from None
    except (ProjectError, OSError, KeyboardInterrupt) as e:
        if isinstance(e, OSError) and not e.filename:
            raise   # not about a path the user gave: a bug to see whole
        message = ("error: stopped by the user (Ctrl-C); what was finished is kept, and the same command "
                   "goes on from there where it can resume" if isinstance(e, KeyboardInterrupt) else
                   f"error: {e.filename}: {e.strerror}" if isinstance(e, OSError) else f"error: {e}")
        print(message, file=sys.stderr)
        raise CommandFailed(message) from None


def fraction(text: str) -> float:
    """argparse type for shares and probabilities: a float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def real(low: float, high: float = float("inf"), low_open: bool = False, high_open: bool = False):
    """argparse type: a finite float within [low, high] (an open end excludes its bound)."""
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"{text} is outside {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        return value
    parse.__name__ = "number"
    return parse


def device_name(text: str) -> str:
    """argparse type: auto, cpu, mps, cuda or cuda:N (whether it is there is checked when it is used)."""
    try:
        if text != "auto":
            torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:N or mps)") from None
    return text


def at_least(low: int, high: int | None = None):
    """argparse type: an integer of at least `low` (and at most `high`, when given)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is less than {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is more than {high}")
        return value
    parse.__name__ = f"integer >= {low}" if high is None else f"integer in {low}..{high}"
    return parse


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global RNG and return a private generator seeded alike (e.g. for the data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20), "MALLOC_TRIM_THRESHOLD_": (-1, (1 << 31) - 1),
                   "MALLOC_TOP_PAD_": (-2, 256 << 20)}   # env name: (mallopt parameter, value)


def keep_freed_memory() -> bool:
    """The Makefile's glibc allocator settings, from inside the process where the environment did
    not set them: glibc otherwise hands large freed buffers back to the kernel and PyTorch asks
    for them again every step (page faults; docs/training.md, "Memory allocator"). Same results;
    glibc on Linux only. True when they are in effect."""
    if any(name in os.environ for name in MALLOC_SETTINGS):
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.values())


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto': the first of CUDA and MPS that is there, else the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device here (torch {torch.__version__}); use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available here; use cpu or auto")
    return device


def warn(msg: str) -> None:
    # tqdm.write keeps warnings from tearing an active progress bar apart
    tqdm.write(f"warning: {msg}", file=sys.stderr)


def progress(iterable=None, enabled: bool = True, **kwargs):
    """A tqdm bar that disappears in non-interactive logs unless asked for (PROGRESS=1)."""
    disable = not enabled or not (sys.stderr.isatty() or os.environ.get("PROGRESS") == "1")
    return tqdm(iterable, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


@contextmanager
def exclusive(lock: Path, busy: str, wait: bool = False):
    """One writer at a time: an flock on `lock`, released when the holder ends, even killed. A second
    holder waits (`wait`) or gets a ProjectError with the `busy` message."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProjectError(busy) from None
        yield


def temp_path(final: str | Path, folder: bool = False) -> Path:
    """A new, empty temporary file (or folder) beside `final`, named after it, to be renamed onto
    it once complete: same file system, so the rename is atomic. The caller removes it on failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    if folder:   # mkdtemp's 0700 and mkstemp's 0600 would make every output private: the user's umask instead
        tmp = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.chmod(tmp, 0o777 & ~umask)
        return Path(tmp)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def atomic_write(path: str | Path, write_fn, mode: str = "wb") -> Path:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def accuracy(scores, labels) -> float:
    """Top-1 accuracy in percent of logits (N, C) or predicted labels (N,); torch or numpy."""
    if len(labels) == 0:
        return float("nan")
    pred = scores.argmax(1) if scores.ndim == 2 else scores
    return 100.0 * float((pred == labels).sum()) / len(labels)


def percent(value: float | None, digits: int = 1) -> str:
    """An accuracy for people: 'n/a' where there was nothing to measure (a class with no images)."""
    return "n/a" if value is None else f"{value:.{digits}f}%"


def save_torch(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def save_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def markdown_table(rows: list[dict], columns: list[str] | dict[str, str] | None = None) -> str:
    """Rows of dicts as a GitHub Markdown table; floats get 4 significant digits. `columns` picks
    the keys, or maps each key to its column title (units belong in titles, not in keys)."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    titles = columns if isinstance(columns, dict) else {c: c for c in columns}

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(titles.values()) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in titles) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def cpu_description() -> str:
    """The CPU and the instruction sets that change int8 kernels: AVX2, AVX-512, VNNI, ARM dot product."""
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags |= set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    except OSError:
        pass
    found = {"AVX2": "avx2" in flags, "AVX-512": "avx512f" in flags,
             "VNNI": bool({"avx512_vnni", "avx_vnni"} & flags), "ARM dot product": "asimddp" in flags}
    return f"{model} ({platform.machine()}; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in found.items()) + ")"
