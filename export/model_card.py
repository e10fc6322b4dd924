"""An export's MODEL_CARD.md, written by `make export` into its set from what it has just measured:
the weights' record, the parity table, the calibration, the test split's confusion matrix, the run log's seeds of the
shipped recipe, `make bench`'s last timings when there are any, and the model's answers on
pictures that are not dog photos. Nothing in it is typed by hand, so a rerun keeps it true.
The headings follow the model-card convention of model hubs (Mitchell et al. 2019).
`make model-card` (python -m export.model_card) copies it to the project's MODEL_CARD.md, only
when the export is of the shipped weights."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from export.formats import FORMATS, METADATA_SIDECAR
from export.runtimes import exported_from
from mobile_model import CONFIGS, count_macs
from train.common import (ARTIFACTS, REPO_ROOT, RUN_LOG, SHIPPED_WEIGHTS, command_errors, markdown_table,
                          percent, save_text)
from train.data import DataError, preprocess, preprocess_spec
from train.scoring import wilson_interval
from train.recipes import recipe_record, run_values
from train.runlog import mean_sd, read_log

DATA_URL = "https://www.kaggle.com/datasets/danielshanbalico/dog-emotion"


def not_dogs() -> dict[str, Image.Image]:
    """Pictures outside the model's scope, made or shipped with the packages (nothing downloaded)."""
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        person = Image.open(f).convert("RGB")
    rng = np.random.default_rng(0)
    cartoon = Image.new("RGB", (200, 200), (250, 240, 200))
    draw = ImageDraw.Draw(cartoon)
    draw.ellipse((40, 40, 160, 160), fill=(240, 200, 60), outline=(0, 0, 0), width=4)     # a smiley
    draw.ellipse((75, 80, 90, 95), fill=(0, 0, 0))
    draw.ellipse((110, 80, 125, 95), fill=(0, 0, 0))
    draw.arc((70, 90, 130, 140), 20, 160, fill=(0, 0, 0), width=4)
    return {"a person (matplotlib's grace_hopper.jpg)": person, "a drawn smiley face": cartoon,
            "random noise": Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)),
            "a flat grey picture": Image.new("RGB", (200, 200), (128, 128, 128))}


@torch.no_grad()
def out_of_scope_rows(model, classes: list[str]) -> list[dict]:
    rows = []
    for name, img in not_dogs().items():
        probs = model(preprocess(img, model.config.input_size, model.config.framing)).softmax(1)[0]
        rows.append({"picture": name, "label given": classes[int(probs.argmax())],
                     "its probability": f"{probs.max().item():.2f}"})
    return rows


def config_name(config) -> str:
    def shape(c):
        return c.stem, c.stages, c.input_size
    same = [n for n, c in CONFIGS.items() if shape(c) == shape(config)]
    return same[0] if same else "custom"


def confusions(cm: np.ndarray, classes: list[str]) -> str:
    """The weakest class and the two pairs most often confused, in words, from the matrix."""
    acc = cm.diagonal() / np.maximum(cm.sum(1), 1)
    off = [(cm[i, j], classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes)) if i != j]
    top = sorted(off, reverse=True)[:2]
    return (f"{classes[int(acc.argmin())]} is the weakest class ({100 * acc.min():.0f}% on test); the most frequent "
            "mistakes: " + ", ".join(f"{t} taken for {p} ({n} photos)" for n, t, p in top) + ".")


def seed_rows(recipe: dict) -> list[dict]:
    """The run log's runs of the shipped recipe (what they trained with is its values), with their test accuracies."""
    return [r for r in read_log(RUN_LOG) if "recipe_values" in r and r["test"] is not None and run_values(r) == recipe]


def speed_rows(bench_json: Path, weights_sha256: str) -> tuple[list[dict], str]:
    """`make bench`'s timings, only when they are of these weights (bench.json records their digest)."""
    if not bench_json.is_file():
        return [], "not measured yet: run `make bench` and then `make export` again"
    bench = json.loads(bench_json.read_text())
    if bench.get("weights_sha256") != weights_sha256:
        return [], f"not measured for these weights (the last `make bench` timed other weights): run `make bench WEIGHTS=...` and export again"
    rows = [{"format": r["format"], "threads": r["threads"], "batch 1 p50 (ms)": f"{r['p50_ms']:.2f}",
             "batch 32 (img/s)": f"{r['batch32_img_per_s']:.0f}"}
            for r in bench["inference"]]
    shared = bench.get("contention") or {}
    noisy = "; NOISY: other work held the CPUs (bench.md), re-run `make bench` on a quiet machine" if shared.get("noisy") else ""
    return rows, f"`make bench` on {bench['date']}, {bench['machine']}{' (QUICK)' if bench['quick'] else ''}{noisy}"


def fitted_on(cal: dict) -> str:
    """Whose val logits the temperature was fitted on."""
    if cal.get("fitted_with"):
        return (f"with the logits of `{cal['fitted_with']}`\n(a run of the recipe on train only: the shipped weights "
                "learnt val; `make temperature` records T)")
    return "with these weights' own logits"


def shown_path(weights: str) -> str:
    """The weights' path as the card prints it: relative to the project, or the file name alone
    (a card travels; this machine's folders mean nothing to its reader)."""
    path = Path(weights).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else path.name


def shipped_digest() -> str | None:
    """The sha256 recorded in the shipped weights file (None without one): only weights with this
    digest may have the shipped recipe, its seeds and the dog-emotion data on their card."""
    return torch.load(SHIPPED_WEIGHTS, weights_only=True).get("sha256") if SHIPPED_WEIGHTS.is_file() else None


def details(model, ckpt: dict, cal: dict, recipe: dict | None) -> str:
    spec = preprocess_spec(model.config.input_size, model.config.framing)
    size = model.config.input_size
    framed = (f"the whole photo scaled to {size} x {size} px, aspect not kept (what MediaPipe's ImageClassifier does "
              "with an app's bitmap)" if spec["framing"] == "squash" else
              f"shorter side resized to {spec.get('resize_shorter_side')} px, centre-cropped to {size} px")
    if recipe is not None:
        training = (f"the shipped recipe (the defaults of `python -m train.dog_emotion train`, `make train`): {recipe['epochs']} epochs, distilled from "
                    f"{', '.join(f'`{t}`' for t in recipe.get('teacher', [])) or 'no teacher'}")
    else:
        training = "not the shipped weights: the weights file's own run (its run folder's args.toml has the options)"
    temperature = (f"calibrated by a temperature of {cal['temperature']:.3f} folded into the classifier" if cal
                   else "as trained (not calibrated)")
    return f"""## Model details

- A depthwise-separable CNN (`mobile_model.MobileCNN`, config `{config_name(model.config)}`) trained from scratch
  in PyTorch; no pretrained weights anywhere. **{sum(p.numel() for p in model.parameters()):,} parameters**
  as it ships (BatchNorm folded), {count_macs(model) / 1e6:.2f} M multiply-accumulates per photo
  (flip averaging: the network averages each photo with its mirror image).
- Input: one RGB photo, made upright from its EXIF orientation, {framed}, scaled to [0, 1] and
  normalised with mean {spec['mean']} and std {spec['std']} (`{METADATA_SIDECAR}` has the record).
- Output: logits for {', '.join(ckpt['classes'])}; softmax gives probabilities {temperature}. The app forms
  (`*.app.*`) take the uint8 {size} x {size} image itself and give those probabilities; the `.app.tflite`
  carries LiteRT's standard metadata (labels file, image input, probabilities out) for MediaPipe.
- Training: {training}; code MIT-licensed (LICENSE).
"""


def scope(model, classes: list[str]) -> str:
    k = len(classes)
    return f"""## Intended use

Telling which of {k} classes ({', '.join(classes)}) a single photo shows, on a phone or in a
browser, for hobby apps, teaching and experiments with tiny models. The probabilities are meant
to be read as confidence (see Calibration).

## Out-of-scope use

Anything with consequences for an animal or a person: veterinary or behavioural diagnosis,
judging whether a dog is dangerous. Photos outside the classes: the model has no "none of these"
answer and gives one of the {k} labels to anything. What it said about pictures that are not of
its subject (this run, calibrated model):

{markdown_table(out_of_scope_rows(model, classes))}
"""


def training_data(recipe: dict | None) -> str:
    if recipe is None:
        return ("## Training data\n\nThe data these weights were trained on; this card can say nothing of it "
                "(the shipped model's card describes the Dog Emotion set).\n\n")
    picked = ("The shipped weights were trained on train + val (the recipe was fixed in advance, so no epoch or recipe "
              "was picked on val)" if recipe.get("train_on") == "train+val" else "Val picked the training recipe")
    return f"""## Training data

The public Kaggle "Dog Emotion" set ([{DATA_URL}]({DATA_URL}), under the terms its page states):
byte-identical files removed, near-duplicates (difference hash within 20 of 256 bits) reduced to
one image so that no picture appears in two splits, re-encoded as RGB JPEG with the shorter side
at 128 px; split per class by SHA-1: test 100, val 100, the rest train (`make prepare-data`).
{picked}; test was read once per final candidate.

"""


def evaluation(cm: np.ndarray, classes: list[str], tests: list[float]) -> str:
    n, correct = int(cm.sum()), int(cm.trace())
    lo, hi = wilson_interval(correct, n)
    confusion = [{"true \\ predicted": c, **{p: int(v) for p, v in zip(classes, cm[i])},
                  "accuracy": percent(100 * cm[i, i] / cm[i].sum() if cm[i].sum() else None)} for i, c in enumerate(classes)]
    seeds = ""
    if tests:
        mean, sd = mean_sd(tests)
        seeds = (f"\n- The recipe's seeds (run log, `docs/runs.jsonl`): test {', '.join(f'{t:.2f}' for t in tests)}%\n"
                 f"  (mean {mean:.2f}, sd {sd:.2f}). One seed's number is a draw: expect the mean on new photos.")
    return f"""## Evaluation

- Test accuracy of this file: **{100 * correct / n:.2f}%** on {n} photos (95% Wilson interval {lo:.1f}-{hi:.1f}%).{seeds}

Per class and confusion matrix on test (rows: true class):

{markdown_table(confusion)}
"""


def calibration(cal: dict, trained_on_val: bool) -> str:
    if not cal:
        return "## Calibration\n\nNot calibrated in this export (`--no-calibrate`, or the export's NOTE says why).\n"
    before, after = cal["before"], cal["after"]
    caveat = ("These weights were trained on val as well, so T was fitted on photos the model had learnt from, "
              "where it is more accurate than on new ones: read the test numbers above before trusting it; "
              "`make export ARGS=--no-calibrate` exports the logits as trained.\n"
              if trained_on_val and not cal.get("fitted_with") else "")
    return f"""## Calibration

Temperature T = {cal['temperature']:.3f}, the negative log-likelihood minimum on val {fitted_on(cal)},
folded into the last linear layer (weight and bias divided by T; no parameter added). On test:
NLL {before['nll']:.3f} -> {after['nll']:.3f}, expected calibration error ({len(before['bins'])} non-empty of 15 bins)
{100 * before['ece']:.1f}% -> {100 * after['ece']:.1f}%, mean confidence {100 * before['mean_confidence']:.1f}% ->
{100 * after['mean_confidence']:.1f}% against an accuracy of {100 * after['accuracy']:.1f}%. Reliability diagram:
`reliability.png` in the export folder ([docs/reliability.png](docs/reliability.png) for the shipped model).
{caveat}"""


def which_file(kept: list[dict]) -> str:
    return "".join(f"- `{r['file']}`: {FORMATS[r['format']].use}\n" for r in kept)


def formats_section(rows: list[dict], info: dict, speed: list[dict], speed_source: str) -> str:
    kept = [r for r in rows if r["format"] != "eager" and r.get("kept", "yes") == "yes"]
    formats = [{"format": r["format"], "file": r["file"], "size (kB)": r["size (kB)"],
                "max abs logit diff vs PyTorch": f"{r['max abs logit diff']:.1e}",
                "test accuracy (%)": r["accuracy (%)"]} for r in kept]
    client = next((r for r in kept if "MediaPipe accuracy (%)" in r), None)
    in_client = "" if client is None else (
        f"\nIn MediaPipe Tasks' ImageClassifier (`{client['file']}`, the test photo files): **{client['MediaPipe accuracy (%)']}%** "
        f"with its default options, which scale the whole photo to the input (this model framed that way reads "
        f"{client['eager framed as MediaPipe (%)']}% in PyTorch, the same label on {client['same label as eager framed alike (%)']}% "
        "of the photos)" + (f"; **{client['MediaPipe, centre-crop region (%)']}%** with the model's centre crop passed as "
                            "`region_of_interest` (docs/deployment.md)" if "MediaPipe, centre-crop region (%)" in client else "") + ".\n")
    return f"""
## Formats

Every file was checked against eager PyTorch on the test split before it was kept (FP32: every
logit within {info['fp32_atol']:g}; INT8: at most 1 point of accuracy lost). CPU of the check: {info['cpu']}.

{markdown_table(formats)}{in_client}
Speed ({speed_source}):

{markdown_table(speed) if speed else ''}
Which file goes where (`python -m export.formats` lists every format):

{which_file(kept)}
Every file holds the class names and the preprocessing inside it (ONNX metadata, an ExecuTorch
`metadata` method, a LiteRT metadata buffer, a TorchScript extra file), and `{METADATA_SIDECAR}`
holds the same record as JSON for the web (docs/deployment.md); the `.app.tflite` also carries
LiteRT's standard metadata (labels file, image input, probabilities out). The app forms (`*.app.*`)
take the uint8 RGB image (NHWC) and give the probabilities; their "max abs logit diff" is in
probability. LiteRT in this export: {info['tflite']}.
"""


def render(model, ckpt: dict, rows: list[dict], info: dict, test_logits: np.ndarray, test_labels: np.ndarray,
           weights: str, bench_json: Path = ARTIFACTS / "bench" / "bench.json") -> str:
    """The card of the exported model: every number from this export, the bench of these weights
    and, for the shipped weights only, the shipped recipe's seeds and data."""
    classes = ckpt["classes"]
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(cm, (test_labels, test_logits.argmax(1)), 1)
    shipped = ckpt.get("sha256") is not None and ckpt.get("sha256") == shipped_digest()
    recipe = recipe_record("")["values"] if shipped else None
    tests = [r["test"] for r in seed_rows(recipe)] if shipped else []
    lo, hi = wilson_interval(int(cm.trace()), int(cm.sum()))
    spread = f"; the recipe's seeds have spread over {max(tests) - min(tests):.2f} points on test" if len(tests) > 1 else ""
    speed, speed_source = speed_rows(bench_json, ckpt.get("sha256"))
    return f"""# Model card: {'dog-emotion' if shipped else 'image'} classifier `{config_name(model.config)}`

Generated by `make export` from `{shown_path(weights)}` and the measurements of that run; do not edit by hand.

{details(model, ckpt, info.get("calibration") or {}, recipe)}
{scope(model, classes)}{training_data(recipe)}{evaluation(cm, classes, tests)}{calibration(info.get("calibration") or {}, ckpt["metrics"].get("train_on") == "train+val" or shipped)}{formats_section(rows, info, speed, speed_source)}
## Limitations and known failure modes

- {len(classes)} labels for any input, including none of the classes, several subjects, cartoons (the table above).
- {confusions(cm, classes)}
- {int(cm.sum())} test photos: the 95% interval above is {hi - lo:.1f} points wide{spread}.

## How to reproduce

`make evaluate` (test accuracy and interval), `make profile` (parameters and MACs), `make export`
(every format, parity, calibration and this card, in the export folder), `make bench` (speed),
`make train` (the model from scratch; results differ by seed, as the Evaluation section says).
"""


def publish(export_dir: Path, dest: Path = REPO_ROOT / "MODEL_CARD.md") -> Path:
    """Copy an export's card to the project's MODEL_CARD.md, only when the export is of the shipped
    weights: the tracked card describes the model that ships, nothing else."""
    digest, shipped = exported_from(export_dir), shipped_digest()
    try:
        card = (export_dir / dest.name).read_text()
    except OSError as e:
        raise DataError(f"{export_dir}: not a complete export ({e}); run `make export` first") from None
    if digest != shipped:
        raise DataError(f"{export_dir}: exported from other weights (sha256 {str(digest)[:12]}), not the shipped "
                        f"{SHIPPED_WEIGHTS.name} ({str(shipped)[:12]}): {dest} stays as it is")
    if "not measured" in card:
        print(f"NOTE: the card has no speed table: `make bench`, then `make export` and `make model-card` again")
    return save_text(card, dest)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Copy the export's MODEL_CARD.md to the project's, if it is of the shipped weights.")
    ap.add_argument("--export-dir", default=str(ARTIFACTS / "export"), help="folder of `make export` (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        print(f"wrote {publish(Path(args.export_dir))}")


if __name__ == "__main__":
    main()
