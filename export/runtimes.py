"""The exported formats and how to run each: one place that export (for parity) and benchmark
(for timing) both use, so the two always run a file the same way.

A runner maps a float32 (B, 3, R, R) numpy batch to numpy logits (B, C).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from train.data import DataError, eval_batches

# file name of every exported format, under the export folder
FORMATS = {"torchscript": "dog_emotion.pt", "onnx_fp32": "dog_emotion.onnx", "ort_fp32": "dog_emotion.ort",
           "onnx_int8": "dog_emotion.int8.onnx", "pte_fp32": "dog_emotion.pte", "pte_int8": "dog_emotion.int8.pte"}
BATCH = 32  # the largest batch every format takes (the .pte programs are exported for 1..32)


def ort_session(path: str | Path, threads: int = 1, ort_format: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if ort_format:  # onnxruntime guesses the format from the extension, which a temp name lacks
        opts.add_session_config_entry("session.load_model_format", "ORT")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def make_runner(fmt: str, path: str | Path | None = None, model: torch.nn.Module | None = None, threads: int = 1):
    """The runner of one format: "eager" runs `model`; the others load `path` (onnx_*/ort_* in
    onnxruntime, pte_* in ExecuTorch's runtime; `threads` applies to onnxruntime)."""
    if fmt == "eager":
        return lambda x: _torch_run(model, x)
    if fmt == "torchscript":
        ts = torch.jit.load(str(path))
        return lambda x: _torch_run(ts, x)
    if fmt.startswith("pte"):
        from executorch.runtime import Runtime
        try:
            method = Runtime.get().load_program(str(path)).load_method("forward")
        except Exception as e:  # noqa: BLE001 - the runtime raises plain RuntimeError/ValueError
            raise DataError(f"{path}: not a loadable ExecuTorch program ({e})") from None
        # the runtime's outputs alias its own buffers: copy each one before the next execute
        return lambda x: method.execute([torch.from_numpy(x)])[0].clone().numpy()
    sess = ort_session(path, threads, ort_format=fmt.startswith("ort"))
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


@torch.no_grad()
def _torch_run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def batched_logits(run, images_uint8: torch.Tensor, input_size: int) -> np.ndarray:
    """Logits of a runner over a decoded split, in order."""
    return np.concatenate([run(x.numpy()) for x in eval_batches(images_uint8, input_size, BATCH)])
