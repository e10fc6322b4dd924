"""The hostile inputs that could cost the most memory, each in one fresh process whose peak resident
memory is read back: every one is refused (or, for the largest image under the pixel cap, decoded)
within 1 GB and a few seconds."""
import json
import subprocess
import sys
import textwrap

import pytest

from train.common import REPO_ROOT

CHILD = textwrap.dedent(r"""
    import gzip, json, re, struct, sys, time, zlib
    from pathlib import Path
    from PIL import Image
    from train.common import ProjectError
    from train.checkpoint import load_weights
    from train.data import load_rgb
    from train.mnist_scratch import MAX_IDX_BYTES, read_idx
    from train.recipes import read_recipe


    def png_claiming(w, h):
        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * (w * 3 + 1) * 100)) + chunk(b"IEND", b""))


    def peak_mb():
        # VmHWM: this process image's own high-water mark. getrusage's ru_maxrss would carry over the
        # parent's (pytest's) peak through fork and exec.
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


    def sparse(path, size):
        with open(path, "wb") as f:
            f.truncate(size)

    root, case = Path(sys.argv[1]), sys.argv[2]
    # case: (write its file, read it); 49 MP is just under the 50 MP cap: decoded, then scaled down
    CASES = {
        "image under the pixel cap": (lambda: Image.new("RGB", (7000, 7000), (90, 120, 30)).save(tmp / "f", "PNG", compress_level=1),
                                      lambda: load_rgb(tmp / "f", min_side=126)),
        "image claiming 400 MP": (lambda: (tmp / "f").write_bytes(png_claiming(20000, 20000)), lambda: load_rgb(tmp / "f")),
        "weights file of 300 MB of zeros": (lambda: sparse(tmp / "f", 300 * 2**20), lambda: load_weights(tmp / "f")),
        "weights /dev/zero": (lambda: None, lambda: load_weights("/dev/zero")),
        "recipe nested 100k deep": (lambda: (tmp / "f").write_bytes(b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
                                    lambda: read_recipe(tmp / "f")),
        "recipe /dev/zero": (lambda: None, lambda: read_recipe(Path("/dev/zero"))),
        "IDX gzip inflating past the bound": (lambda: (tmp / "f").write_bytes(gzip.compress(b"\0" * (MAX_IDX_BYTES + 16), 1)),
                                              lambda: read_idx(tmp / "f", 1)),
    }
    if case == "write all":  # written by one process, each read by a fresh one: its peak is the reading's alone
        for i, (write, _) in enumerate(CASES.values()):
            tmp = root / str(i)
            tmp.mkdir()
            write()
        sys.exit(0)
    tmp = root / str(list(CASES).index(case))
    read = CASES[case][1]
    t0 = time.perf_counter()
    try:
        read()
        outcome = "loaded"
    except ProjectError as e:
        outcome = f"refused: {e}"
    print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - t0,
                      "peak_mb": peak_mb()}))
""")



def child(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    child(root, "write all")
    return root


@pytest.mark.parametrize("case, loads", [
    ("image under the pixel cap", True), ("image claiming 400 MP", False), ("weights file of 300 MB of zeros", False),
    ("weights /dev/zero", False), ("recipe nested 100k deep", False), ("recipe /dev/zero", False),
    ("IDX gzip inflating past the bound", False),
])
def test_the_costliest_inputs_stay_within_1_gb(hostile_files, case, loads):
    r = json.loads(child(hostile_files, case).stdout.splitlines()[-1])
    print(f"{case}: {r['peak_mb']:.0f} MB peak, {r['seconds']:.2f} s")
    assert (r["outcome"] == "loaded") == loads, r["outcome"]
    assert r["peak_mb"] < 1024, f"{case}: peak resident memory {r['peak_mb']:.0f} MB"
    assert r["seconds"] < 10, f"{case}: {r['seconds']:.1f} s"
