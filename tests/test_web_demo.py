"""The browser demo in a real headless Chromium (Debian's, driven by Playwright): it loads the
exported models offline, classifies photos like Python does, and survives bad files.

Needs /usr/bin/chromium and web/node_modules (`npm ci` in web/); .ci/run installs both, so in CI
(CI=true) their absence is a failure, elsewhere a skip that says what to install."""
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_serve
from export.formats import web_files
from export.runtimes import FORMATS, make_runner
from train.classifier import app_input
from train.checkpoint import load_weights
from train.common import REPO_ROOT, SHIPPED_WEIGHTS
from train.data import load_input

pytestmark = pytest.mark.slow
WEB = REPO_ROOT / "web"
CHROMIUM = Path("/usr/bin/chromium")


def require(ok: bool, what: str):
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing in CI: .ci/run must install it")
        pytest.skip(f"{what} is missing (apt-get install chromium; cd web && npm ci)")


@pytest.fixture(scope="module")
def page(exported, tmp_path_factory):
    require(CHROMIUM.is_file(), str(CHROMIUM))
    require((WEB / "node_modules" / "onnxruntime-web").is_dir(), "web/node_modules")
    pw = pytest.importorskip("playwright.sync_api")
    out, _, _ = exported
    root = tmp_path_factory.mktemp("web")
    for name in ("index.html", "app.js", "style.css"):
        shutil.copy(WEB / name, root / name)
    runtime = root / "node_modules" / "onnxruntime-web" / "dist"   # copied: the server never follows a link
    runtime.mkdir(parents=True)
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        shutil.copy(WEB / "node_modules" / "onnxruntime-web" / "dist" / name, runtime / name)
    (root / "models").mkdir()
    for name in web_files():   # what `make demo` serves: the app forms and the metadata record
        shutil.copy(out / name, root / "models" / name)
    server = load_serve().make_server("127.0.0.1", 0, root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        pg = browser.new_page()
        requests = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(f"http://127.0.0.1:{server.server_port}/?runs=1")
        pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
        pg.requests = requests
        yield pg
        browser.close()
    server.shutdown()


def classify(page, path: Path, model: str = "fp32") -> dict:
    page.select_option("#model", model)
    page.evaluate("document.getElementById('result').dataset.json = ''")
    page.set_input_files("#file", str(path))
    page.wait_for_function("(name) => { const j = document.getElementById('result').dataset.json;"
                           " return j !== '' && JSON.parse(j).file === name; }", arg=path.name, timeout=30_000)
    return json.loads(page.get_attribute("#result", "data-json"))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_wasm_runtime_matches_python_onnxruntime_on_the_same_crop(page, exported, real_data):
    """The page's app-form files in WebAssembly and in Python onnxruntime, fed the same uint8 crop."""
    out, _, _ = exported
    model, ckpt = load_weights(SHIPPED_WEIGHTS)
    runs = {key: make_runner(fmt, out / FORMATS[fmt].file) for key, fmt in (("fp32", "onnx_app"), ("int8", "onnx_app_int8"))}
    photos = [p for c in ckpt["classes"] for p in sorted((real_data / "test" / c).iterdir())[:6]]   # 24, all classes
    worst = {"fp32": 0.0, "int8": 0.0}
    for path in photos:
        crop = app_input(Image.open(path).convert("RGB"), model.config.input_size).numpy()
        for key, run in runs.items():
            got = np.array(page.evaluate("([v, k]) => window.probabilitiesOf(v, k)", [crop.ravel().tolist(), key]))
            worst[key] = max(worst[key], float(np.abs(got - np.exp(run(crop)[0])).max()))
    print(f"WASM vs Python onnxruntime, same uint8 crop, {len(photos)} photos: max |probability diff| {worst}")
    assert worst["fp32"] <= 1e-4, worst


def test_page_classifies_every_test_photo_like_python(page, real_data, tmp_path):
    """End to end through the file input and the page's own preprocessing."""
    from matplotlib import cbook
    model, ckpt = load_weights(SHIPPED_WEIGHTS)
    run = make_runner("eager", model=model)
    temperature = ckpt["calibration"]["temperature"]   # folded into the exported files: `predict` applies it too
    photos = sorted(p for c in ckpt["classes"] for p in (real_data / "test" / c).iterdir())
    big = tmp_path / "big_3000px.jpg"                      # a large photo, made from a test image
    Image.open(photos[0]).convert("RGB").resize((3000, 2250)).save(big, quality=90)
    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    sideways = tmp_path / "sideways.jpg"                   # stored rotated, EXIF orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(photos[1]).convert("RGB").transpose(Image.ROTATE_90).save(sideways, exif=exif)
    extras = [big, hopper, sideways]
    stats = {}
    # FP32 on all 400 test photos and the extras; INT8, reported separately, on every 4th photo
    for key, files in (("fp32", photos + extras), ("int8", photos[::4] + extras)):
        same, gap = 0, 0.0
        for path in files:
            got = classify(page, path, key)
            assert got["file"] == path.name and got["model"] == key and got["ms"] > 0
            ref = softmax(run(load_input(path, model.config.input_size).numpy())[0] / temperature)
            same += got["label"] == ckpt["classes"][int(ref.argmax())]
            gap = max(gap, max(abs(got["probabilities"][c] - float(p)) for c, p in zip(ckpt["classes"], ref)))
        stats[key] = {"photos": len(files), "agreement_pct": round(100 * same / len(files), 2),
                      "max_probability_gap": round(gap, 4)}
    print(f"browser (file input, JS preprocessing) vs Python predict: {stats}")
    assert stats["fp32"]["agreement_pct"] >= 95, stats
    assert all(u.startswith("http://127.0.0.1") for u in page.requests), "the page must load nothing from elsewhere"


def test_bad_file_then_recovery_and_screenshot(page, real_data, tmp_path):
    photo = sorted((real_data / "test" / "happy").iterdir())[0]
    (tmp_path / "notes.jpg").write_text("not an image")
    bad = classify(page, tmp_path / "notes.jpg")
    assert set(bad) == {"file", "error"} and "notes.jpg" in bad["error"]
    assert "error" in page.get_attribute("#status", "class")
    again = classify(page, photo)
    assert again["label"] in again["probabilities"] and again["model"] == "fp32"
    shots = REPO_ROOT / "artifacts" / "web"
    shots.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 390, "height": 760})   # a phone-sized screen
    page.screenshot(path=str(shots / "demo.png"))
    assert (shots / "demo.png").stat().st_size > 10_000
