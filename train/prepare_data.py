"""Turn a raw Kaggle "Dog Emotion" download into the {train,val,test}/<class>/ layout.

    python -m train.prepare_data --raw ~/Downloads/dog-emotion --out data/my_dog_emotion

The raw set has one folder per class, mixed sizes, byte-identical copies, near-copies (the same
photo resized or re-encoded) and a few WebP files named .jpg. This script:
1. decodes every file by content (WebP-as-.jpg works), skipping unreadable ones with a warning;
2. drops byte-identical copies (same SHA-1), then near-copies: a 256-bit difference hash within
   --near-bits of another image's puts both in one group, and each group keeps one image;
3. splits by the SHA-1 of each kept file: its first 32 bits, as a fraction of 2^32, fall in the
   test, val or train bucket. The same file always lands in the same split, whatever else is in
   the folder, and since each near-copy group keeps one image, no photo can leak across splits;
4. re-encodes as RGB JPEG (quality 90), optionally downscaling so the shorter side is at most
   --shorter-side, and writes MANIFEST.csv (split, label, file, source SHA-1, source size).
The output folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from train.common import at_least, command_errors, fraction, progress, temp_path, warn
from train.data import BadImage, DataError, check_data_root, class_names, list_images, load_rgb
from train.scoring import wilson_interval


def dhash_bits(img: Image.Image, side: int = 16) -> np.ndarray:
    """Difference hash: side*side bits, 1 where a pixel is brighter than its right neighbour."""
    g = np.asarray(img.convert("L").resize((side + 1, side), Image.BILINEAR), dtype=np.int16)
    return (g[:, 1:] > g[:, :-1]).reshape(-1)


def near_duplicate_groups(bits: np.ndarray, max_distance: int) -> list[int]:
    """Union-find over every pair within max_distance Hamming bits; returns a root index per image."""
    a = bits.astype(np.float32)
    dist = a @ (1 - a).T + (1 - a) @ a.T  # Hamming distance of every pair at once
    parent = list(range(len(bits)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(dist <= max_distance, k=1))):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [root(i) for i in range(len(bits))]


def split_of(sha1: str, val_frac: float, test_frac: float) -> str:
    u = int(sha1[:8], 16) / 2 ** 32
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"


def assign_splits(kept: list[dict], classes: list[str], val_frac: float, test_frac: float,
                  val_count: int, test_count: int) -> dict[str, str]:
    """sha1 -> split. With counts: per class in SHA-1 order, the first test_count images to test,
    the next val_count to val, the rest to train (the shipped data's layout: 100 and 100). Without:
    each image's SHA-1 places it, so the shares are the fractions only on average (and adding
    photos later moves none); a class that would have no val or test image (a small class) gives it
    its first train images in SHA-1 order, so every class is scored."""
    if not (val_count or test_count):
        splits = {r["sha1"]: split_of(r["sha1"], val_frac, test_frac) for r in kept}
        for label in range(len(classes)):
            members = sorted(r["sha1"] for r in kept if r["label"] == label)
            for split, frac in (("test", test_frac), ("val", val_frac)):
                spare = [m for m in members if splits[m] == "train"]
                if frac > 0 and len(spare) > 1 and not any(splits[m] == split for m in members):
                    splits[spare[0]] = split
        return splits
    splits = {}
    for label, name in enumerate(classes):
        members = sorted(r["sha1"] for r in kept if r["label"] == label)
        if len(members) <= val_count + test_count:
            raise DataError(f"class '{name}': {len(members)} images after cleaning, not more than "
                            f"--val-count {val_count} + --test-count {test_count}; split by share instead: "
                            "--val-count 0 --test-count 0 --val-frac 0.15 --test-frac 0.15 "
                            "(make prepare-data SPLIT=\"--val-frac 0.15 --test-frac 0.15\")")
        for i, sha1 in enumerate(members):
            splits[sha1] = "test" if i < test_count else "val" if i < test_count + val_count else "train"
    return splits


def downscale(img: Image.Image, shorter_side: int) -> Image.Image:
    if not shorter_side or min(img.size) <= shorter_side:
        return img  # never upscale
    s = shorter_side / min(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.LANCZOS)


def prepare(raw: Path, out: Path, val_frac: float, test_frac: float, near_bits: int,
            shorter_side: int, force: bool = False, val_count: int = 0, test_count: int = 0) -> dict:
    raw = check_data_root(raw)
    if out.resolve() == raw.resolve() or out.resolve().is_relative_to(raw.resolve()):
        raise DataError(f"{out}: is inside the raw folder {raw}; write the split copy elsewhere (nothing was changed)")
    if raw.resolve().is_relative_to(out.resolve()):
        raise DataError(f"{out}: holds the raw folder {raw}; --force would delete it (nothing was changed)")
    check_replaceable(out, force)
    classes = class_names(raw)
    items = list_images(raw, classes)
    if not items:
        raise DataError(f"{raw}: no images in the class folders {classes}")
    records, skipped, exact = decode_unique(items, raw)
    kept = near_duplicates_removed(records, near_bits)
    splits = assign_splits(kept, classes, val_frac, test_frac, val_count, test_count)
    if "train" not in splits.values():
        raise DataError(f"{raw}: no image would go to train ({len(kept)} kept after cleaning); lower --near-bits "
                        "or the val/test shares (nothing was written)")
    rows = write_split(kept, classes, out, splits, shorter_side)
    counts = {s: sum(1 for r in rows if r[0] == s) for s in ("train", "val", "test")}
    summary = {"files": len(items), "skipped": skipped, "exact_duplicates": exact,
               "near_duplicates": len(records) - len(kept), "kept": len(kept), **counts}
    how = (f"per class: test {test_count}, val {val_count}, the rest train" if val_count or test_count
           else f"by SHA-1 fraction: test {test_frac:g}, val {val_frac:g}")
    print(f"{raw} -> {out} (split {how}): " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if counts["test"]:   # what a test number on this split will be worth
        lo, hi = wilson_interval(round(0.7 * counts["test"]), counts["test"])
        print(f"test holds {counts['test']} photos: a 70% test accuracy on them has a 95% interval of {lo:.0f}-{hi:.0f}%"
              + ("; more test photos narrow it (--test-count, --test-frac)" if hi - lo > 15 else ""))
    return summary


MANIFEST_HEADER = ["split", "label", "file", "source_sha1", "source_width", "source_height"]


def check_replaceable(out: Path, force: bool) -> None:
    """--out may be new, empty, or (with --force) an earlier output of this command: a folder holding
    nothing but its MANIFEST.csv and split folders. Never the current folder or one above it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder (nothing was changed)")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise DataError(f"{out}: already exists and is not empty (--force replaces an earlier prepare-data output)")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise DataError(f"--out {out}: is the current folder or holds it; --force would delete it (nothing was changed)")
    manifest = out / "MANIFEST.csv"
    try:
        with open(manifest, newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError):
        header = None
    others = sorted(p.name for p in out.iterdir() if p.name not in ("MANIFEST.csv", "train", "val", "test"))
    if header != MANIFEST_HEADER or others:
        raise DataError(f"--out {out}: is not an earlier prepare-data output (" + (f"it holds {', '.join(others[:5])}"
                        if others else "no MANIFEST.csv of this command") + "); --force replaces only those. "
                        "Nothing was changed: choose a new or empty --out")


def decode_unique(items: list, raw: Path) -> tuple[list[dict], int, int]:
    """Each readable file once (byte-identical copies dropped), with its hash, size and dhash. A file
    whose exact copies sit in two class folders has no label to trust: every copy is skipped, named."""
    labels: dict[str, dict] = {}
    for path, label in items:
        labels.setdefault(hashlib.sha1(path.read_bytes()).hexdigest(), {}).setdefault(label, []).append(path)
    conflicting = {sha1 for sha1, by_label in labels.items() if len(by_label) > 1}
    for sha1 in sorted(conflicting):
        warn("skipped: the same file is in two class folders, its label is unknown: "
             + ", ".join(str(p) for paths in labels[sha1].values() for p in paths))
    records, seen_sha, skipped, exact = [], set(conflicting), len(conflicting), 0
    for path, label in progress(sorted(items, key=lambda t: str(t[0])), desc="hash", unit="img"):
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 in seen_sha:
            exact += sha1 not in conflicting
            continue
        try:
            img = load_rgb(path)
        except BadImage as e:
            warn(f"skipped {e}")
            skipped += 1
            continue
        seen_sha.add(sha1)
        records.append({"path": path, "label": label, "sha1": sha1, "size": img.size, "bits": dhash_bits(img)})
    if not records:
        raise DataError(f"{raw}: none of the {len(items)} files could be decoded")
    return records, skipped, exact


def near_duplicates_removed(records: list[dict], near_bits: int) -> list[dict]:
    """One representative per group of near-copies (the smallest hash: deterministic)."""
    roots = near_duplicate_groups(np.stack([r["bits"] for r in records]), near_bits)
    groups: dict[int, list[dict]] = {}
    for r, g in zip(records, roots):
        groups.setdefault(g, []).append(r)
    kept = []
    for members in groups.values():
        members.sort(key=lambda r: r["sha1"])  # deterministic representative
        if len({m["label"] for m in members}) > 1:
            warn("near-copies filed under different classes, kept " + str(members[0]["path"]) + " only: "
                 + ", ".join(str(m["path"]) for m in members[1:]))
        kept.append(members[0])
    return kept


def write_split(kept: list[dict], classes: list[str], out: Path, splits: dict[str, str], shorter_side: int) -> list[list]:
    """The split copy and its MANIFEST.csv, written into a temporary folder renamed onto `out`."""
    tmp = temp_path(out, folder=True)
    try:
        rows = []
        for r in progress(sorted(kept, key=lambda r: r["sha1"]), desc="write", unit="img"):
            split = splits[r["sha1"]]
            name = f"{r['sha1'][:16]}.jpg"
            dest = tmp / split / classes[r["label"]] / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            downscale(load_rgb(r["path"]), shorter_side).save(dest, "JPEG", quality=90)
            rows.append([split, classes[r["label"]], name, r["sha1"], *r["size"]])
        with open(tmp / "MANIFEST.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_HEADER)
            w.writerows(sorted(rows))
        old = temp_path(out, folder=True) if out.exists() else None
        if old is not None:   # the earlier output moves aside, the new one takes its name, then the old goes
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="raw download: one subfolder per class")
    p.add_argument("--out", required=True, help="output split root (created)")
    p.add_argument("--val-frac", type=fraction, default=0.1, help="share of images in val, by SHA-1 (default: %(default)s)")
    p.add_argument("--test-frac", type=fraction, default=0.1, help="share of images in test, by SHA-1 (default: %(default)s)")
    p.add_argument("--val-count", type=at_least(0), default=0, help="images per class in val instead of a share; "
                                                                   "100 with --test-count 100 is the shipped layout (default: off)")
    p.add_argument("--test-count", type=at_least(0), default=0, help="images per class in test instead of a share (default: off)")
    p.add_argument("--near-bits", type=at_least(0, 128), default=20, help="max differing bits of 256 for near-copies (default: %(default)s)")
    p.add_argument("--shorter-side", type=at_least(0), default=128, help="downscale so the shorter side is at most this, 0 = keep (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this command "
                                                        "(its MANIFEST.csv and split folders, nothing else)")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with command_errors():
        if args.val_frac + args.test_frac >= 1:
            raise DataError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac}: nothing would be left to train on")
        prepare(Path(args.raw), Path(args.out), args.val_frac, args.test_frac, args.near_bits,
                args.shorter_side, args.force, args.val_count, args.test_count)


if __name__ == "__main__":
    main()
