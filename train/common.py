"""Helpers every command in this repo shares: seeding, threads, atomic writes, progress bars."""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global RNG and return a private generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def warn(msg: str) -> None:
    # tqdm.write keeps warnings from tearing an active progress bar apart
    tqdm.write(f"warning: {msg}", file=sys.stderr)


def progress(iterable=None, **kwargs):
    """A tqdm bar that disappears in non-interactive logs unless asked for (PROGRESS=1)."""
    disable = not (sys.stderr.isatty() or os.environ.get("PROGRESS") == "1")
    return tqdm(iterable, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def atomic_write(path: str | Path, write_fn, mode: str = "wb") -> Path:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every output private
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def save_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a GitHub Markdown table; floats get 4 significant digits."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
