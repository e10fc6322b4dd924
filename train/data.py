"""Dog-emotion data: finding images, decoding them safely, the decode-once cache, batch augmentation.

Training decodes every JPEG once, resizes it to a square *storage* size slightly larger than the
model input, and keeps the whole split as one uint8 tensor (N, 3, S, S): with a cache folder, a raw
file on disk keyed by the files' bytes, written as a stream while decoding and memory-mapped, so a
data set larger than memory trains too. Augmentation then runs on whole batches with `affine_grid` /
`grid_sample`, which is what makes a 2-core CPU epoch take seconds instead of tens of seconds.

`preprocess` is the one definition of inference preprocessing; evaluation, prediction and export
use it. How a photo is framed into the square is the model's `framing` (FRAMINGS): `crop` resizes
the shorter side to S, keeps the centre square, then the centre input-size square; `squash` scales
the whole photo to the input size, aspect not kept, which is what MediaPipe's ImageClassifier and
most app clients do with a bitmap. A squash model stores its photos at the input size itself, so
its evaluation view (the centre input-size square of the stored one) is the whole stored image.
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from train.common import REPO_ROOT, ProjectError, progress, save_torch, temp_path, warn

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_NCHW, STD_NCHW = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)  # for whole batches
MIN_SIDE = 32          # smaller images hold too little to classify: skipped, with a warning
MAX_ASPECT = 10        # longer side over shorter: a panorama is about 4, a 32 x 1,500,000 strip is not a photo
CACHE_VERSION = 4      # bump when decoding or the cache layout changes, so old caches are never reused
DEFAULT_DATA = REPO_ROOT / "data" / "dog_emotion"   # `make` links ../shared/datasets/dog_emotion here
KAGGLE_HINT = ("Get the public Kaggle 'Dog Emotion' data set "
               "(https://www.kaggle.com/datasets/danielshanbalico/dog-emotion), then either point "
               "--data (or make DATA=...) at its folder or run `make prepare-data RAW=<download>` "
               "to deduplicate and split it.")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
Image.MAX_IMAGE_PIXELS = None  # PIL's bomb check acts on the declared size; load_rgb caps decoded pixels instead


class DataError(ProjectError):
    """A problem with the data set as a whole (missing folder, no classes, no images)."""


class BadImage(ProjectError):
    """One file cannot be used; the message names the file and the reason."""


FRAMINGS = ("crop", "squash")


def storage_size(input_size: int, framing: str = "crop") -> int:
    """Side of the stored square: for `crop` 1/8 larger than the input, like 256 -> 224 for
    ImageNet; for `squash` the input itself (the whole photo, as a client scales it)."""
    return input_size + input_size // 8 if framing == "crop" else input_size


# ---------------------------------------------------------------- finding files

def is_split_root(root: Path) -> bool:
    return any((root / s).is_dir() for s in SPLITS)


def class_names(root: Path) -> list[str]:
    """Class folders of a split root (union over splits) or of a flat class-per-folder root."""
    roots = [root / s for s in SPLITS if (root / s).is_dir()] if is_split_root(root) else [root]
    names = sorted({d.name for r in roots for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")})
    odd = [n for n in names if any(ord(ch) < 32 for ch in n)]
    if odd:   # a label file (the app's labels.txt) holds one name a line
        raise DataError(f"{root}: class folder name {odd[0]!r} holds a line break or other control character; "
                        "rename the folder (a class name becomes a line of the app's label file)")
    if not names:
        raise DataError(f"{root}: no class folders found (expected <class>/ or "
                        f"{{train,val,test}}/<class>/ with images inside). {KAGGLE_HINT}")
    return names


def check_data_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data set not found at {root.resolve()}. {KAGGLE_HINT}")
    return root


def list_images(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) for every image file under folder/<class>/, warning on empty or missing classes."""
    items = []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            warn(f"{cdir}: class folder missing in this split; it has no images of '{name}'")
            continue
        files = sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        for p in sorted(set(files) - set(images)):
            warn(f"{p}: skipped, not an image file extension")
        if not images:
            warn(f"{cdir}: class folder is empty")
        items += [(p, label) for p in images]
    return items


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for image files; glob patterns ('**' included)
    expanded. Folders and patterns give their images in sorted order; nothing is listed twice."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        elif not path.exists() and any(c in item for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not matches:
                raise DataError(f"{item}: no file matches this pattern")
        else:
            found.append(path)  # a file, or a missing one that load_rgb will name
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------- decoding

def max_decoded_pixels() -> int:
    """The most pixels this project decodes from one file (after JPEG draft scaling): 50 MP by
    default, DOG_EMOTION_MAX_PIXELS to change it. It replaces PIL's own bomb limit, which would
    refuse a 200 MP phone photo that draft mode decodes at 1/8 scale in a few megapixels."""
    return int(os.environ.get("DOG_EMOTION_MAX_PIXELS", 50_000_000))


# Formats PIL has no decoder for, told apart by their first bytes, so the message can name them.
UNREADABLE_SIGNATURES = {b"ftypheic": "HEIC", b"ftypheix": "HEIC", b"ftypmif1": "HEIF", b"ftyphevc": "HEIF",
                         b"ftypavif": "AVIF", b"ftypcrx ": "Canon CR3 raw"}


def _unreadable_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    for sig, name in UNREADABLE_SIGNATURES.items():
        if head[4:12] == sig:
            return f"a {name} file, which PIL cannot decode: convert it to JPEG or PNG"
    return "not an image PIL can read"


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth greyscale (16-bit PNG/TIFF: modes I;16*, I) scaled to 8 bits, never clipped."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        top = 65535 if a.max() > 255 or im.mode.startswith("I;16") else 255
        return Image.fromarray(np.clip(a * 255 // top, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        raise BadImage("floating-point image (mode F): no fixed scale to map to 8 bits")
    return im


def _decode(path: Path, min_side: int) -> Image.Image:
    with Image.open(path) as im:
        if im.format == "JPEG" and min_side:
            # DCT scaling: decode at 1/2, 1/4 or 1/8 while the shorter side stays >= min_side
            w, h = im.size
            scale = min_side / min(w, h)
            if scale < 1:
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        check_size(*im.size)   # from the header, before decoding
        im.load()
        # phone photos: upright as the camera meant them (in place: a 50 MP image is not copied twice)
        ImageOps.exif_transpose(im, in_place=True)
        return to_rgb(im)


def check_size(w: int, h: int) -> None:
    """Refuse what is not a photo to classify: too thin (resizing its short side up to the model's
    input would cost memory without bound), too many pixels, or too small to hold anything."""
    if min(w, h) < MIN_SIDE:
        raise BadImage(f"too small ({w}x{h} px, need >= {MIN_SIDE})")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadImage(f"{w}x{h} px is more than {MAX_ASPECT}:1, not a photo to classify")
    limit = max_decoded_pixels()
    if w * h > limit:
        raise BadImage(f"{w}x{h} px is {w * h / 1e6:.0f} MP to decode, over the limit of {limit / 1e6:.0f} MP "
                       f"(DOG_EMOTION_MAX_PIXELS)")


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image: 16-bit scaled (never clipped), transparency composited on white."""
    im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
        return img
    return im if im.mode == "RGB" else im.convert("RGB")


def image_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """A PIL image handed over in memory, through the same rules as a file (load_rgb): size limits,
    EXIF orientation, 16-bit scaled, transparency composited; a BadImage naming it otherwise."""
    try:
        check_size(*img.size)
        return to_rgb(ImageOps.exif_transpose(img))
    except BadImage as e:
        raise BadImage(f"{name}: {e}") from None


def load_rgb(path: str | Path, min_side: int = 0) -> Image.Image:
    """The one place that decides whether an image file is usable: any image PIL knows (the format
    is read from the bytes, so WebP named .jpg works), as an upright 8-bit RGB image.

    EXIF orientation is applied; transparent images are composited on white; CMYK, greyscale,
    palette and 16-bit images are converted (16-bit scaled, not clipped). `min_side` > 0 lets a
    large JPEG decode at a reduced DCT scale whose shorter side is still >= min_side. Every
    failure, whatever raised it, is a BadImage naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise BadImage(f"{path}: file not found")
    if not path.is_file():
        raise BadImage(f"{path}: not a file")
    try:
        img = _decode(path, min_side)
    except BadImage as e:
        raise BadImage(f"{path}: {e}") from None
    except UnidentifiedImageError:
        raise BadImage(f"{path}: {_unreadable_format(path)}") from None
    except PermissionError:
        raise BadImage(f"{path}: cannot be read (permission denied)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"{path}: corrupt or truncated image ({e})") from None
    except Exception as e:  # noqa: BLE001 - a decoder bug on a hostile file must not end a run
        raise BadImage(f"{path}: cannot be decoded ({type(e).__name__}: {e})") from None
    return img


def resize_center_crop(img: Image.Image, size: int) -> torch.Tensor:
    """Shorter side to `size` (antialiased), centre square crop -> uint8 tensor (3, size, size)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def frame_image(img: Image.Image, size: int, framing: str = "crop") -> torch.Tensor:
    """A photo as the stored uint8 square (3, size, size) of its framing (FRAMINGS)."""
    if framing == "crop":
        return resize_center_crop(img, size)
    img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() - MEAN_NCHW * 255) / (STD_NCHW * 255)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def eval_transform(batch_uint8: torch.Tensor, input_size: int) -> torch.Tensor:
    """Stored uint8 squares (B, 3, S, S) -> normalised float model input (B, 3, R, R)."""
    return normalize(center_crop(batch_uint8, input_size))


def eval_batches(images_uint8: torch.Tensor, input_size: int, batch: int = 100):
    """Model-ready float batches of a decoded split, in order: the one batching of inference
    (evaluation, export parity, INT8 calibration and the benchmark all iterate this)."""
    for i in range(0, len(images_uint8), batch):
        yield eval_transform(images_uint8[i:i + batch], input_size)


def preprocess(img: Image.Image, input_size: int, framing: str = "crop") -> torch.Tensor:
    """The single definition of inference preprocessing: PIL RGB image -> (1, 3, R, R) float."""
    return eval_transform(frame_image(img, storage_size(input_size, framing), framing)[None], input_size)


def load_input(path: str | Path, input_size: int, framing: str = "crop") -> torch.Tensor:
    """An image file -> (1, 3, R, R) model input, through load_rgb (BadImage on any failure)."""
    return preprocess(load_rgb(path, min_side=storage_size(input_size, framing)), input_size, framing)


def preprocess_spec(input_size: int, framing: str = "crop") -> dict:
    """What `preprocess` does, recorded in checkpoints and exported models for consumers."""
    common = {"exif_orientation": "applied (the image is made upright first)",
              "decode": "8-bit RGB; alpha composited on white; 16-bit greyscale scaled to 8 bits; large JPEGs "
                        "DCT-scaled while the shorter side stays >= the stored size",
              "framing": framing, "input_size": input_size}
    if framing == "crop":
        framed = {"resize_shorter_side": storage_size(input_size), "center_crop_1": storage_size(input_size),
                  "center_crop_2": input_size}
    else:
        framed = {"resize_whole_image": [input_size, input_size], "aspect": "not kept (as MediaPipe's ImageClassifier scales a bitmap)"}
    return {**common, **framed, "interpolation": "bilinear (PIL, antialiased)",
            "scale": "1/255", "mean": list(MEAN), "std": list(STD), "color": "RGB", "layout": "NCHW"}


# ---------------------------------------------------------------- decoded, cached splits

@dataclass
class DecodedSplit:
    images: torch.Tensor             # (N, 3, S, S) uint8
    labels: torch.Tensor             # (N,) int64
    classes: list[str]
    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    key: str = ""                    # content_key of the files it was decoded from

    def __len__(self) -> int:
        return len(self.labels)


def content_key(items: list[tuple[Path, int]], classes: list[str], size: int, framing: str = "crop") -> str:
    """Hash of every file's bytes, label and name, and of the framing: any change to the data gives
    a new cache file."""
    framed = "" if framing == "crop" else f"|{framing}"   # crop keys are the ones they always were
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{','.join(classes)}{framed}".encode())
    for path, label in items:
        h.update(f"|{path.name}|{label}|".encode())
        try:   # in chunks (the same hash as the bytes whole): a huge file costs time, not memory
            hash_file(h, path)
        except OSError as e:   # unreadable: decoding skips it by name
            h.update(f"unreadable {e.errno}".encode())
    return h.hexdigest()[:16]


def decode_items(items: list[tuple[Path, int]], classes: list[str], size: int, desc: str,
                 stream: BinaryIO | None = None, framing: str = "crop") -> DecodedSplit:
    """Decode and resize every readable file, in order. With `stream`, each image's bytes are
    written there as it is decoded and the returned split has no images (the caller maps the
    file): a data set larger than memory never sits in it whole."""
    images, labels, paths, skipped = [], [], [], []
    for path, label in progress(items, desc=f"decode {desc}", unit="img"):
        try:
            image = frame_image(load_rgb(path, min_side=size), size, framing)
        except BadImage as e:
            warn(f"skipped {e}")
            skipped.append(str(e))
            continue
        if stream is None:
            images.append(image)
        else:
            stream.write(image.numpy().tobytes())
        labels.append(label)
        paths.append(str(path))
    if skipped:
        warn(f"{desc}: skipped {len(skipped)} of {len(items)} files (reasons above)")
    stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return DecodedSplit(stacked, torch.tensor(labels, dtype=torch.long), classes, paths, skipped)


def hash_file(h, path: Path) -> None:
    """Feed a file's bytes to the hash `h` in chunks: a huge file costs time, not memory."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)


def file_digest(path: Path) -> str:
    """sha1 of a file's bytes, read in chunks: a cache file is checked before its images are used."""
    h = hashlib.sha1()
    hash_file(h, path)
    return h.hexdigest()


def map_images(path: Path, count: int, size: int) -> torch.Tensor:
    """The (count, 3, size, size) uint8 images of a cache file, memory-mapped: pages are read
    from disk as batches touch them and shared by every process that maps the same file (DDP
    ranks)."""
    if count == 0:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    # shared=False maps the file copy-on-write: nothing done to the tensor can change the cache
    return torch.from_file(str(path), shared=False, size=count * 3 * size * size,
                           dtype=torch.uint8).view(count, 3, size, size)


def read_cache(index_file: Path, images_file: Path, size: int, folder: Path) -> DecodedSplit | None:
    """A cached split if its index reads and its images file is the one the index describes
    (length and sha1); otherwise None, with a warning saying why, and the caller decodes again.
    The index holds paths relative to the folder, so a copy of the same photos elsewhere (the same
    content key) gets its own paths; an older index of absolute paths serves only its own folder."""
    if not index_file.exists():
        return None
    try:
        d = torch.load(index_file, weights_only=True)
        labels, classes, paths, skipped, digest = (d["labels"], d["classes"], d["paths"], d["skipped"], d["digest"])
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.long and labels.dim() == 1
                and len(paths) == len(labels) and isinstance(digest, str)):
            raise ValueError("fields of the wrong type or length")
    except Exception as e:  # any unreadable index is rebuilt, never trusted and never fatal
        warn(f"{index_file}: cache index unreadable ({type(e).__name__}); decoding the images again")
        return None
    count = len(labels)
    if not images_file.is_file() or images_file.stat().st_size != count * 3 * size * size \
            or file_digest(images_file) != digest:
        warn(f"{images_file}: cache images missing or not the ones its index describes; decoding again")
        return None
    if all(not Path(p).is_absolute() for p in paths):
        paths = [str(folder / p) for p in paths]
    elif not all(Path(p).resolve().is_relative_to(folder.resolve()) for p in paths):
        return None   # decoded from another folder of the same photos: decode again, with relative paths
    for s in skipped:
        warn(f"skipped {s} (cached)")
    return DecodedSplit(map_images(images_file, count, size), labels, classes, paths, skipped)


def load_folder(folder: Path, classes: list[str], size: int, cache_dir: Path | None = None,
                framing: str = "crop") -> DecodedSplit:
    """Decode every image under folder/<class>/ once. With a cache folder, the decoded images are
    streamed into a raw uint8 file keyed by content (plus a small index of labels, paths and the
    file's sha1) and memory-mapped from there, on this run and every later one."""
    items = list_images(folder, classes)
    if not items:
        raise DataError(f"{folder}: no images found in any class folder ({', '.join(classes)})")
    key = content_key(items, classes, size, framing)
    if cache_dir is None:
        split = decode_items(items, classes, size, folder.name, framing=framing)
        if len(split) == 0:
            raise DataError(f"{folder}: none of the {len(items)} files could be decoded")
    else:
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise DataError(f"--cache-dir {cache_dir}: is a file, not a folder")
        stem = Path(cache_dir) / f"{folder.name}-{size}px-{key}"
        index_file, images_file = stem.with_suffix(".pt"), stem.with_suffix(".u8")
        split = read_cache(index_file, images_file, size, folder)
        if split is None:
            split = write_cache(items, classes, size, folder, index_file, images_file, framing)
    split.key = key
    return split


def load_for_model(folder: Path, classes: list[str], config, cache_dir: Path | None = None) -> DecodedSplit:
    """A folder decoded the way a model (its ModelConfig) frames its input: what it is evaluated on."""
    return load_folder(folder, classes, storage_size(config.input_size, config.framing), cache_dir, config.framing)


def write_cache(items: list[tuple[Path, int]], classes: list[str], size: int, folder: Path,
                index_file: Path, images_file: Path, framing: str = "crop") -> DecodedSplit:
    """Decode the items straight into the cache's images file, then write its index; the split
    returned maps the file."""
    tmp = temp_path(images_file)
    try:
        with open(tmp, "wb") as f:
            split = decode_items(items, classes, size, folder.name, stream=f, framing=framing)
        if len(split) == 0:
            raise DataError(f"{folder}: none of the {len(items)} files could be decoded")
        os.replace(tmp, images_file)
    finally:
        tmp.unlink(missing_ok=True)
    # the index is written last: its presence says the images file beside it is complete
    save_torch({"labels": split.labels, "classes": split.classes,
                "paths": [str(Path(p).relative_to(folder)) for p in split.paths],
                "skipped": split.skipped, "digest": file_digest(images_file)}, index_file)
    split.images = map_images(images_file, len(split), size)
    return split


def load_splits(root: str | Path, size: int, splits=SPLITS, cache_dir: Path | None = None,
                framing: str = "crop") -> dict[str, DecodedSplit]:
    """Decoded splits of a {train,val,test}/<class>/ root, with one class list shared by all."""
    root = check_data_root(root)
    if not is_split_root(root):
        raise DataError(f"{root}: expected train/, val/ and test/ folders. For a raw download with "
                        f"no split run `make prepare-data RAW={root}` first.")
    classes = class_names(root)
    folded = [c.casefold() for c in classes]
    twins = sorted({c for c in classes if folded.count(c.casefold()) > 1})
    if twins:
        raise DataError(f"{root}: class folders {twins} differ only in case across splits; name each class alike "
                        "in train/, val/ and test/")
    out = {}
    for s in splits:
        if not (root / s).is_dir():
            raise DataError(f"{root / s}: split folder missing")

        out[s] = load_folder(root / s, classes, size, cache_dir, framing)
    return out


# ---------------------------------------------------------------- batch augmentation

def uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """n draws from U(lo, hi): one random parameter per image of a batch."""
    return torch.rand(n, generator=gen) * (hi - lo) + lo


# One view of a photo is 13 numbers (VIEW_FIELDS), drawn by `draw_views` and drawn on the stored square
# by `render_views` at any input size: the teacher bank (train/teacher_bank.py) records them so that a
# student replays exactly the views its teachers saw.
VIEW_FIELDS = ("side", "angle", "flip", "tx", "ty", "brightness", "contrast", "saturation",
               "erase", "erase_top", "erase_left", "erase_h", "erase_w")


def draw_views(b: int, gen: torch.Generator, scale=(0.55, 1.0), max_rotate: float = 12.0, jitter: float = 0.3,
               erase_prob: float = 0.0) -> torch.Tensor:
    """(b, 13) random views: resized crop (side = sqrt of the area share, centre tx/ty), rotation,
    mirror (-1/1), colour factors, and one erased box (0/1, then its top, left, height and width as
    shares of the image; no draws at erase_prob 0, so the stream is the one it always was)."""
    side = uniform(b, *scale, gen).sqrt()                       # crop side / stored side
    angle = uniform(b, -max_rotate, max_rotate, gen) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    tx = uniform(b, -1, 1, gen) * (1 - side)
    ty = uniform(b, -1, 1, gen) * (1 - side)
    colour = [uniform(b, 1 - jitter, 1 + jitter, gen) for _ in range(3)]   # brightness, contrast, saturation
    erase = erase_boxes(b, gen, erase_prob) if erase_prob > 0 else torch.zeros(5, b)
    return torch.stack([side, angle, flip, tx, ty, *colour, *erase], 1)


def erase_boxes(b: int, gen: torch.Generator, prob: float, area=(0.02, 0.25),
                log_ratio=(math.log(0.3), math.log(1 / 0.3))) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): with probability `prob` per image one box of 2-25% of the
    image, aspect ratio 0.3-3.3; rows (on, top, left, height, width), the last four as shares."""
    share, ratio = uniform(b, *area, gen), uniform(b, *log_ratio, gen).exp()
    bh, bw = (share * ratio).sqrt().clamp(max=1), (share / ratio).sqrt().clamp(max=1)
    top, left = uniform(b, 0, 1, gen) * (1 - bh), uniform(b, 0, 1, gen) * (1 - bw)
    on = (torch.rand(b, generator=gen) < prob).float()
    return torch.stack([on, top, left, bh, bw])


def render_views(batch_uint8: torch.Tensor, views: torch.Tensor, input_size: int) -> torch.Tensor:
    """The normalised input_size views (draw_views' rows) of a batch of stored squares: one affine
    grid per image samples the crop, then colour jitter, then the erased box (set to 0, the data
    mean after normalisation). The same view renders alike at any input size."""
    b = batch_uint8.shape[0]
    side, angle, flip, tx, ty = views[:, :5].T
    x = batch_uint8.float() / 255
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, input_size, input_size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness, contrast, saturation = (views[:, i].view(b, 1, 1, 1) for i in (5, 6, 7))
    x = x * brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = ((x - grey) * saturation + grey).clamp(0, 1)
    x = (x - MEAN_NCHW) / STD_NCHW
    if not views[:, 8].any():
        return x
    on, top, left, bh, bw = (views[:, i].view(b, 1, 1) for i in range(8, 13))
    rows = (torch.arange(input_size).view(1, -1, 1) + 0.0) / input_size   # pixel positions as shares
    cols = (torch.arange(input_size).view(1, 1, -1) + 0.0) / input_size
    box = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw) & (on > 0)
    return x.masked_fill(box[:, None], 0.0)


def augment_batch(batch_uint8: torch.Tensor, input_size: int, gen: torch.Generator,
                  scale=(0.55, 1.0), max_rotate: float = 12.0, jitter: float = 0.3,
                  erase_prob: float = 0.0) -> torch.Tensor:
    """Random resized crop + flip + small rotation + colour jitter (+ random erasing) on a batch:
    a crop whose side is sqrt(area share) of the stored side, placed anywhere inside, mirrored half
    the time."""
    return render_views(batch_uint8, draw_views(batch_uint8.shape[0], gen, scale, max_rotate, jitter, erase_prob),
                        input_size)


def iterate_batches(n: int, batch_size: int, gen: torch.Generator | None = None, drop_last: bool = False,
                    rank: int = 0, world: int = 1):
    """Index tensors for one pass over n items: shuffled when a generator is given.

    With several processes (DDP), every rank draws the same order (its generator seeded alike)
    and takes its own batch_size slice of each global batch of batch_size * world, so all ranks
    take the same number of steps: a rank with one step more would wait for its all-reduce forever.
    """
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    step = batch_size * world
    stop = n - n % step if (drop_last or world > 1) and n >= step else n
    for i in range(0, stop, step):
        yield order[i + rank * batch_size:i + (rank + 1) * batch_size]
