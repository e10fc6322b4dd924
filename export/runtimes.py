"""How to run each exported format (its row in export/formats.py names the runtime): one place
that export (for parity), the benchmark (for timing) and the tests use, so they always run a file
the same way.

A runner maps a model input batch (`model_inputs`: float32 (B, 3, R, R), normalised; for an app
form uint8 (B, R, R, 3)) to numpy logits (B, C); an app form's probabilities come back as their
logarithm, logits up to a constant per row, so every format compares with eager the same way.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.executorch_export import METADATA_METHOD
from export.formats import FORMATS, METADATA_SIDECAR
from export.app_form import app_batches
from train.data import DataError, eval_batches

BATCH = 32  # the largest batch every format takes (the .pte programs are exported for 1..32)


def exported_from(export_dir: Path) -> str | None:
    """The sha256 of the weights an export folder was written from (its meta.json records it), or a
    DataError when the folder holds no readable export record."""
    meta_path = Path(export_dir) / METADATA_SIDECAR
    try:
        return json.loads(meta_path.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{meta_path}: cannot read the export's record ({e}); run `make export` first") from None


def file_metadata(fmt: str, path: str | Path) -> dict:
    """The metadata record inside an exported file (class labels, preprocessing, input and output),
    read by the format's own runtime; {} when the file holds none."""
    runtime = FORMATS[fmt].runtime
    if runtime == "onnxruntime":
        raw = ort_session(path, ort_format=FORMATS[fmt].file.endswith(".ort")).get_modelmeta().custom_metadata_map
        return {k: _json_or_text(v) for k, v in raw.items()}
    try:
        return _file_metadata(runtime, path)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in the runtime's or the flatbuffer reader's own way
        raise DataError(f"{path}: not a loadable {runtime} file ({type(e).__name__}: {str(e).strip()[:200]})") from None


def _file_metadata(runtime: str, path: str | Path) -> dict:
    if runtime == "executorch":
        from executorch.runtime import Runtime
        program = Runtime.get().load_program(str(path))
        return json.loads(program.load_method(METADATA_METHOD).execute([])[0]) if METADATA_METHOD in program.method_names else {}
    if runtime == "litert":
        from export.litert_export import read_metadata
        return read_metadata(Path(path)) or {}
    files = {METADATA_SIDECAR: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[METADATA_SIDECAR]) if files[METADATA_SIDECAR] else {}


def _json_or_text(value: str):
    """ONNX metadata holds strings: the lists and objects are JSON text, the rest plain words."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def ort_session(path: str | Path, threads: int = 1, ort_format: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if ort_format:  # onnxruntime guesses the format from the extension, which a temp name lacks: the registry says
        opts.add_session_config_entry("session.load_model_format", "ORT")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise DataError(f"{path}: not a loadable {'.ort' if ort_format else 'ONNX'} model "
                        f"({str(e).strip().splitlines()[0][-200:]})") from None


def make_runner(fmt: str, path: str | Path | None = None, model: torch.nn.Module | None = None, threads: int = 1):
    """The runner of one format: "eager" runs `model`; the others load `path` in their registry
    row's runtime (export/formats.py; `threads` applies to onnxruntime and LiteRT)."""
    if fmt == "eager":
        return lambda x: _torch_run(model, x)
    run = RUNNERS[FORMATS[fmt].runtime](fmt, path, threads)
    return (lambda x: np.log(np.maximum(run(x), 1e-30))) if FORMATS[fmt].app else run


def _torchscript_runner(fmt: str, path, threads: int):
    with warnings.catch_warnings():   # torch.jit.load's deprecation: said once by the export, not per load
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(path))
    return lambda x: _torch_run(ts, x)


def _executorch_runner(fmt: str, path, threads: int):
    from executorch.runtime import Runtime
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as e:  # noqa: BLE001 - the runtime raises plain RuntimeError/ValueError
        raise DataError(f"{path}: not a loadable ExecuTorch program ({e})") from None
    # the runtime reads a tensor's bytes as if contiguous (its strides are ignored: a channels-last view
    # gave another answer), and its outputs alias its own buffers: copy each one before the next execute
    return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].clone().numpy()


def _onnxruntime_runner(fmt: str, path, threads: int):
    sess = ort_session(path, threads, ort_format=FORMATS[fmt].file.endswith(".ort"))
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _litert_runner(fmt: str, path, threads: int):
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise DataError(f"{path}: not a loadable LiteRT model ({str(e).strip()})") from None
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def one(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], _to_tensor(x, inp))
        interpreter.invoke()
        return _from_tensor(interpreter.get_tensor(out["index"]), out)
    # the .tflite files have a fixed batch of 1 (export/litert_export.py): a batch is one call per image
    return lambda x: np.concatenate([one(x[i:i + 1]) for i in range(len(x))])


RUNNERS = {"torch": _torchscript_runner, "onnxruntime": _onnxruntime_runner, "executorch": _executorch_runner,
           "litert": _litert_runner}   # a registry row's runtime -> its runner


def _to_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    """A batch as the input tensor takes it: as is (float, or an app form's uint8 crops), or a float
    batch quantized with the tensor's own scale and zero point (the INT8 file is integer end to end)."""
    if detail["dtype"] == x.dtype:
        return x
    scale, zero = detail["quantization"]
    bounds = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, bounds.min, bounds.max).astype(detail["dtype"])


def _from_tensor(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


@torch.no_grad()
def _torch_run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def model_inputs(fmt: str, images_uint8: torch.Tensor, input_size: int, batch: int = BATCH):
    """A decoded split as the format takes it, in batches, in order: normalised float NCHW, or for
    an app form the uint8 NHWC crops themselves (what a phone's bitmap holds)."""
    if fmt != "eager" and FORMATS[fmt].app:
        for x in app_batches(images_uint8, input_size, batch):
            yield x.numpy()
    else:
        for x in eval_batches(images_uint8, input_size, batch):
            yield x.numpy()


def batched_logits(run, images_uint8: torch.Tensor, input_size: int, fmt: str = "eager") -> np.ndarray:
    """Logits of a format's runner over a decoded split, in order."""
    return np.concatenate([run(x) for x in model_inputs(fmt, images_uint8, input_size)])
