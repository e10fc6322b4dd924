"""Hostile and odd image files: every one is read correctly or refused as a BadImage naming it,
in every command, and never crashes a run. Includes a property-based fuzz test of the loader."""
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_image
from train import dog_emotion
from train.data import BadImage, load_folder, load_rgb


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header rewritten to claim width x height."""
    buf = io.BytesIO()
    make_image(0, size=(64, 64)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_decompression_bombs_are_refused_by_name(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    with pytest.raises(BadImage, match=r"bomb.png: .*400 MP to decode, over the limit of 50 MP"):
        load_rgb(tmp_path / "bomb.png")
    (tmp_path / "bomb.jpg").write_bytes(jpeg_claiming(60_000, 60_000))
    with pytest.raises(BadImage, match=r"bomb.jpg: "):
        load_rgb(tmp_path / "bomb.jpg", min_side=126)


def test_large_jpeg_decodes_in_draft_mode_under_the_pixel_cap(tmp_path, monkeypatch):
    make_image(3, size=(4000, 3000)).save(tmp_path / "big.jpg", quality=90)   # a 12 MP photo
    monkeypatch.setenv("DOG_EMOTION_MAX_PIXELS", "2000000")
    img = load_rgb(tmp_path / "big.jpg", min_side=126)                       # 1/8 scale: 500 x 375
    assert img.size == (500, 375) and img.mode == "RGB"
    with pytest.raises(BadImage, match="12 MP to decode, over the limit of 2 MP"):
        load_rgb(tmp_path / "big.jpg")                                        # no hint: full size


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    img = np.asarray(load_rgb(tmp_path / "deep.png"))
    expected = (ramp.astype(np.int64) * 255 // 65535).astype(np.uint8)
    assert np.array_equal(img[..., 0], expected) and np.array_equal(img[..., 1], img[..., 2])
    assert (img == 255).mean() < 0.01   # the clipping bug made 99.7% of it white


def test_a_pil_image_goes_through_the_same_door_as_its_file(tmp_path):
    """Classifier.predict of a PIL image and of the file it was saved as: the same rules (alpha
    composited on white, 16-bit scaled, sizes refused) and the same probabilities."""
    from train.classifier import Classifier
    from train.common import SHIPPED_WEIGHTS
    classifier = Classifier(SHIPPED_WEIGHTS)
    rgba = np.dstack([np.asarray(make_image(4, size=(160, 120))), np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))])
    deep = (np.arange(120 * 160, dtype=np.uint32).reshape(120, 160) * 3).astype(np.uint16)
    for name, img in (("rgba.png", Image.fromarray(rgba, "RGBA")), ("deep.png", Image.fromarray(deep))):
        img.save(tmp_path / name)
        from_file, from_image = classifier.predict(tmp_path / name)[0], classifier.predict(Image.open(tmp_path / name))[0]
        assert from_image["probabilities"] == from_file["probabilities"], name
    for size, reason in (((1, 1), "too small"), ((0, 0), "too small"), ((100_000, 40), "more than 10:1")):
        row = classifier.predict(Image.new("RGB", size))[0]
        assert reason in row["error"] and "label" not in row, size


def test_formats_pil_cannot_read_are_named(tmp_path):
    (tmp_path / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    with pytest.raises(BadImage, match="photo.heic: a HEIC file, which PIL cannot decode"):
        load_rgb(tmp_path / "photo.heic")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(BadImage, match="folder.jpg: not a file"):
        load_rgb(tmp_path / "folder.jpg")


# EXIF orientation n: how to store an upright image so that applying tag n makes it upright again
STORE_FOR_ORIENTATION = {
    1: lambda im: im, 2: lambda im: im.transpose(Image.FLIP_LEFT_RIGHT), 3: lambda im: im.transpose(Image.ROTATE_180),
    4: lambda im: im.transpose(Image.FLIP_TOP_BOTTOM), 5: lambda im: im.transpose(Image.TRANSPOSE),
    6: lambda im: im.transpose(Image.ROTATE_90), 7: lambda im: im.transpose(Image.TRANSVERSE),
    8: lambda im: im.transpose(Image.ROTATE_270),
}


def save_with_orientation(img: Image.Image, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    STORE_FOR_ORIENTATION[orientation](img).save(path, "PNG", exif=exif)


def test_every_exif_orientation_reads_upright_and_predicts_the_same(tmp_path, capsys):
    upright = make_image(11, size=(96, 64))
    upright.paste((255, 0, 0), (0, 0, 30, 20))   # a marker in the top-left corner
    paths = []
    for n in STORE_FOR_ORIENTATION:
        paths.append(tmp_path / f"o{n}.png")
        save_with_orientation(upright, paths[-1], n)
        assert np.array_equal(np.asarray(load_rgb(paths[-1])), np.asarray(upright)), f"orientation {n}"
    from train.checkpoint import save_weights
    from mobile_model import build_model
    save_weights(build_model("nano"), ["angry", "happy", "relaxed", "sad"], tmp_path / "w.pkl")
    rows = dog_emotion.cmd_predict(dog_emotion.parse_args(
        ["predict", *map(str, paths), "--weights", str(tmp_path / "w.pkl")]))
    assert len({json.dumps(r["probabilities"]) for r in rows}) == 1


def test_predict_answers_every_readable_file_and_names_the_rest(tmp_path, capsys):
    from train.checkpoint import save_weights
    from mobile_model import build_model
    save_weights(build_model("nano"), ["angry", "happy", "relaxed", "sad"], tmp_path / "w.pkl")
    make_image(1, size=(80, 80)).save(tmp_path / "a.jpg")
    (tmp_path / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    make_image(2, size=(80, 80)).save(tmp_path / "b.png")
    files = [str(tmp_path / n) for n in ("a.jpg", "bomb.png", "b.png", "missing.jpg")]
    with pytest.raises(SystemExit, match="2 of 4 images could not be read"):
        dog_emotion.main(["predict", *files, "--json", "--weights", str(tmp_path / "w.pkl")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in lines] == files
    assert set(lines[0]) == {"file", "label", "probabilities"} and set(lines[2]) == set(lines[0])
    assert "over the limit" in lines[1]["error"] and "file not found" in lines[3]["error"]


def test_a_split_with_hostile_files_loads_the_rest(tmp_path, capsys):
    d = tmp_path / "test" / "sad"
    d.mkdir(parents=True)
    make_image(1).save(d / "good.jpg")
    (d / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    (d / "huge.jpg").write_bytes(jpeg_claiming(60_000, 60_000))
    split = load_folder(tmp_path / "test", ["sad"], 72)
    assert [p.split("/")[-1] for p in split.paths] == ["good.jpg"] and len(split.skipped) == 2
    assert "bomb.png" in capsys.readouterr().err


# ---------------------------------------------------------------- fuzzing

def seed_files() -> dict[str, bytes]:
    files = {}
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"), ("GIF", "P")):
        buf = io.BytesIO()
        make_image(5, size=(64, 48), mode=mode).save(buf, fmt)
        files[fmt] = buf.getvalue()
    return files


SEEDS = seed_files()


def mutate(data: bytes, kind: str, pos: int, value: int) -> bytes:
    pos = pos % max(1, len(data))
    if kind == "truncate":
        return data[:pos]
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (value or 1)]) + data[pos + 1:]
    if kind == "zeros":
        return data[:pos] + b"\x00" * (value + 1) + data[pos + value + 1:]
    if kind == "huge_size":  # overwrite 4 bytes with a large big-endian number (header fields)
        return data[:pos] + struct.pack(">I", 0x7FFF0000 | value) + data[pos + 4:]
    return b""


def test_fuzzed_files_load_as_rgb_or_raise_bad_image(tmp_path):
    tried = []   # what each example tried: counted and named below (pytest -s shows it)

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(fmt=st.sampled_from(sorted(SEEDS)), kind=st.sampled_from(["truncate", "flip", "zeros", "huge_size", "empty"]),
           pos=st.integers(0, 10_000), value=st.integers(0, 255))
    def one_file(fmt, kind, pos, value):
        path = tmp_path / f"fuzz.{fmt.lower()}"
        path.write_bytes(mutate(SEEDS[fmt], kind, pos, value))
        tried.append((fmt, kind))
        t0 = time.perf_counter()
        try:
            img = load_rgb(path, min_side=126)
            assert img.mode == "RGB" and min(img.size) >= 32
        except BadImage as e:
            assert str(e).startswith(str(path))
        assert time.perf_counter() - t0 < 2.0, f"{fmt} {kind} at {pos}: too slow"

    one_file()
    print(f"fuzzed {len(tried)} files: " + ", ".join(f"{f}/{k}" for f, k in sorted(set(tried))[:6]) + ", ...")
    assert len(tried) >= 300


def test_training_on_a_data_set_with_hostile_files_skips_them_and_lists_them(tmp_path, capsys):
    from conftest import write_split_root
    root = write_split_root(tmp_path / "data")
    (root / "train" / "sad" / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    (root / "val" / "happy" / "folder.jpg").mkdir()               # a folder is not a file: not listed at all
    (root / "test" / "angry" / "photo.jpg").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    out = tmp_path / "run"
    dog_emotion.main(["train", "--teacher", "--train-on", "train", "--data", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                      "--model", "nano", "--input-size", "32", "--batch-size", "8", "--epochs", "1", "--threads", "1"])
    listed = (out / "skipped.txt").read_text().splitlines()
    assert len(listed) == 2 and "bomb.png: " in listed[0] + listed[1] and "HEIC" in listed[0] + listed[1]
    assert "skipped 2 unreadable files" in capsys.readouterr().out


def test_unreadable_and_huge_files_are_skipped_by_name_in_evaluate(tmp_path, capsys, monkeypatch):
    """The cache key reads every file before the decoder: in chunks (a sparse 1 GB .jpg costs time,
    not memory) and past a file it may not read; the decoder then names both and the rest evaluates."""
    from conftest import write_split_root
    from train import data as data_module
    root = write_split_root(tmp_path / "d")
    big, locked = root / "test" / "sad" / "big.jpg", root / "test" / "happy" / "locked.jpg"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    make_image(99).save(locked)
    real_open, real_image_open = open, Image.open

    def refuse(path):   # chmod 000 as a non-root user (tests here may run as root, who reads anything)
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))

    def no_permission(path, *a, **k):
        refuse(path)
        return real_open(path, *a, **k)

    def no_permission_pil(fp, *a, **k):
        refuse(fp)
        return real_image_open(fp, *a, **k)

    monkeypatch.setattr(data_module, "open", no_permission, raising=False)
    monkeypatch.setattr(Image, "open", no_permission_pil)
    run = tmp_path / "run"
    dog_emotion.main(["train", "--data", str(root), "--out", str(run), "--epochs", "1", "--teacher", "--model", "nano",
                      "--input-size", "32", "--batch-size", "8", "--threads", "1", "--cache-dir", str(tmp_path / "c")])
    capsys.readouterr()
    dog_emotion.main(["evaluate", "--data", str(root), "--weights", str(run / "dog_emotion.pkl")])
    out = capsys.readouterr()
    said = out.out + out.err
    assert f"{big}: not an image PIL can read" in said and f"{locked}: cannot be read (permission denied)" in said
    assert json.loads(out.out.strip().splitlines()[-1])["n"] == 16   # the 16 readable test photos

