import csv
import hashlib
import io

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, make_image, write_split_root
from train.data import (BadImage, DataError, augment_batch, load_folder, load_for_model, load_rgb, load_splits,
                        preprocess, resize_center_crop, storage_size)
from train.prepare_data import dhash_bits, near_duplicate_groups, prepare


def write_bad_cases(folder):
    """One file per bad-input case in class folders of `folder`; returns (usable, skipped) names."""
    d = folder / "angry"
    d.mkdir(parents=True)
    make_image(1).save(d / "good.jpg")
    make_image(2, mode="L").save(d / "grey.png")
    make_image(3, mode="RGBA").save(d / "rgba.png")
    make_image(4, mode="CMYK").save(d / "cmyk.jpg")
    make_image(5, mode="P").save(d / "palette.gif")
    make_image(6).save(d / "webp_named.jpg", format="WEBP")
    buf = io.BytesIO()
    make_image(7, size=(200, 200)).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (d / "notes.jpg").write_text("a text file with an image name")
    (d / "readme.txt").write_text("not an image extension at all")
    make_image(8, size=(10, 12)).save(d / "tiny.png")
    (folder / "happy").mkdir()  # empty class folder
    make_image(9).save(folder / "happy" / ".hidden.jpg")  # hidden files are ignored, not images
    usable = {"good.jpg", "grey.png", "rgba.png", "cmyk.jpg", "palette.gif", "webp_named.jpg"}
    skipped = {"truncated.jpg", "corrupt.jpg", "notes.jpg", "tiny.png"}
    return usable, skipped


def test_every_bad_input_is_used_or_skipped_by_name(tmp_path, capsys):
    usable, skipped = write_bad_cases(tmp_path / "train")
    split = load_folder(tmp_path / "train", ["angry", "happy"], 72)
    err = capsys.readouterr().err
    assert {p.split("/")[-1] for p in split.paths} == usable
    assert split.images.shape == (len(usable), 3, 72, 72) and split.images.dtype == torch.uint8
    assert {s.split(":")[0].split("/")[-1] for s in split.skipped} == skipped
    for name in skipped | {"readme.txt"}:
        assert name in err, f"no warning names {name}"
    assert "happy: class folder is empty" in err
    assert f"skipped {len(skipped)} of" in err


def test_conversions_are_correct(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((5, 5)) == (255, 255, 255)  # composited on white
    Image.new("L", (40, 40), 77).save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").getpixel((5, 5)) == (77, 77, 77)
    Image.new("CMYK", (40, 40), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg").mode == "RGB"
    with pytest.raises(BadImage, match="too small"):
        Image.new("RGB", (31, 100)).save(tmp_path / "s.png")
        load_rgb(tmp_path / "s.png")


def test_class_missing_from_one_split_and_missing_root(tmp_path, capsys):
    root = write_split_root(tmp_path / "d", per_class=2)
    for f in (root / "val" / "sad").iterdir():
        f.unlink()
    (root / "val" / "sad").rmdir()
    data = load_splits(root, 40)
    assert data["val"].classes == CLASSES and set(data["val"].labels.tolist()) == {0, 1, 2}
    assert "val/sad: class folder missing" in capsys.readouterr().err
    with pytest.raises(DataError, match="not found at .*Kaggle"):
        load_splits(tmp_path / "nowhere", 40)
    with pytest.raises(DataError, match="prepare-data"):
        load_splits(root / "train", 40)  # a flat class folder is not a split root


def cache_entries(cache):
    return sorted({f.stem for f in cache.iterdir()})


def test_cache_is_reused_and_rebuilt_when_data_changes(tmp_path):
    root = write_split_root(tmp_path / "d", per_class=2, splits=("train",))
    cache = tmp_path / "cache"
    first = load_folder(root / "train", CLASSES, 40, cache)
    assert len(cache_entries(cache)) == 1 and {f.suffix for f in cache.iterdir()} == {".pt", ".u8"}
    again = load_folder(root / "train", CLASSES, 40, cache)
    assert torch.equal(first.images, again.images) and len(cache_entries(cache)) == 1
    Image.new("RGB", (48, 40), (0, 255, 0)).save(root / "train" / "happy" / "happy_0.jpg")
    changed = load_folder(root / "train", CLASSES, 40, cache)
    assert len(cache_entries(cache)) == 2, "changed bytes must give a new cache key"
    i = changed.paths.index(str(root / "train" / "happy" / "happy_0.jpg"))
    assert changed.images[i, 1].float().mean() > 200 and changed.images[i, 0].float().mean() < 50


def test_a_copy_of_the_same_photos_elsewhere_gets_its_own_paths_from_the_cache(tmp_path):
    import shutil
    first = write_split_root(tmp_path / "first")
    shutil.copytree(first, tmp_path / "second")
    one = load_folder(first / "test", CLASSES, 36, tmp_path / "cache")
    shutil.rmtree(first)   # the copy the cache was built from is gone
    two = load_folder(tmp_path / "second" / "test", CLASSES, 36, tmp_path / "cache")
    assert two.key == one.key and len(list((tmp_path / "cache").glob("*.pt"))) == 1   # one cache serves both
    assert two.paths == [p.replace(str(first), str(tmp_path / "second")) for p in one.paths]
    assert all(Path(p).is_file() for p in two.paths)


def test_memory_mapped_cache_equals_in_memory_decoding(tmp_path):
    usable, _ = write_bad_cases(tmp_path / "train")  # skipped files must not shift the rows
    cache = tmp_path / "cache"
    in_memory = load_folder(tmp_path / "train", ["angry", "happy"], 48)
    streamed = load_folder(tmp_path / "train", ["angry", "happy"], 48, cache)
    mapped = load_folder(tmp_path / "train", ["angry", "happy"], 48, cache)  # from the file alone
    (images_file,) = cache.glob("*.u8")
    assert images_file.stat().st_size == len(usable) * 3 * 48 * 48
    for split in (streamed, mapped):
        assert torch.equal(split.images, in_memory.images) and torch.equal(split.labels, in_memory.labels)
        assert split.paths == in_memory.paths and split.skipped == in_memory.skipped
    mapped.images[0].zero_()  # copy-on-write: the cache file is never changed through the tensor
    assert torch.equal(load_folder(tmp_path / "train", ["angry", "happy"], 48, cache).images, in_memory.images)
    # an images file cut short (an interrupted write) is decoded again, not read as garbage
    images_file.write_bytes(images_file.read_bytes()[:1000])
    assert torch.equal(load_folder(tmp_path / "train", ["angry", "happy"], 48, cache).images, in_memory.images)
    assert images_file.stat().st_size == len(usable) * 3 * 48 * 48


@pytest.mark.parametrize("damage", ["random images", "empty index", "garbage index", "index of ints"])
def test_damaged_cache_is_decoded_again_never_used(tmp_path, capsys, damage):
    usable, _ = write_bad_cases(tmp_path / "train")
    cache = tmp_path / "cache"
    load_folder(tmp_path / "train", ["angry", "happy"], 48, cache)
    fresh = load_folder(tmp_path / "train", ["angry", "happy"], 48)  # in memory: not mapped from the file damaged below
    (images_file,), (index_file,) = cache.glob("*.u8"), cache.glob("*.pt")
    if damage == "random images":  # the right length, other bytes: caught by the index's sha1
        images_file.write_bytes(np.random.default_rng(0).integers(0, 256, images_file.stat().st_size, np.uint8).tobytes())
    elif damage == "empty index":
        index_file.write_bytes(b"")
    elif damage == "garbage index":
        index_file.write_bytes(b"\x80\x02garbage" * 50)
    else:
        torch.save({"labels": [1, 2], "classes": 3, "paths": 4, "skipped": [], "digest": 5}, index_file)
    capsys.readouterr()
    for _ in range(2):  # rebuilt once, then read from the rebuilt cache without a warning
        again = load_folder(tmp_path / "train", ["angry", "happy"], 48, cache)
        assert torch.equal(again.images, fresh.images) and torch.equal(again.labels, fresh.labels)
    err = capsys.readouterr().err
    assert err.count("decoding again") + err.count("decoding the images again") == 1, err
    assert "weights_only" not in err and "Traceback" not in err


def test_preprocess_matches_batch_eval_path(tmp_path):
    img = make_image(3, size=(90, 70))
    x = preprocess(img, 64)
    assert x.shape == (1, 3, 64, 64)
    stored = resize_center_crop(img, storage_size(64))
    assert stored.shape == (3, 72, 72)
    # centre crop of the stored square, normalised by hand
    manual = (stored[:, 4:68, 4:68].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x[0], manual, atol=1e-5)


def test_squash_framing_is_the_whole_photo_scaled_to_the_input_as_a_client_does(tmp_path):
    """What MediaPipe's ImageClassifier does with a bitmap: the whole photo to R x R, aspect not
    kept. Evaluation (the cached split), predict (preprocess) and the model config agree on it."""
    from dataclasses import replace

    from mobile_model import get_config
    img = make_image(3, size=(120, 60))   # 2:1, so a crop and a squash differ
    whole = np.asarray(img.resize((64, 64), Image.BILINEAR, reducing_gap=None), dtype=np.float32) / 255
    manual = (torch.from_numpy(whole).permute(2, 0, 1) - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    squashed = preprocess(img, 64, "squash")
    assert storage_size(64, "squash") == 64 and torch.allclose(squashed[0], manual, atol=1e-5)
    assert not torch.allclose(squashed, preprocess(img, 64), atol=0.1)   # crop framing sees less of the photo
    folder = tmp_path / "photos"
    (folder / "angry").mkdir(parents=True)
    img.save(folder / "angry" / "wide.png")
    config = replace(get_config("nano", 64), framing="squash")
    split = load_for_model(folder, ["angry"], config, tmp_path / "cache")
    assert split.images.shape == (1, 3, 64, 64)
    assert torch.equal(split.images[0], torch.from_numpy(np.asarray(img.resize((64, 64), Image.BILINEAR, reducing_gap=None))).permute(2, 0, 1))
    crop = load_for_model(folder, ["angry"], get_config("nano", 64), tmp_path / "cache")
    assert crop.images.shape == (1, 3, 72, 72) and crop.key != split.key   # one cache entry each, never mixed


def test_augment_batch_shapes_and_determinism():
    batch = torch.randint(0, 256, (5, 3, 72, 72), dtype=torch.uint8)
    a = augment_batch(batch, 64, torch.Generator().manual_seed(1))
    b = augment_batch(batch, 64, torch.Generator().manual_seed(1))
    c = augment_batch(batch, 64, torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_erased_box_blanks_one_rectangle_per_chosen_image():
    from train.data import draw_views, render_views
    batch = torch.full((64, 3, 40, 40), 250, dtype=torch.uint8)   # no pixel is 0 after normalising
    views = draw_views(64, torch.Generator().manual_seed(0), erase_prob=0.5)
    out = render_views(batch, views, 32)
    blank = (out == 0).all(1)                               # (B, H, W): erased pixels, all channels
    erased = blank.flatten(1).any(1)
    assert 10 < erased.sum() < 54                           # about half the images, not all, not none
    assert torch.equal(erased, views[:, 8] > 0)             # exactly the views that asked for a box
    for mask in blank[erased]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box                            # one solid rectangle
        assert 0.01 * 32 * 32 <= box <= 0.3 * 32 * 32       # of 2-25% of the area (pixel rounding aside)
    no_box = render_views(batch, torch.cat([views[:, :8], torch.zeros(64, 5)], 1), 32)
    assert torch.equal(out[~erased], no_box[~erased])       # the others untouched
    assert torch.equal(draw_views(64, torch.Generator().manual_seed(0))[:, :8], views[:, :8])  # same stream up to the box


def test_a_view_renders_alike_at_any_size():
    """The bank renders a teacher's view at the teacher's own input size: the same crop, finer."""
    from train.data import draw_views, render_views
    blobs = torch.randint(0, 256, (4, 3, 6, 6)).float()   # smooth pictures: resolution changes little
    batch = torch.nn.functional.interpolate(blobs, size=72, mode="bilinear").round().to(torch.uint8)
    views = draw_views(4, torch.Generator().manual_seed(3), erase_prob=1.0)
    small, big = render_views(batch, views, 32), render_views(batch, views, 64)
    down = torch.nn.functional.avg_pool2d(big, 2)
    assert (down - small).abs().mean() < 0.15 * small.abs().mean()


def write_raw(root):
    """Raw Kaggle-like folder: exact copies, near copies (resized + re-encoded), WebP named .jpg."""
    for k, c in enumerate(CLASSES):
        d = root / c
        d.mkdir(parents=True)
        for i in range(12):
            make_image(100 * k + i, size=(120, 100)).save(d / f"{i}.jpg", quality=95)
        (d / "copy_of_0.jpg").write_bytes((d / "0.jpg").read_bytes())
        make_image(100 * k + 1, size=(120, 100)).resize((96, 80)).save(d / "near_1.jpg", quality=60)
        make_image(100 * k + 2, size=(120, 100)).save(d / "webp.jpg", format="WEBP")  # near copy of 2, too
    (root / "sad" / "broken.jpg").write_bytes(b"nope")


def test_prepare_data_is_deterministic_and_leak_free(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw)
    s1 = prepare(raw, tmp_path / "a", 0.2, 0.2, 20, 64)
    s2 = prepare(raw, tmp_path / "b", 0.2, 0.2, 20, 64)
    assert s1 == s2
    assert (tmp_path / "a" / "MANIFEST.csv").read_text() == (tmp_path / "b" / "MANIFEST.csv").read_text()
    assert s1["exact_duplicates"] == 4 and s1["skipped"] == 1
    assert s1["kept"] == s1["train"] + s1["val"] + s1["test"]
    assert s1["near_duplicates"] == 8 and s1["kept"] == 12 * len(CLASSES)
    # No two images in different splits are near-copies of each other (dHash distance <= 20 bits).
    with open(tmp_path / "a" / "MANIFEST.csv") as f:
        rows = list(csv.DictReader(f))
    bits = np.stack([dhash_bits(Image.open(tmp_path / "a" / r["split"] / r["label"] / r["file"])) for r in rows])
    groups = near_duplicate_groups(bits, 20)
    assert len(set(groups)) == len(rows)
    # The written images are downscaled, RGB, decodable.
    files = list((tmp_path / "a").rglob("*.jpg"))
    assert len(files) == s1["kept"]
    assert all(min(Image.open(f).size) <= 64 and Image.open(f).mode == "RGB" for f in files)
    with pytest.raises(DataError, match="already exists"):
        prepare(raw, tmp_path / "a", 0.2, 0.2, 20, 64)


def test_prepare_data_reproduces_a_per_class_layout_and_never_touches_the_raw_folder(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw(raw)
    s = prepare(raw, tmp_path / "counts", 0.1, 0.1, 20, 64, val_count=2, test_count=3)
    assert (s["test"], s["val"], s["train"]) == (3 * 4, 2 * 4, 7 * 4)   # 12 clean images a class
    for c in CLASSES:
        assert len(list((tmp_path / "counts" / "test" / c).iterdir())) == 3
    assert "split per class: test 3, val 2, the rest train" in capsys.readouterr().out
    with pytest.raises(DataError, match="not more than --val-count 6 \\+ --test-count 6"):
        prepare(raw, tmp_path / "too_many", 0.1, 0.1, 20, 64, val_count=6, test_count=6)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    for out in (raw, raw / "sad", raw / "split"):                 # the raw folder or inside it
        with pytest.raises(DataError, match="inside the raw folder"):
            prepare(raw, out, 0.1, 0.1, 20, 64, force=True)
    with pytest.raises(DataError, match="holds the raw folder"):
        prepare(raw, tmp_path, 0.1, 0.1, 20, 64, force=True)
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before


def test_prepare_data_force_replaces_only_its_own_output(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_raw(raw)
    mine = tmp_path / "mine"
    prepare(raw, mine, 0.2, 0.2, 20, 64)
    manifest = (mine / "MANIFEST.csv").read_text()
    prepare(raw, mine, 0.3, 0.2, 20, 64, force=True)          # an earlier output: replaced, as one swap
    assert (mine / "MANIFEST.csv").read_text() != manifest and not list(tmp_path.glob(".mine*"))
    # a folder this command did not write is never replaced: with other files, or no manifest of its own
    others = tmp_path / "others"
    (others / "keep").mkdir(parents=True)
    (others / "keep" / "thesis.tex").write_text("years of work")
    (mine / "notes.txt").write_text("mine too")
    fake = tmp_path / "fake"
    (fake / "train").mkdir(parents=True)
    (fake / "MANIFEST.csv").write_text("name,size\n")
    for out, why in ((others, "it holds keep"), (mine, "it holds notes.txt"), (fake, "no MANIFEST.csv of this command")):
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(DataError, match=f"not an earlier prepare-data output \\({why}.*Nothing was changed"):
            prepare(raw, out, 0.2, 0.2, 20, 64, force=True)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # the current folder (or one above it) is never replaced, even when it is an earlier output
    (mine / "notes.txt").unlink()
    monkeypatch.chdir(mine / "train")
    with pytest.raises(DataError, match="is the current folder or holds it"):
        prepare(raw, mine, 0.2, 0.2, 20, 64, force=True)
    assert (mine / "MANIFEST.csv").exists()
    with pytest.raises(DataError, match="is a file"):
        prepare(raw, mine / "MANIFEST.csv", 0.2, 0.2, 20, 64)


def test_prepare_data_skips_a_file_filed_under_two_classes(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw(raw)
    (raw / "happy" / "also_sad.jpg").write_bytes((raw / "sad" / "3.jpg").read_bytes())
    s = prepare(raw, tmp_path / "out", 0.2, 0.2, 20, 64)
    assert s["kept"] == 12 * len(CLASSES) - 1 and s["skipped"] == 2      # the broken file and the two-class one
    err = capsys.readouterr().err
    assert "same file is in two class folders" in err and "also_sad.jpg" in err and "sad/3.jpg" in err
    with open(tmp_path / "out" / "MANIFEST.csv") as f:
        assert hashlib.sha1((raw / "sad" / "3.jpg").read_bytes()).hexdigest() not in f.read()
    with pytest.raises(DataError, match="no image would go to train"):
        prepare(raw, tmp_path / "none", 0.5, 0.5, 20, 64)


def test_a_class_folder_name_with_a_line_break_is_refused_by_name(tmp_path):
    from export.client_metadata import label_file
    from train.common import ProjectError
    from train.data import DataError, class_names
    for split in ("train", "test"):
        (tmp_path / split / "happy").mkdir(parents=True)
        (tmp_path / split / "sad\nangry").mkdir()
    with pytest.raises(DataError, match=r"class folder name 'sad\\nangry' holds a line break"):
        class_names(tmp_path)
    with pytest.raises(ProjectError, match="hold a line break"):   # weights from elsewhere: the export says so
        label_file(["happy", "sad\nangry"])
    assert label_file(["happy", "sad"]) == b"happy\nsad\n"
