"""Training input pipeline, both ways on the same files: PIL decode + torchvision v2 transforms
per image per step, against the decode-once uint8 cache + batch augmentation that training uses."""
from __future__ import annotations

import time

import torch

from train.data import MEAN, STD, augment_batch, load_rgb, resize_center_crop, storage_size

COLUMNS = {"images": "images", "pil_per_image_img_per_s": "PIL + per-image transforms (img/s)",
           "decoded_cache_img_per_s": "decoded cache + batch augmentation (img/s)", "speed_up": "speed-up"}


def bench_input_pipeline(paths: list, input_size: int, quick: bool) -> dict:
    from torchvision.transforms import v2
    n = 128 if quick else 512
    paths = (paths * (n // len(paths) + 1))[:n]
    per_image = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(input_size, scale=(0.55, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.RandomRotation(12),
                            v2.ColorJitter(0.3, 0.3, 0.3), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        torch.stack([per_image(load_rgb(p)) for p in paths[i:i + 64]])
    pil = n / (time.perf_counter() - t0)
    cached = torch.stack([resize_center_crop(load_rgb(p), storage_size(input_size)) for p in paths])  # once, untimed
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        augment_batch(cached[i:i + 64], input_size, gen)
    tensor = n / (time.perf_counter() - t0)
    return {"images": n, "pil_per_image_img_per_s": pil, "decoded_cache_img_per_s": tensor, "speed_up": tensor / pil}
