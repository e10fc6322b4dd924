"""Parameters and MACs of a weights file: thop, cross-checked with FlopCounterMode, per layer.

    python -m export.profile [--weights weights/dog_emotion.pkl] [--out artifacts/profile]   # make profile

thop (the maintained `ultralytics-thop` fork: same `import thop`, current torch support, cleans
its counters up after profiling) counts multiply-accumulates (MACs), not FLOPs. It profiles a
deep copy, so the model's own state_dict never gains thop's `total_ops`/`total_params` entries.
FlopCounterMode counts FLOPs = 2 x MACs of convolutions and matmuls only; thop also charges
BatchNorm (2 ops per element), the average pool and the residual adds are not charged by either.
The report shows both totals and the difference with its cause.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mobile_model import count_parameters, thop_counts
from train.checkpoint import load_weights
from train.common import ARTIFACTS, SHIPPED_WEIGHTS, command_errors, markdown_table, save_json, save_text


def leaf_shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes, hooks = {}, []
    for name, mod in model.named_modules():
        if not list(mod.children()):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def flatten_thop(tree: dict, prefix: str = "") -> dict[str, tuple[float, float]]:
    """thop's nested {name: (ops, params, children)} -> {leaf path: (ops, params)}."""
    out = {}
    for name, (ops, params, children) in tree.items():
        path = f"{prefix}.{name}" if prefix else name
        out.update(flatten_thop(children, path) if children else {path: (ops, params)})
    return out


def profile(model: torch.nn.Module) -> dict:
    size = model.config.input_size
    x = torch.zeros(1, 3, size, size)
    macs, thop_params, tree = thop_counts(model)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x)
    flops = counter.get_total_flops()
    shapes = leaf_shapes(model, x)
    layers = flatten_thop(tree)
    rows = []
    for name, (ops, params) in layers.items():
        rows.append({"layer": name, "type": type(model.get_submodule(name)).__name__,
                     "output": "x".join(map(str, shapes.get(name, ()))), "params": int(params),
                     "MACs": int(ops), "share (%)": round(100 * ops / macs, 2) if macs else 0.0})
    conv_linear_macs = sum(r["MACs"] for r in rows if r["type"] in ("Conv2d", "Linear"))
    bn_ops = sum(r["MACs"] for r in rows if r["type"].startswith("BatchNorm"))
    return {
        "input": [1, 3, size, size], "params_count_parameters": count_parameters(model),
        "params_thop": int(thop_params), "macs_thop": int(macs), "flops_flopcounter": int(flops),
        "macs_conv_linear_thop": conv_linear_macs, "bn_ops_thop": bn_ops,
        "other_ops_thop": int(macs) - conv_linear_macs - bn_ops,
        "check_flops_equal_2x_conv_linear_macs": flops == 2 * conv_linear_macs,
        "layers": rows,
    }


def report(p: dict) -> str:
    diff = p["macs_thop"] - p["flops_flopcounter"] // 2
    return (f"Input {p['input']}. Parameters: count_parameters() {p['params_count_parameters']:,}, "
            f"thop {p['params_thop']:,}.\n\n"
            f"- thop total: **{p['macs_thop']:,} MACs** ({p['macs_thop'] / 1e6:.2f} M)\n"
            f"- FlopCounterMode: {p['flops_flopcounter']:,} FLOPs = {p['flops_flopcounter'] // 2:,} MACs "
            f"(conv and matmul only)\n"
            f"- thop's conv + linear MACs: {p['macs_conv_linear_thop']:,} "
            f"({'equal to' if p['check_flops_equal_2x_conv_linear_macs'] else 'NOT equal to'} FlopCounterMode / 2)\n"
            f"- difference {diff:,} = BatchNorm {p['bn_ops_thop']:,} (thop: 2 ops/element; folded into the conv "
            f"on export, so free at inference) + other layers {p['other_ops_thop']:,} (pooling)\n\n"
            + markdown_table(p["layers"]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights .pkl (default: %(default)s)")
    ap.add_argument("--out", default=str(ARTIFACTS / "profile"), help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    with command_errors():
        model, _ = load_weights(args.weights)
    p = profile(model)
    text = report(p)
    out = Path(args.out)
    save_json(p, out / "profile.json")
    save_text(f"# Profile of {args.weights}\n\n{text}", out / "profile.md")
    print(text)
    print(f"wrote {out}/profile.md and profile.json")
    return p


if __name__ == "__main__":
    main()
