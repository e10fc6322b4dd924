"""Small generated data sets for the tests: nothing here needs the real data or the network."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["angry", "happy", "relaxed", "sad"]
# the tiny training every test that trains uses: no teacher, on train, nano at 32 px, one thread
TINY = ["--teacher", "--train-on", "train", "--model", "nano", "--input-size", "32", "--batch-size", "8", "--warmup-epochs", "1",
        "--threads", "1"]
REAL_DATA = Path(__file__).resolve().parent.parent / "data" / "dog_emotion"


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """`make test` runs the suite on two workers (pytest-xdist, --dist loadgroup): every test that
    reads the shared export goes to one of them, so that export, the suite's longest setup, is made once."""
    for item in items:
        if "exported" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("export"))


def load_serve():
    """web/serve.py as a module (web/ is a folder of the page, not a package)."""
    spec = importlib.util.spec_from_file_location("serve", Path(__file__).resolve().parent.parent / "web" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    return serve


def make_image(seed: int, size=(48, 40), mode: str = "RGB") -> Image.Image:
    """A random but class-free picture: smooth colour blobs so resizing does not destroy it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BILINEAR)
    return img.convert(mode) if mode != "RGB" else img


def write_split_root(root: Path, per_class: int = 4, splits=("train", "val", "test"), size=(48, 40)) -> Path:
    seed = 0
    for split in splits:
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(seed, size).save(d / f"{c}_{i}.jpg", quality=90)
                seed += 1
    return root


def litert_installed() -> bool:
    """Whether the LiteRT converter's environment (.venv-litert, `make venv-litert`) is there.
    CI installs it and sets REQUIRE_LITERT=1, so that there a missing one fails instead of
    skipping the .tflite checks."""
    from export.export import LITERT_PYTHON
    if LITERT_PYTHON.is_file():
        return True
    if os.environ.get("REQUIRE_LITERT"):
        pytest.fail(f"REQUIRE_LITERT is set but the LiteRT converter ({LITERT_PYTHON}) is not installed")
    return False


@pytest.fixture
def split_root(tmp_path) -> Path:
    return write_split_root(tmp_path / "data")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "test").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA} (run `make data` with ../shared beside the repo)")
    return REAL_DATA


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`make export` of the shipped weights, once per test session: (folder, parity rows, info)."""
    from export import export as exporter
    from train.common import SHIPPED_WEIGHTS
    if not (REAL_DATA / "test").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA}: export parity is measured on its test split")
    out = tmp_path_factory.mktemp("export")
    rows, info = exporter.run_export(str(SHIPPED_WEIGHTS), str(REAL_DATA), out, calib_count=64, seed=0)
    return out, rows, info
