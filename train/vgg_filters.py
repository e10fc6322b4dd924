"""VGG16 (ImageNet) analysis: top-5 predictions and the first conv layer's filters and responses.

    python -m train.vgg_filters [--images DIR] [--weights PATH|random] [--out artifacts/vgg]   # make vgg

Offline only: the IMAGENET1K_V1 weights are read from --weights PATH or from the torch hub cache
($TORCH_HOME/hub/checkpoints/vgg16-397923af.pth); nothing is downloaded. Without them the run
stops and says where it looked. `--weights random` runs everything on a randomly initialised
VGG16, and every figure title and the report then say so.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models import VGG16_Weights

from train.common import ARTIFACTS, ProjectError, command_errors, markdown_table, save_text
from train.data import (DEFAULT_DATA, BadImage, DataError, IMAGE_EXTENSIONS, center_crop, load_rgb, normalize,
                        resize_center_crop)
from train.plots import image_grid, plt, save_figure

WEIGHTS = VGG16_Weights.IMAGENET1K_V1
CATEGORIES = WEIGHTS.meta["categories"]  # shipped inside torchvision: no download
HUB_FILE = os.path.basename(WEIGHTS.url)


class WeightsMissing(ProjectError):
    pass


def vgg_preprocess(img) -> torch.Tensor:
    """As VGG16 expects: RGB, shorter side to 256, centre crop 224, scale to [0, 1], ImageNet mean/std."""
    return normalize(center_crop(resize_center_crop(img, 256)[None], 224))


PREPROCESS_STEPS = ["convert to RGB (greyscale/palette/CMYK converted, transparency composited on white)",
                    "resize so the shorter side is 256 px (bilinear, antialiased)", "centre crop 224 x 224",
                    "scale pixel values to [0, 1]",
                    "normalise per channel with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)"]


def hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE


def load_vgg(weights: str | None) -> tuple[torch.nn.Module, str]:
    """(model in eval mode, description of its weights)."""
    model = torchvision.models.vgg16(weights=None)
    if weights == "random":
        torch.manual_seed(0)
        return model.eval(), "RANDOM weights (not trained)"
    path = Path(weights) if weights else hub_path()
    if not path.is_file():
        raise WeightsMissing(
            f"VGG16 ImageNet weights not found at {path}"
            + ("" if weights else f" (the torch hub cache; TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')})")
            + f". Nothing is downloaded at run time. Copy {HUB_FILE} (from {WEIGHTS.url}, on a machine with "
            f"internet) to {hub_path()} or pass --weights PATH; or run with --weights random for a demonstration.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), f"ImageNet IMAGENET1K_V1 weights from {path}"


def default_images() -> list[Path]:
    """A few dog photos from the data set's test split, and matplotlib's grace_hopper.jpg."""
    import matplotlib.cbook
    images = []
    test = Path(DEFAULT_DATA) / "test"
    for cls in sorted(test.iterdir()) if test.is_dir() else []:
        images += sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:1]
    images.append(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return images


def top5(logits: torch.Tensor) -> list[list[tuple[str, float]]]:
    probs = logits.softmax(1)
    p, idx = probs.topk(5, dim=1)
    return [[(CATEGORIES[i], float(v)) for v, i in zip(pr, ix)] for pr, ix in zip(p, idx)]


def first_layer_responses(model, x: torch.Tensor, channels=(0, 1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Output of features[0] (conv) and features[1] (ReLU) for the chosen channels."""
    with torch.no_grad():
        conv = model.features[0](x)[:, list(channels)]
    return conv, conv.clamp(min=0)


def describe_kernel(k: torch.Tensor) -> dict:
    """Measured properties of one 3x3x3 kernel: dominant orientation and colour sensitivity."""
    lum = k.sum(0)  # summed over RGB: the kernel's response to a grey pattern
    gx = (lum[:, 2] - lum[:, 0]).sum().item()  # left-right change -> responds to vertical edges
    gy = (lum[2, :] - lum[0, :]).sum().item()  # top-bottom change -> responds to horizontal edges
    energy = k.abs().sum((1, 2))
    colour = {c: round(float(e / energy.sum()), 2) for c, e in zip("RGB", energy)}
    signs = k.sum((1, 2))
    opponent = bool((signs.max() > 0) and (signs.min() < 0) and signs.abs().min() > 0.2 * signs.abs().max())
    if max(abs(gx), abs(gy)) < 0.25 * lum.abs().sum().item():
        orientation = "no dominant orientation (blob/colour detector)"
    else:
        angle = np.degrees(np.arctan2(gy, gx)) % 180
        # an edge runs across its gradient: gradient near 0/180 deg -> vertical edges, near 90 -> horizontal,
        # anything else (more than 22.5 deg from both) -> diagonal edges
        kind = ("vertical" if min(angle, 180 - angle) <= 22.5 else "horizontal" if abs(angle - 90) <= 22.5
                else f"diagonal (about {(angle + 90) % 180:.0f} deg)")
        orientation = f"gradient at {angle:.0f} deg: responds to {kind} edges"
    return {"orientation": orientation, "colour share": colour, "colour-opponent": opponent,
            "mean weight": round(float(lum.mean()), 3)}


def run(args) -> str:
    model, weights_desc = load_vgg(args.weights)
    random = args.weights == "random"
    tag = " [RANDOM WEIGHTS]" if random else ""
    imgs, names = read_images(args.images)
    x = torch.cat([vgg_preprocess(im) for im in imgs])
    with torch.no_grad():
        preds = top5(model(x))
    out = Path(args.out)
    shown = [resize_center_crop(im, 224).permute(1, 2, 0).numpy() for im in imgs]
    captions = [f"{n}\n" + "\n".join(f"{c[:22]} {p:.1%}" for c, p in pr[:3]) for n, pr in zip(names, preds)]
    image_grid(shown, captions, out / "predictions.png", cols=min(4, len(imgs)), cell=3.0,
               title=f"VGG16 top-3 of top-5{tag}")
    rows = [{"image": n, **{f"top{i + 1}": f"{c} ({p:.1%})" for i, (c, p) in enumerate(pr)}} for n, pr in zip(names, preds)]

    # first conv layer: the first three kernels and their responses on the chosen image
    chosen = next((i for i, n in enumerate(names) if args.filter_image and args.filter_image in n), 0)
    w = model.features[0].weight.detach()[:3]
    conv, relu = first_layer_responses(model, x[chosen:chosen + 1])
    plot_filters(w, out / "filters.png", tag)
    plot_responses(shown[chosen], names[chosen], conv, relu, out / "responses.png", tag)
    lines = filter_lines(w, conv, relu)
    report = (f"# VGG16 analysis{tag}\n\nWeights: {weights_desc}.\n\n## Preprocessing\n\n"
              + "\n".join(f"{i + 1}. {s}" for i, s in enumerate(PREPROCESS_STEPS))
              + f"\n\n## Top-5 predictions\n\n{markdown_table(rows)}\n![predictions](predictions.png)\n\n"
              f"## First convolution layer (conv1_1), filters 0-2\n\nMeasured on `{names[chosen]}`:\n\n"
              + "\n".join(lines) + "\n\n![filters](filters.png)\n![responses](responses.png)\n")
    save_text(report, out / "report.md")
    print(report)
    print(f"wrote {out}/report.md, predictions.png, filters.png, responses.png")
    return report


def read_images(folder: str) -> tuple[list, list[str]]:
    """The readable images of `folder` (or the default set), each unreadable one named and skipped."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder \
        else default_images()
    imgs, names = [], []
    for p in paths:
        try:
            imgs.append(load_rgb(p, min_side=256))
            names.append(p.name)
        except BadImage as e:
            print(f"warning: skipped {e}")
    if not imgs:
        raise DataError(f"no readable images in {folder or 'the default set'}")
    return imgs, names


def plot_filters(w: torch.Tensor, path: Path, tag: str) -> None:
    fig, axes = plt.subplots(3, 4, figsize=(9, 7))
    for f in range(3):
        k = w[f]
        axes[f, 0].imshow(((k - k.min()) / (k.max() - k.min() + 1e-12)).permute(1, 2, 0).numpy())
        axes[f, 0].set_title(f"filter {f} as RGB", fontsize=8)
        lim = k.abs().max().item()
        for c in range(3):
            # signed weights: a diverging map centred on 0 (white), with its scale beside each row
            im = axes[f, c + 1].imshow(k[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[f, c + 1].set_title(f"filter {f}, {'RGB'[c]} channel", fontsize=8)
        fig.colorbar(im, ax=axes[f, 1:].tolist(), fraction=0.046, label="weight")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"VGG16 conv1_1, filters 0-2 (3x3x3){tag}")
    save_figure(fig, path)


def plot_responses(shown, name: str, conv: torch.Tensor, relu: torch.Tensor, path: Path, tag: str) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
    axes[0, 0].imshow(shown)
    axes[0, 0].set_title(name, fontsize=8)
    axes[1, 0].axis("off")
    for f in range(3):
        for r, (resp, label) in enumerate(((conv, "conv (before ReLU)"), (relu, "after ReLU"))):
            im = axes[r, f + 1].imshow(resp[0, f].numpy(), cmap="coolwarm" if r == 0 else "magma")
            axes[r, f + 1].set_title(f"channel {f}, {label}", fontsize=8)
            fig.colorbar(im, ax=axes[r, f + 1], fraction=0.046)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"first-layer responses on {name}{tag}")
    save_figure(fig, path)


def filter_lines(w: torch.Tensor, conv: torch.Tensor, relu: torch.Tensor) -> list[str]:
    """One sentence per filter, computed from its weights and its responses."""
    lines = []
    for f in range(3):
        d = describe_kernel(w[f])
        active = float((relu[0, f] > 0).float().mean())
        lines.append(f"- Filter {f}: {d['orientation']}; colour share of |weights| R/G/B "
                     f"{d['colour share']['R']}/{d['colour share']['G']}/{d['colour share']['B']}"
                     f"{', colour-opponent (channels of opposite sign)' if d['colour-opponent'] else ''}; "
                     f"{active:.0%} of the image activates it after ReLU (mean response {conv[0, f].mean():.3f}, "
                     f"max {conv[0, f].max():.3f}).")
    return lines



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="folder of images (default: dog photos from the test split + grace_hopper.jpg)")
    ap.add_argument("--weights", default=None, help="VGG16 state_dict file, or 'random' (default: the torch hub cache)")
    ap.add_argument("--filter-image", default="", help="name (substring) of the image for the filter responses (default: the first)")
    ap.add_argument("--out", default=str(ARTIFACTS / "vgg"), help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        run(args)


if __name__ == "__main__":
    main()
