"""The app form of a model (issue 46): what a phone app calls with the bitmap it holds.

In: uint8 RGB, NHWC, the photo framed as the model's preprocessing says (`app_input`: the whole
photo scaled to the input for a squash model, what MediaPipe does with a bitmap; the centre crop
after resizing the shorter side for a crop model). Out: class probabilities (calibrated when the
export folded a temperature). Conversion to float, ImageNet normalisation, the NHWC -> NCHW layout, the
mirror-image averaging and the softmax are in the graph, so the app resizes, crops and hands over
the bytes. Every exporter (ONNX, ExecuTorch, LiteRT; FP32 and INT8) wraps the model in AppForm;
its metadata record says so in words an app developer reads.
"""
from __future__ import annotations

import torch

from train.data import MEAN_NCHW, STD_NCHW, center_crop


class AppForm(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config
        self.register_buffer("mean", MEAN_NCHW * 255)
        self.register_buffer("std", STD_NCHW * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.permute(0, 3, 1, 2).float() - self.mean) / self.std).softmax(1)


def app_batches(images_uint8: torch.Tensor, input_size: int, batch: int):
    """A decoded split (uint8 N, 3, S, S) as an app form takes it, in batches, in order: the crops
    themselves, uint8 NHWC (what a phone's bitmap holds)."""
    for i in range(0, len(images_uint8), batch):
        yield center_crop(images_uint8[i:i + batch], input_size).permute(0, 2, 3, 1).contiguous()


def app_input(spec: dict) -> str:
    """What an app form takes, in words, for a preprocessing record (train.data.preprocess_spec)."""
    size = spec["input_size"]
    if spec["framing"] == "squash":
        return f"uint8 RGB, NHWC (1, {size}, {size}, 3): the whole photo scaled to {size} x {size} px, aspect not kept"
    return (f"uint8 RGB, NHWC (1, {size}, {size}, 3): the centre {size} x {size} px crop after resizing the shorter "
            f"side to {spec['resize_shorter_side']} px")


def app_metadata(meta: dict) -> dict:
    """The export's metadata record, for the app form."""
    return {**meta, "input_name": "image", "input": app_input(meta["preprocess"]),
            "input_layout": "NHWC", "input_dtype": "uint8", "output_name": "probabilities",
            "output": ("calibrated " if meta.get("calibrated") else "") + "class probabilities, in the order of classes",
            "in_graph": "uint8 to float, ImageNet mean/std normalisation, NHWC to NCHW, flip averaging, softmax"}
