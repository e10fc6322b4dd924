"""Export the dog-emotion model to every deployment format, each verified before it is kept.

    python -m export.export [--weights weights/dog_emotion.pkl] [--data DIR] [--out artifacts/export]   # make export

Formats: TorchScript, ONNX FP32, onnxruntime Mobile's .ort (FP32), INT8 ONNX, and ExecuTorch
programs for XNNPACK (.pte, FP32 and INT8; export/executorch_export.py). Every file is written
under a temporary name, checked (loads, agrees with eager PyTorch on the real test split), and
only then renamed into place. FP32 formats must agree with eager on every image within 1e-4 on
the logits; INT8 may lose at most 1 accuracy point against FP32. The parity table (Markdown +
JSON) lands beside the files.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.profile import profile, report
from export.executorch_export import export_pte
from export.runtimes import FORMATS, batched_logits, make_runner
from train.checkpoint import load_for_export
from train.common import (ARTIFACTS, SHIPPED_WEIGHTS, ProjectError, accuracy, command_errors, cpu_description,
                          markdown_table, save_json, save_text, temp_path)
from train.data import DEFAULT_DATA, check_data_root, eval_batches, load_folder, preprocess_spec, storage_size

OPSET = 18
FP32_ATOL = 1e-4
INT8_MAX_DROP = 1.0  # accuracy points
PTE_INT8_AGREEMENT = 95.0  # % of test images with the FP32 label
METADATA_SIDECAR = "dog_emotion.meta.json"  # the ONNX metadata record as JSON: for the .pte files and the web demo


class ExportError(ProjectError):
    """A format that could not be written or did not match eager PyTorch; nothing is kept of it."""


# ---------------------------------------------------------------- the exports

def export_torchscript(model, tmp: Path) -> list[str]:
    x = torch.zeros(1, 3, model.config.input_size, model.config.input_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
        torch.jit.save(traced, str(tmp))
    # torch.jit is deprecated in torch 2.14; TorchScript stays for apps that still load it, and the
    # export prints the warnings instead of hiding them
    return sorted({str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning, UserWarning))})


def metadata(model, ckpt: dict) -> dict[str, str]:
    # the preprocessing this code does now (the weights file's record is from when it was saved)
    return {"classes": json.dumps(ckpt["classes"]), "preprocess": json.dumps(preprocess_spec(model.config.input_size)),
            "input_name": "input", "output_name": "logits", "output": "logits (apply softmax for probabilities)",
            "params": str(ckpt["params"]), "config": json.dumps(model.config.to_dict())}


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Model-level metadata a phone app can read; the exporter's per-node debug metadata (stack
    traces, FX node text: over a third of a file this small) is dropped."""
    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def export_onnx(model, tmp: Path, meta: dict) -> None:
    size = model.config.input_size
    x = torch.zeros(2, 3, size, size)
    torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=OPSET, input_names=["input"],
                      output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                      external_data=False, verbose=False)
    set_metadata(tmp, meta)


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
    def __init__(self, images_uint8: torch.Tensor, input_size: int, max_batch: int = 32):
        # batches of one size: the histogram calibrators (Percentile) stack them and fail on a short last one
        batch = max(b for b in range(1, max_batch + 1) if len(images_uint8) % b == 0)
        self.batches = [x.numpy() for x in eval_batches(images_uint8, input_size, batch)]
        self.it = iter(self.batches)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {"input": b}

    def rewind(self):
        self.it = iter(self.batches)


# INT8 settings measured side by side: (activation, weight) types, per-channel weights, 7-bit
# weights (reduce_range), and how activation ranges are calibrated. On x86 CPUs without VNNI,
# onnxruntime's u8 x s8 kernels sum pairs of products in 16 bits and can saturate, so a U8S8/S8S8
# model reads differently on CPUs with and without VNNI; U8U8, and U8S8 with 7-bit weights, cannot
# saturate. Only those are eligible to be kept, so the same weights give the same INT8 file and
# accuracy on every x86 CPU; they are also calibrated by percentile (99.999% of the values, which
# ignores a few outliers). Entropy calibration is not listed: in onnxruntime 1.30 it wrote files
# byte-identical to MinMax's for the shipped model (docs/deployment.md).
class QuantSetting(NamedTuple):
    name: str
    activation: QuantType
    weight: QuantType
    per_channel: bool
    reduce_range: bool
    vnni_independent: bool
    calibration: CalibrationMethod = CalibrationMethod.MinMax


U8, S8, PERCENTILE = QuantType.QUInt8, QuantType.QInt8, CalibrationMethod.Percentile
QUANT_SETTINGS = [
    QuantSetting("U8S8 per-tensor", U8, S8, False, False, False),
    QuantSetting("U8S8 per-channel", U8, S8, True, False, False),
    QuantSetting("S8S8 per-tensor", S8, S8, False, False, False),
    QuantSetting("S8S8 per-channel", S8, S8, True, False, False),
    QuantSetting("U8S8 per-tensor, 7-bit weights", U8, S8, False, True, True),
    QuantSetting("U8S8 per-channel, 7-bit weights", U8, S8, True, True, True),
    QuantSetting("U8U8 per-tensor", U8, U8, False, False, True),
    QuantSetting("U8U8 per-channel", U8, U8, True, False, True),
    QuantSetting("U8S8 per-tensor, 7-bit weights, percentile", U8, S8, False, True, True, PERCENTILE),
    QuantSetting("U8S8 per-channel, 7-bit weights, percentile", U8, S8, True, True, True, PERCENTILE),
    QuantSetting("U8U8 per-tensor, percentile", U8, U8, False, False, True, PERCENTILE),
    QuantSetting("U8U8 per-channel, percentile", U8, U8, True, False, True, PERCENTILE),
]


def quantize_int8(prepared: Path, tmp: Path, reader: ImageReader, setting: QuantSetting, meta: dict) -> None:
    """`prepared`: the FP32 file after quant_pre_process, made once for all settings."""
    reader.rewind()
    quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                    per_channel=setting.per_channel, reduce_range=setting.reduce_range,
                    activation_type=setting.activation, weight_type=setting.weight,
                    calibrate_method=setting.calibration)
    set_metadata(tmp, meta)


def parity_row(fmt: str, path: Path | None, logits: np.ndarray, eager: np.ndarray, labels: np.ndarray) -> dict:
    """One row of the parity table; `path` is the file as written (under its temporary name)."""
    return {"format": fmt, "file": FORMATS[fmt] if path else "-",
            "size (kB)": round(path.stat().st_size / 1024, 1) if path else "-",
            "max abs logit diff": float(np.abs(logits - eager).max()),
            "top-1 agreement (%)": round(accuracy(logits, eager.argmax(1)), 2),
            "accuracy (%)": round(accuracy(logits, labels), 2)}


def int8_fidelity(row: dict) -> tuple:
    """How closely an INT8 file reproduces FP32 on val: the larger, the closer."""
    return row["val agreement (%)"], -row["val mean abs logit diff"]


def run_export(weights: str, data: str, out: Path, calib_count: int, seed: int,
               flip_average: bool = True) -> tuple[list[dict], dict]:
    model, ckpt = load_for_export(weights, flip_average)
    size = model.config.input_size
    try:
        out.mkdir(parents=True, exist_ok=True)
        temp_path(out / "probe").unlink()
    except OSError as e:
        raise ExportError(f"{out}: output folder is not writable ({e.strerror})") from None
    root = check_data_root(data)
    test = load_folder(root / "test", ckpt["classes"], storage_size(size), ARTIFACTS / "cache")
    val = load_folder(root / "val", ckpt["classes"], storage_size(size), ARTIFACTS / "cache")
    train = load_folder(root / "train", ckpt["classes"], storage_size(size), ARTIFACTS / "cache")
    calib = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:calib_count]]
    labels = test.labels.numpy()
    eager = batched_logits(make_runner("eager", model=model), test.images, size)
    rows = [parity_row("eager", None, eager, eager, labels)]
    meta = metadata(model, ckpt)

    def keep_if_equal(fmt: str, tmp: Path) -> dict:
        """Rename tmp into place only if it agrees with eager on every test image within FP32_ATOL."""
        row = parity_row(fmt, tmp, batched_logits(make_runner(fmt, tmp), test.images, size), eager, labels)
        if row["top-1 agreement (%)"] < 100 or row["max abs logit diff"] > FP32_ATOL:
            raise ExportError(f"{fmt}: differs from eager (max diff {row['max abs logit diff']:.2e}, "
                              f"agreement {row['top-1 agreement (%)']}%): not written")
        os.replace(tmp, out / FORMATS[fmt])
        return row

    temps: list[Path] = []

    def new_temp(name: str) -> Path:
        temps.append(temp_path(out / name))
        return temps[-1]

    try:
        tmp = new_temp(FORMATS["torchscript"])
        ts_warnings = export_torchscript(model, tmp)
        for w in ts_warnings:
            print(f"torch warning (TorchScript export): {w}")
        rows.append(keep_if_equal("torchscript", tmp))

        tmp = new_temp(FORMATS["onnx_fp32"])
        export_onnx(model, tmp, meta)
        rows.append(keep_if_equal("onnx_fp32", tmp))
        fp32_path, fp32_acc = out / FORMATS["onnx_fp32"], rows[-1]["accuracy (%)"]

        tmp = new_temp(FORMATS["ort_fp32"])
        convert_to_ort(fp32_path, tmp)
        rows.append(keep_if_equal("ort_fp32", tmp))

        # ExecuTorch: FP32 must agree like every FP32 format; INT8 within INT8_MAX_DROP points of
        # FP32 and on >= PTE_INT8_AGREEMENT % of the images, or it is not written
        tmp = new_temp(FORMATS["pte_fp32"])
        pte_portable = export_pte(model, tmp)
        rows.append(keep_if_equal("pte_fp32", tmp))
        tmp = new_temp(FORMATS["pte_int8"])
        pte_int8_portable = export_pte(model, tmp, list(eval_batches(calib, size, 32)))
        r = parity_row("pte_int8", tmp, batched_logits(make_runner("pte_int8", tmp), test.images, size), eager, labels)
        r["int8 setting"] = "XNNPACKQuantizer, symmetric per-channel"
        r["kept"] = "yes" if (fp32_acc - r["accuracy (%)"] <= INT8_MAX_DROP
                              and r["top-1 agreement (%)"] >= PTE_INT8_AGREEMENT) else "no"
        if r["kept"] == "yes":
            os.replace(tmp, out / FORMATS["pte_int8"])
        else:
            print(f"WARNING: INT8 .pte not written: accuracy {r['accuracy (%)']}% vs FP32 {fp32_acc}%, "
                  f"agreement {r['top-1 agreement (%)']}%")
        rows.append(r)
        save_json(meta, out / METADATA_SIDECAR)

        # INT8: every setting measured; of the VNNI-independent ones, the one most faithful to FP32
        # on val is kept: the most val images with FP32's label, then the smallest mean logit
        # difference (never chosen on test; val accuracy above FP32's own is noise, not skill)
        candidates = []
        eager_val = batched_logits(make_runner("eager", model=model), val.images, size)
        prepared, reader = new_temp("int8-prepared.onnx"), ImageReader(calib, size)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        for setting in QUANT_SETTINGS:
            tmp = new_temp(FORMATS["onnx_int8"])
            quantize_int8(prepared, tmp, reader, setting, meta)
            run = make_runner("onnx_int8", tmp)
            r = parity_row("onnx_int8", tmp, batched_logits(run, test.images, size), eager, labels)
            r["int8 setting"] = setting.name
            r["same on every x86"] = "yes" if setting.vnni_independent else "no"
            val_logits = batched_logits(run, val.images, size)
            r["val accuracy (%)"] = round(accuracy(val_logits, val.labels.numpy()), 2)
            r["val agreement (%)"] = round(accuracy(val_logits, eager_val.argmax(1)), 2)
            r["val mean abs logit diff"] = round(float(np.abs(val_logits - eager_val).mean()), 5)
            candidates.append((r, tmp, setting.vnni_independent))
            print(f"int8 {setting.name}: val agreement {r['val agreement (%)']}% (accuracy {r['val accuracy (%)']}%), "
                  f"test accuracy {r['accuracy (%)']}%, agreement {r['top-1 agreement (%)']}%")
        best, best_tmp, _ = max((c for c in candidates if c[2]), key=lambda c: int8_fidelity(c[0]))
        for r, t, _ in candidates:
            r["kept"] = "yes" if t == best_tmp else "no"
        os.replace(best_tmp, out / FORMATS["onnx_int8"])
    finally:  # whatever failed or was not kept: no temp file stays behind
        for t in temps:
            t.unlink(missing_ok=True)
    rows += [r for r, _, _ in candidates]
    drop = fp32_acc - best["accuracy (%)"]
    if drop > INT8_MAX_DROP:
        print(f"WARNING: INT8 loses {drop:.2f} accuracy points against FP32 (limit {INT8_MAX_DROP}); "
              f"the quantization recipe needs work")
    return rows, {"torchscript_warnings": ts_warnings, "int8_drop_points": round(drop, 2), "opset": OPSET,
                  "int8_kept": best["int8 setting"], "cpu": cpu_description(),
                  "pte_ops_outside_xnnpack": {"fp32": pte_portable, "int8": pte_int8_portable},
                  "calibration_images": len(calib), "flip_average": model.config.flip_average,
                  "test_images": len(labels), "fp32_atol": FP32_ATOL}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights .pkl (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="split root; test for parity, train for calibration (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "export"), help="output folder (default: %(default)s)")
    ap.add_argument("--calib-count", type=int, default=1000, help="training images for INT8 calibration (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed for picking calibration images (default: %(default)s)")
    ap.add_argument("--no-flip-average", action="store_true",
                    help="export without the built-in mirror-image averaging: half the compute and no flip "
                         "operator outside XNNPACK, at the accuracy the parity table shows (default: off)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    with command_errors():
        model, _ = load_for_export(args.weights, not args.no_flip_average)
        print(report(profile(model)))
        rows, info = run_export(args.weights, args.data, out, args.calib_count, args.seed, not args.no_flip_average)
    cols = ["format", "file", "size (kB)", "max abs logit diff", "top-1 agreement (%)", "accuracy (%)",
            "int8 setting", "same on every x86", "val agreement (%)", "val accuracy (%)", "kept"]
    table = markdown_table(rows, cols)
    save_json({"rows": rows, **info}, out / "parity.json")
    flip = "in the graph" if info["flip_average"] else "OFF (--no-flip-average: not in any exported file)"
    save_text(f"# Export parity on the test split ({info['test_images']} images)\n\nMirror-image averaging: {flip}. "
              f"CPU: {info['cpu']}. ONNX opset "
              f"{OPSET}, dynamo exporter, dynamic batch axis. INT8: onnxruntime static quantization, QDQ, "
              f"{info['calibration_images']} calibration images from train; kept: {info['int8_kept']} (of the settings "
              f"that give the same result with and without VNNI, the one whose labels agree with FP32's on the most val "
              f"images).\n\n{table}", out / "parity.md")
    print("\n" + table)
    print(f"operators left outside XNNPACK in the .pte programs (portable kernels): {info['pte_ops_outside_xnnpack']}")
    print(f"wrote {', '.join(FORMATS.values())}, {METADATA_SIDECAR}, parity.md, parity.json to {out}")


if __name__ == "__main__":
    main()
