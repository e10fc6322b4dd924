"""Export the dog-emotion model to every deployment format, each verified before it is kept.

    python -m export.export [--weights weights/dog_emotion.pkl] [--data DIR] [--out artifacts/export]   # make export

Formats: TorchScript, ONNX FP32, onnxruntime Mobile's .ort (FP32), INT8 ONNX, ExecuTorch
programs for XNNPACK (.pte, FP32 and INT8; export/executorch_export.py) and LiteRT's .tflite
(FP32 and INT8; export/litert_export.py, run in the converter's own environment, .venv-litert,
and left out with a note when that is not installed). Every file is written
under a temporary name, checked (loads, agrees with eager PyTorch on the real test split), and
only then renamed into place. FP32 formats must agree with eager on every image within 1e-4 on
the logits; INT8 may lose at most 1 accuracy point against FP32. The parity table (Markdown +
JSON), the metadata sidecar (with the weights' digest) and the model card land beside the files.
The set is built in a staging folder beside --out and takes its name by rename: a failed or
stopped export leaves the previous set as it was, never files of two models side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.profile import profile, report
from export.calibration import CalibrationError, calibration_report, fit_temperature, fold_temperature, plot_reliability
from export import model_card
from export.executorch_export import export_pte
from export.litert_export import candidate_name, embed_metadata
from export.mediapipe_client import CLIENT_FRAMING, classify_labelled
from export.app_form import AppForm, app_metadata
from export.formats import FORMAT_TABLE, FORMATS, FP32, INT8, LITERT_ENV, METADATA_SIDECAR, with_needs
from export.runtimes import batched_logits, make_runner, model_inputs
from train.checkpoint import load_for_export, load_weights, save_weights
from train.common import (ARTIFACTS, REPO_ROOT, SHIPPED_WEIGHTS, ProjectError, accuracy, at_least, command_errors, cpu_description,
                          markdown_table, save_json, save_text, save_torch, temp_path)
from train.data import DEFAULT_DATA, DecodedSplit, check_data_root, class_names, load_for_model, preprocess_spec

OPSET = 18
FP32_ATOL = 1e-4
INT8_MAX_DROP = 1.0  # accuracy points
CLIENT_MAX_GAP = 1.5  # accuracy points between an app client (MediaPipe) on the photo files and eager on the decoded split
INT8_MIN_AGREEMENT = 95.0  # % of test images with the FP32 label
MODEL_CARD = "MODEL_CARD.md"                 # the exported model's card, written into the set
CALIBRATED_WEIGHTS = "dog_emotion.pkl"      # the weights with the temperature folded in: for `predict --weights`
LITERT_PYTHON = REPO_ROOT / ".venv-litert" / "bin" / "python"   # the LiteRT converter's environment (make venv-litert)
LITERT_MISSING = f"the LiteRT converter is not installed ({LITERT_PYTHON} not found): `make venv-litert` installs it"


class ExportError(ProjectError):
    """A format that could not be written or did not match eager PyTorch; nothing is kept of it."""


# ---------------------------------------------------------------- the exports

def export_torchscript(model, tmp: Path, meta: dict) -> list[str]:
    x = torch.zeros(1, 3, model.config.input_size, model.config.input_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
        # the metadata record rides along as an extra file (torch.jit.load(_extra_files=...) reads it)
        torch.jit.save(traced, str(tmp), _extra_files={METADATA_SIDECAR: json.dumps(meta)})
    # torch.jit is deprecated in torch 2.14; TorchScript stays for apps that still load it, and the
    # export prints the warnings instead of hiding them
    return sorted({str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning, UserWarning))})


def metadata(model, ckpt: dict) -> dict:
    """The record an app reads: plain JSON in the sidecar; in the ONNX file each value is a string
    (ONNX metadata holds strings only), the lists and objects as JSON text."""
    # the preprocessing this code does now (the weights file's record is from when it was saved)
    return {"classes": ckpt["classes"], "preprocess": preprocess_spec(model.config.input_size, model.config.framing),
            "input_name": "input", "output_name": "logits", "output": "logits (apply softmax for probabilities)",
            "params": ckpt["params"], "config": model.config.to_dict(),
            "weights_sha256": ckpt["sha256"]}   # which weights every file of the set came from (bench checks it)


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Model-level metadata a phone app can read; the exporter's per-node debug metadata (stack
    traces, FX node text: over a third of a file this small) is dropped."""
    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v if isinstance(v, str) else json.dumps(v))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def export_onnx(model, tmp: Path, meta: dict, example: torch.Tensor | None = None) -> None:
    size = model.config.input_size
    x = torch.zeros(2, 3, size, size) if example is None else example
    torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=OPSET, input_names=[meta["input_name"]],
                      output_names=[meta["output_name"]], dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                      external_data=False, verbose=False)
    set_metadata(tmp, meta)


def write_onnx_app(job: "ExportJob", tmp: Path) -> None:
    size = job.size
    export_onnx(AppForm(job.model).eval(), tmp, job.record("onnx_app"), torch.zeros(2, size, size, 3, dtype=torch.uint8))


def convert_to_ort(onnx_path: Path, tmp: Path) -> None:
    """onnxruntime Mobile's .ort format, via onnxruntime's own converter (offline, no download)."""
    with tempfile.TemporaryDirectory(dir=tmp.parent) as work:
        done = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_path),
                               "--output_dir", work, "--optimization_style", "Fixed"], capture_output=True, text=True)
        converted = Path(work) / (onnx_path.stem + ".ort")
        if done.returncode != 0 or not converted.is_file():
            raise ExportError(f"{onnx_path}: .ort conversion failed: {done.stderr.strip()[-500:]}")
        os.replace(converted, tmp)


class ImageReader(CalibrationDataReader):
    def __init__(self, images_uint8: torch.Tensor, input_size: int, fmt: str, input_name: str, max_batch: int = 32):
        # batches of one size, as the search that chose ONNX_INT8 calibrated with
        batch = max(b for b in range(1, max_batch + 1) if len(images_uint8) % b == 0)
        self.batches = model_inputs(fmt, images_uint8, input_size, batch)   # as `fmt` takes them
        self.input_name = input_name

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {self.input_name: b}


# INT8 ONNX: one setting, the one a search over twelve kept for the shipped model (U8/S8
# activations, S8/U8 weights, per-tensor or per-channel, 7-bit weights, MinMax or percentile ranges;
# its table is in git history, docs/deployment.md): U8 activations, S8 per-channel weights in 7 bits,
# MinMax ranges. 7-bit weights cannot saturate the 16-bit pair sums of onnxruntime's u8 x s8 kernels on
# CPUs without VNNI, so the file reads the same on every x86 CPU; percentile ranges cost 12 GB of
# memory and were never kept.
class QuantSetting(NamedTuple):
    name: str
    activation: QuantType
    weight: QuantType
    per_channel: bool
    reduce_range: bool


ONNX_INT8 = QuantSetting("U8S8 per-channel, 7-bit weights, MinMax", QuantType.QUInt8, QuantType.QInt8, True, True)


def quantize_int8(prepared: Path, tmp: Path, reader: ImageReader, meta: dict) -> None:
    """ONNX_INT8 of `prepared` (the FP32 file after quant_pre_process), calibrated on `reader`'s images."""
    quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                    per_channel=ONNX_INT8.per_channel, reduce_range=ONNX_INT8.reduce_range,
                    activation_type=ONNX_INT8.activation, weight_type=ONNX_INT8.weight,
                    calibrate_method=CalibrationMethod.MinMax)
    set_metadata(tmp, meta)


def parity_row(fmt: str, path: Path | None, logits: np.ndarray, eager: np.ndarray, labels: np.ndarray) -> dict:
    """One row of the parity table; `path` is the file as written (under its temporary name)."""
    return {"format": fmt, "file": FORMATS[fmt].file if path else "-",
            "size (kB)": round(path.stat().st_size / 1000, 1) if path else "-",  # kB = 1,000 bytes everywhere
            "max abs logit diff": float(np.abs(logits - eager).max()),
            "top-1 agreement (%)": round(accuracy(logits, eager.argmax(1)), 2),
            "accuracy (%)": round(accuracy(logits, labels), 2)}


# ---------------------------------------------------------------- one job, one rule, a table of formats

@dataclass
class ExportJob:
    """What every exporter reads: the model, its metadata record, the decoded splits, eager's logits."""
    model: torch.nn.Module
    meta: dict
    out: Path
    test: DecodedSplit              # parity is measured here
    calib: torch.Tensor             # INT8 calibration images, from train
    eager: np.ndarray               # eager PyTorch's logits on test: the reference
    calibration: dict = field(default_factory=dict)   # the temperature and what it did on test
    temps: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)          # what the writers report: warnings, ops outside XNNPACK
    formats: list = field(default_factory=list)        # the rows this export writes (export_all)
    data: Path = Path()                                # the split root: test for parity, train for calibration
    seconds: dict = field(default_factory=dict)        # each row's time to write and check

    @property
    def size(self) -> int:
        return self.model.config.input_size

    def record(self, fmt: str) -> dict:
        """The metadata record a format's file carries: the export's, or for an app form its own."""
        return app_metadata(self.meta) if FORMATS[fmt].app else self.meta

    def temp(self, name: str, folder: bool = False) -> Path:
        """A temporary file (or folder) beside the output, removed at the end whatever happens."""
        self.temps.append(temp_path(self.out / name, folder))
        return self.temps[-1]

    def check(self, fmt: str, path: Path) -> dict:
        """The file's parity row on test. An app form gives probabilities: they are compared with
        eager's softmax, so its 'max abs logit diff' is a difference in probability."""
        logits = batched_logits(make_runner(fmt, path), self.test.images, self.size, fmt)
        if FORMATS[fmt].app:
            return parity_row(fmt, path, np.exp(logits), torch.softmax(torch.from_numpy(self.eager), 1).numpy(),
                              self.test.labels.numpy())
        return parity_row(fmt, path, logits, self.eager, self.test.labels.numpy())


def refusal(row: dict, precision: str, fp32_accuracy: float) -> str:
    """The acceptance rule every format passes before it is kept ('' = kept). FP32: every test image
    within FP32_ATOL of eager's logits, and its label; INT8: at most INT8_MAX_DROP accuracy points
    under FP32 and FP32's label on at least INT8_MIN_AGREEMENT % of the test images."""
    if not np.isfinite(row["max abs logit diff"]):
        return "its logits are not finite"
    if precision == FP32 and (row["top-1 agreement (%)"] < 100 or row["max abs logit diff"] > FP32_ATOL):
        return f"differs from eager (max diff {row['max abs logit diff']:.2e}, agreement {row['top-1 agreement (%)']}%)"
    if precision == INT8 and (fp32_accuracy - row["accuracy (%)"] > INT8_MAX_DROP
                              or row["top-1 agreement (%)"] < INT8_MIN_AGREEMENT):
        return (f"accuracy {row['accuracy (%)']}% vs FP32 {fp32_accuracy}%, agreement {row['top-1 agreement (%)']}% "
                f"(limits: {INT8_MAX_DROP} points, {INT8_MIN_AGREEMENT}%)")
    return ""


def keep(job: ExportJob, fmt: str, tmp: Path, row: dict | None = None) -> dict:
    """Rename tmp into place if it passes the rule. A failed FP32 file stops the export (it would be
    a wrong model); a failed INT8 file is left out with a warning (the FP32 files still stand)."""
    row, precision = row or job.check(fmt, tmp), FORMATS[fmt].precision
    reason = refusal(row, precision, round(accuracy(job.eager, job.test.labels.numpy()), 2))
    if precision == INT8:
        row["kept"] = "no" if reason else "yes"
    if reason and precision == FP32:
        raise ExportError(f"{fmt}: {reason}: not written")
    if reason:
        print(f"WARNING: {fmt} not written: {reason}")
    else:
        os.replace(tmp, job.out / FORMATS[fmt].file)
    return row


def write_torchscript(job: ExportJob, tmp: Path) -> None:
    job.notes["torchscript"] = export_torchscript(job.model, tmp, job.meta)
    deprecated = [w for w in job.notes["torchscript"] if "deprecated" in w]
    if deprecated:   # three lines of torch's saying the same thing: one of ours (parity.json keeps theirs)
        print(f"NOTE: TorchScript is deprecated in torch {torch.__version__.split('+')[0]} ({len(deprecated)} warnings); "
              f"{FORMATS['torchscript'].file} is kept for apps that still load it")
    for w in sorted(set(job.notes["torchscript"]) - set(deprecated)):
        print(f"torch warning (TorchScript export): {w}")


def calibration_batches(job: ExportJob, fmt: str) -> list[torch.Tensor]:
    """The INT8 calibration images as `fmt` takes them (float NCHW, or an app form's uint8 crops)."""
    return [torch.from_numpy(x) for x in model_inputs(fmt, job.calib, job.size)]


PTE_INT8 = {"int8 setting": "XNNPACKQuantizer, symmetric per-channel"}


def write_pte(job: ExportJob, tmp: Path, fmt: str) -> None:
    """A .pte of any of the four rows: FP32 or INT8, the model or its app form."""
    f = FORMATS[fmt]
    model = AppForm(job.model).eval() if f.app else job.model
    job.notes[fmt] = export_pte(model, tmp, job.record(fmt), calibration_batches(job, fmt) if f.precision == INT8 else None,
                                app=f.app)


def litert_candidates(job: ExportJob) -> Path:
    """The .tflite candidates of the LiteRT rows the export was asked for (export/litert_export.py),
    made by one call in the converter's environment the first time a LiteRT row asks (its start is
    paid once); its (long) log is shown only when it fails."""
    if "litert" not in job.notes:
        asked = [FORMATS[f] for f in job.formats if FORMATS[f].runtime == "litert"]
        forms = sorted({"app" if f.app else "model" for f in asked}, reverse=True)
        int8 = ["--int8"] if any(f.precision == INT8 for f in asked) else []
        work, weights, calib = job.temp("litert", folder=True), job.temp("litert-input.pkl"), job.temp("litert-calibration.pt")
        save_weights(job.model, job.meta["classes"], weights)   # the model as this export has it (temperature folded in)
        save_torch(job.calib, calib)                            # the INT8 ONNX file's calibration images
        done = subprocess.run([str(LITERT_PYTHON), "-m", "export.litert_export", "--weights", str(weights),
                               "--calib", str(calib), "--out-dir", str(work), "--forms", *forms, *int8],
                              cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise ExportError(f"LiteRT conversion failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
        job.notes["litert"] = work
    return job.notes["litert"]


def write_tflite(job: ExportJob, tmp: Path, fmt: str) -> dict | None:
    """A .tflite of any of the four rows, its metadata record embedded; one an app client loads is
    checked in that client."""
    f = FORMATS[fmt]
    shutil.copy(litert_candidates(job) / candidate_name(f.app, f.precision == INT8), tmp)
    embed_metadata(tmp, job.record(fmt))
    columns = {"int8 setting": "ai-edge-quantizer static_wi8_ai8, moving-average ranges"} if f.precision == INT8 else {}
    return {**columns, **client_check(job, fmt, tmp)} if f.client else columns


def client_check(job: ExportJob, fmt: str, path: Path) -> dict:
    """The client an app runs the file in (MediaPipe's ImageClassifier, default options) on the test
    photo files themselves: it must load the file and name every class. Its accuracy is set beside
    eager's on the model's own framing and on the client's (the whole photo scaled to the input,
    `evaluate --framing squash`), with how often the client's label is eager's on the latter: that
    says whether `evaluate --framing squash` predicts the client. A gap over CLIENT_MAX_GAP points
    between the client and the model's own framing is said, with the framing that explains it."""
    classes, labels = job.meta["classes"], job.test.labels.numpy()
    try:
        named, top = classify_labelled(path, job.test.paths, classes)
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{fmt}: {FORMATS[fmt].client} refuses the file: {str(e).splitlines()[0][:300]}") from None
    if not named:
        raise ExportError(f"{fmt}: {FORMATS[fmt].client} does not name the classes from the file's labels")
    framed = job.test if job.model.config.framing == CLIENT_FRAMING else load_for_model(
        job.data / "test", classes, replace(job.model.config, framing=CLIENT_FRAMING), ARTIFACTS / "cache")
    as_client = batched_logits(make_runner("eager", model=job.model), framed.images, job.size).argmax(1)
    same = round(100 * float((top == as_client).mean()), 2)
    r = {"MediaPipe accuracy (%)": round(100 * float((top == labels).mean()), 2),
         "eager framed as MediaPipe (%)": round(100 * float((as_client == labels).mean()), 2),
         "same label as eager framed alike (%)": same}
    spec = job.meta["preprocess"]
    if spec["framing"] == "crop":   # the region an app passes to frame the photo as the model does
        _, cropped = classify_labelled(path, job.test.paths, classes, spec["input_size"] / spec["resize_shorter_side"])
        r["MediaPipe, centre-crop region (%)"] = round(100 * float((cropped == labels).mean()), 2)
        print(f"{fmt} in {FORMATS[fmt].client} with the model's centre crop as region_of_interest: "
              f"{r['MediaPipe, centre-crop region (%)']:.2f}%")
    gap = r["MediaPipe accuracy (%)"] - round(accuracy(job.eager, labels), 2)
    print(f"{fmt} in {FORMATS[fmt].client}'s ImageClassifier (default options, the photo files): "
          f"{r['MediaPipe accuracy (%)']:.2f}% ({gap:+.2f} points against eager on its own framing, "
          f"{job.model.config.framing}); eager framed as the client frames: {r['eager framed as MediaPipe (%)']:.2f}%, "
          f"the same label on {same:.2f}% of the photos")
    if abs(gap) > CLIENT_MAX_GAP:
        print(f"NOTE: {FORMATS[fmt].client} with its default options reads {abs(gap):.2f} points {'under' if gap < 0 else 'over'} "
              f"eager: it scales the whole photo to the input, and this model is framed by {job.model.config.framing}; "
              "an app passes the centre crop as region_of_interest (docs/deployment.md)")
    return r


def write_onnx_int8(job: ExportJob, tmp: Path, fmt: str) -> dict:
    """INT8 ONNX of the model or of its app form (ONNX_INT8), from its FP32 file, calibrated on the
    training images as that file takes them."""
    prepared, meta = job.temp(f"{fmt}-prepared.onnx"), job.record(fmt)
    quant_pre_process(str(job.out / FORMATS[FORMATS[fmt].needs[0]].file), str(prepared), skip_symbolic_shape=True)
    quantize_int8(prepared, tmp, ImageReader(job.calib, job.size, fmt, meta["input_name"]), meta)
    return {"int8 setting": ONNX_INT8.name}


def one_file(write, columns: dict | None = None):
    """The writer of a format with one candidate file: `write(job, tmp, fmt)` fills the temporary file,
    puts what the report needs in job.notes and returns None, or, where it chose among candidates
    (the INT8 .tflite), the parity columns of its choice; the file is then checked and kept by the rule."""
    def writer(job: ExportJob, fmt: str) -> list[dict]:
        tmp = job.temp(FORMATS[fmt].file)
        chosen = write(job, tmp, fmt) or {}
        return [keep(job, fmt, tmp, {**job.check(fmt, tmp), **(columns or {}), **chosen})]
    return writer


# The writer of every row of the formats registry (export/formats.py), called in the table's order:
# each returns the parity rows of what it measured, its file kept or refused by the rule.
WRITERS = {
    "torchscript": one_file(lambda job, tmp, fmt: write_torchscript(job, tmp)),
    "onnx_fp32": one_file(lambda job, tmp, fmt: export_onnx(job.model, tmp, job.meta)),
    "ort_fp32": one_file(lambda job, tmp, fmt: convert_to_ort(job.out / FORMATS["onnx_fp32"].file, tmp)),
    "onnx_app": one_file(lambda job, tmp, fmt: write_onnx_app(job, tmp)),
    "ort_app": one_file(lambda job, tmp, fmt: convert_to_ort(job.out / FORMATS["onnx_app"].file, tmp)),
    "onnx_int8": one_file(write_onnx_int8),
    "onnx_app_int8": one_file(write_onnx_int8),
    "pte_fp32": one_file(write_pte),
    "pte_app": one_file(write_pte),
    "pte_int8": one_file(write_pte, PTE_INT8),
    "pte_app_int8": one_file(write_pte, PTE_INT8),
    "tflite_fp32": one_file(write_tflite),
    "tflite_app": one_file(write_tflite),
    "tflite_int8": one_file(write_tflite),
    "tflite_app_int8": one_file(write_tflite),
}


def calibrate(model, ckpt: dict, val: DecodedSplit, test: DecodedSplit, weights: str) -> tuple[torch.nn.Module, dict]:
    """The model with a temperature folded into its classifier, and ECE and NLL on test before and
    after (temperature scaling moves no argmax: accuracy is unchanged). The temperature is the one
    the weights file records (fitted on a sibling's held-out val logits: export/calibration.py), or
    else one fitted on val with the model's own logits."""
    size = model.config.input_size
    run = make_runner("eager", model=model)
    test_logits = torch.from_numpy(batched_logits(run, test.images, size))
    recorded = ckpt.get("calibration")
    if recorded:
        temperature, fitted_with = float(recorded["temperature"]), recorded["fitted_with"]
    else:
        val_logits = torch.from_numpy(batched_logits(run, val.images, size))
        temperature, fitted_with = fit_temperature(val_logits, val.labels, f"{weights} on {len(val)} val photos"), None
    calibrated = fold_temperature(model, temperature)
    after = torch.from_numpy(batched_logits(make_runner("eager", model=calibrated), test.images, size))
    return calibrated, {"temperature": temperature, "fitted_with": fitted_with,
                        "before": calibration_report(test_logits, test.labels), "after": calibration_report(after, test.labels)}


def prepare_job(weights: str, data: str, out: Path, calib_count: int, seed: int, flip_average: bool,
                temperature: bool = True) -> ExportJob:
    model, ckpt = load_for_export(weights, flip_average)
    root = check_data_root(data)
    if sorted(ckpt["classes"]) != class_names(root):   # parity, calibration and the card's numbers need the model's own data
        raise ExportError(f"{weights} classifies {', '.join(ckpt['classes'])}, but {root} holds the classes "
                          f"{', '.join(class_names(root))}: pass the data the model was trained on "
                          f"(make export WEIGHTS={weights} DATA=<its split root>)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        temp_path(out / "probe").unlink()
    except OSError as e:
        raise ExportError(f"{out}: output folder is not writable ({e.strerror})") from None
    test, val, train = (load_for_model(root / s, ckpt["classes"], model.config, ARTIFACTS / "cache")
                        for s in ("test", "val", "train"))
    calib = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:calib_count]]
    calibration = {}
    if temperature and ckpt["metrics"].get("train_on") == "train+val" and not ckpt.get("calibration"):
        print(f"NOTE: not calibrated: {weights} trained on val, so its val logits would over-sharpen any temperature; "
              "`make temperature WEIGHTS=... SIBLING=<the recipe trained on train only>` records one to fold")
    elif temperature:
        try:
            model, calibration = calibrate(model, ckpt, val, test, weights)
        except CalibrationError as e:   # the export goes on, uncalibrated, and says why
            print(f"NOTE: not calibrated: {e}")
    if calibration:
        plot_reliability(calibration["before"], calibration["after"], calibration["temperature"], out / "reliability.png",
                         "a train-only sibling's val logits" if calibration["fitted_with"] else "val")
        save_weights(model, ckpt["classes"], out / CALIBRATED_WEIGHTS,
                     {**ckpt["metrics"], "temperature": calibration["temperature"]})
    eager = batched_logits(make_runner("eager", model=model), test.images, model.config.input_size)
    meta = {**metadata(model, ckpt), "temperature": calibration.get("temperature", 1.0), "calibrated": bool(calibration)}
    return ExportJob(model, meta, out, test, calib, eager, calibration=calibration, data=root)


def run_export(weights: str, data: str, out: Path, calib_count: int, seed: int,
               flip_average: bool = True, temperature: bool = True, formats=None) -> tuple[list[dict], dict]:
    """Every format of `weights` (or those in `formats` and the rows they start from; calibrated
    unless temperature=False) written, checked against eager on test and kept by the one rule, with
    its reports and model card, as one set: built in a staging folder beside `out` and swapped in by
    rename. A failed or stopped export leaves the previous set as it was; `out` is refused up front
    unless it is new, empty or an earlier export."""
    out = Path(out)
    check_export_folder(out)
    try:
        staging = temp_path(out, folder=True)
    except OSError as e:
        raise ExportError(f"{out}: output folder is not writable ({e.strerror})") from None
    try:
        start = time.perf_counter()
        job = prepare_job(weights, data, staging, calib_count, seed, flip_average, temperature)
        rows, info = export_all(job, with_needs(formats or FORMATS))
        info["total_seconds"] = round(time.perf_counter() - start, 1)   # with decoding, calibration and profile
        write_reports(job, rows, info, weights)
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows, info


def check_export_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA_SIDECAR).is_file():
        raise ExportError(f"--out {out}: holds files but no {METADATA_SIDECAR}, so it is not an earlier export; "
                          "an export replaces only its own sets: choose a new or empty folder (nothing was changed)")


def swap_in(staging: Path, out: Path) -> None:
    """The new set takes `out`'s name in one rename; the previous set waits as <out>.previous until it has."""
    previous = out.with_name(out.name + ".previous")
    if out.exists():
        shutil.rmtree(previous, ignore_errors=True)   # a leftover of an export stopped between the two renames
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def write_reports(job: ExportJob, rows: list[dict], info: dict, weights: str) -> None:
    """parity.json, parity.md and the model card of the exported model, into the set."""
    cols = ["format", "file", "size (kB)", "max abs logit diff", "top-1 agreement (%)", "accuracy (%)",
            "int8 setting", "kept", "MediaPipe accuracy (%)", "eager framed as MediaPipe (%)", "same label as eager framed alike (%)",
            "MediaPipe, centre-crop region (%)"]
    save_json({"rows": rows, **info}, job.out / "parity.json")
    flip = "in the graph" if info["flip_average"] else "OFF (--no-flip-average: not in any exported file)"
    save_text(f"# Export parity on the test split ({info['test_images']} images)\n\nMirror-image averaging: {flip}. "
              f"CPU: {info['cpu']}. ONNX opset "
              f"{OPSET}, dynamo exporter, dynamic batch axis. INT8: onnxruntime static quantization, QDQ, "
              f"{info['calibration_images']} calibration images from train, {ONNX_INT8.name} (the same on every x86 CPU); "
              f"kept: {info['int8_kept']}. LiteRT .tflite: {info['tflite']}. App forms (*_app: uint8 image in, probabilities out): "
              f"their max abs diff is in probability, against eager's softmax.\n\n{markdown_table(rows, cols)}",
              job.out / "parity.md")
    _, ckpt = load_weights(weights)
    save_text(model_card.render(job.model, ckpt, rows, info, job.eager, job.test.labels.numpy(), weights),
              job.out / MODEL_CARD)


def export_all(job: ExportJob, formats: list[str]) -> tuple[list[dict], dict]:
    """The rows of `formats` (with_needs order), each written by its writer."""
    out, job.formats = job.out, formats
    rows = [parity_row("eager", None, job.eager, job.eager, job.test.labels.numpy())]
    asked_litert = any(FORMATS[f].environment == LITERT_ENV for f in formats)
    litert = LITERT_PYTHON.is_file() and asked_litert
    if asked_litert and not litert:
        print(f"NOTE: no .tflite files: {LITERT_MISSING}")
    try:
        for name in formats:
            if FORMATS[name].environment == LITERT_ENV and not litert:
                continue
            start = time.perf_counter()
            rows += WRITERS[name](job, name)
            job.seconds[name] = round(time.perf_counter() - start, 1)   # the first LiteRT row pays the converter's run
            print(f"{name}: {job.seconds[name]} s", flush=True)
        save_json(job.meta, out / METADATA_SIDECAR)
    finally:  # whatever failed or was not kept: no temp file or folder stays behind
        for t in job.temps:
            shutil.rmtree(t) if t.is_dir() else t.unlink(missing_ok=True)
    fp32 = next((r for r in rows if r["format"] == "onnx_fp32"), None)
    kept = next((r for r in rows if r["format"] == "onnx_int8" and r["kept"] == "yes"), None)
    not_asked = "not asked for (--formats)"
    return rows, {"formats": formats, "seconds": job.seconds, "torchscript_warnings": job.notes.get("torchscript", []), "opset": OPSET,
                  "cpu": cpu_description(),
                  "int8_drop_points": round(fp32["accuracy (%)"] - kept["accuracy (%)"], 2) if kept else None,
                  "int8_kept": kept["int8 setting"] if kept else ("no: it failed the INT8 rule"
                                                                  if "onnx_int8" in formats else not_asked),
                  "pte_ops_outside_xnnpack": {f: job.notes[f] for f in formats if FORMATS[f].runtime == "executorch"},
                  "calibration_images": len(job.calib), "flip_average": job.model.config.flip_average,
                  "tflite": ("written and checked" if litert else f"not written: {LITERT_MISSING}") if asked_litert else not_asked,
                  "test_images": len(job.test), "fp32_atol": FP32_ATOL, "calibration": job.calibration}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights .pkl (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root; test for parity, train for calibration (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "export"), help="output folder (default: %(default)s)")
    ap.add_argument("--calib-count", type=at_least(1), default=1000, help="training images for INT8 calibration (default: %(default)s)")
    ap.add_argument("--seed", type=at_least(0), default=0, help="seed for picking calibration images (default: %(default)s)")
    ap.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS), metavar="FORMAT",
                    help="write only these rows of the formats table (and the rows they start from: an .ort its "
                         ".onnx, INT8 ONNX its FP32 file); `python -m export.formats` lists them (default: all)")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="export the logits as trained, without the temperature fitted on val (default: calibrated)")
    ap.add_argument("--no-flip-average", action="store_true",
                    help="export without the built-in mirror-image averaging: half the compute and no flip "
                         "operator outside XNNPACK, at the accuracy the parity table shows (default: off)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    with command_errors():
        model, _ = load_for_export(args.weights, not args.no_flip_average)
        print(report(profile(model)))
        rows, info = run_export(args.weights, args.data, out, args.calib_count, args.seed, not args.no_flip_average,
                                not args.no_calibrate, args.formats)
    print("\n" + (out / "parity.md").read_text().split("\n\n")[-1])
    print(f"operators left outside XNNPACK in the .pte programs (portable kernels): {info['pte_ops_outside_xnnpack']}")
    written = [f.file for f in FORMAT_TABLE if (out / f.file).is_file()]
    print(f"wrote {', '.join(written)}, {METADATA_SIDECAR}, parity.md, parity.json, {MODEL_CARD} to {out} "
          f"(one set; `make model-card` copies the card to the project's {MODEL_CARD} when these are the shipped weights)")


if __name__ == "__main__":
    main()
