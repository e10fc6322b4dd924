import ast
import gzip
import struct
from pathlib import Path

import pytest
import torch

from train import mnist_scratch, scratch_ops
from train.mnist_scratch import IdxError, backward, forward, init_params, read_idx
from train.scratch_ops import (cross_entropy, d_cross_entropy, d_sigmoid, d_softmax, d_tanh, one_hot, sigmoid,
                               softmax, tanh)

TOL = dict(rtol=0, atol=1e-10)


def x64(*shape, scale=3.0):
    return (torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * scale)


@pytest.mark.parametrize("fn, d_fn, ref", [(sigmoid, d_sigmoid, torch.sigmoid), (tanh, d_tanh, torch.tanh)])
def test_elementwise_derivatives_match_autograd(fn, d_fn, ref):
    x = x64(6, 7).requires_grad_()
    assert torch.allclose(fn(x.detach()), ref(x.detach()), **TOL)
    (g,) = torch.autograd.grad(ref(x).sum(), x)
    assert torch.allclose(d_fn(x.detach()), g, **TOL)


def test_softmax_jacobian_matches_autograd():
    x = x64(5, 4)
    assert torch.allclose(softmax(x), torch.softmax(x, 1), **TOL)
    jac = d_softmax(x)
    assert jac.shape == (5, 4, 4)
    for b in range(5):
        ref = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), x[b])
        assert torch.allclose(jac[b], ref, **TOL)


def test_cross_entropy_and_its_gradient_match_autograd():
    z = x64(8, 10).requires_grad_()
    y = one_hot(torch.arange(8) % 10, 10, torch.float64)
    ref = torch.nn.functional.cross_entropy(z, y.argmax(1))
    assert torch.allclose(cross_entropy(z.detach(), y), ref.detach(), **TOL)
    (g,) = torch.autograd.grad(ref, z)
    assert torch.allclose(d_cross_entropy(z.detach(), y), g, **TOL)


def test_stable_for_huge_logits():
    z = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], dtype=torch.float64)
    s = softmax(z)
    assert torch.isfinite(s).all() and torch.allclose(s.sum(1), torch.ones(2, dtype=torch.float64))
    y = one_hot(torch.tensor([1, 0]), 3, torch.float64)
    loss = cross_entropy(z, y)
    assert torch.isfinite(loss) and loss.item() == pytest.approx((2000 + torch.log(torch.tensor(3.0)).item()) / 2)
    assert torch.isfinite(sigmoid(z)).all() and torch.isfinite(tanh(z)).all()
    assert torch.isfinite(d_softmax(z)).all() and torch.isfinite(d_sigmoid(z)).all()


def test_network_gradients_match_autograd():
    params = init_params("xavier", seed=3, dtype=torch.float64)
    x = torch.rand(16, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = one_hot(torch.arange(16) % 10, 10, torch.float64)
    grads = backward(params, forward(params, x), y)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    logits = torch.sigmoid(x @ leaves["W1"] + leaves["b1"]) @ leaves["W2"] + leaves["b2"]
    torch.nn.functional.cross_entropy(logits, y.argmax(1)).backward()
    for k in ("W1", "b1", "W2", "b2"):
        assert grads[k].shape == params[k].shape
        assert torch.allclose(grads[k], leaves[k].grad, **TOL), k


BANNED_ATTRS = {"nn", "optim", "autograd", "functional", "backward", "grad", "requires_grad_", "sigmoid", "tanh",
                "softmax", "log_softmax", "relu", "cross_entropy", "nll_loss", "logsumexp", "special"}


@pytest.mark.parametrize("module", [mnist_scratch, scratch_ops])
def test_from_scratch_source_uses_no_autograd_nn_or_builtins(module):
    tree = ast.parse(Path(module.__file__).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRS:
            found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
            found += [f"line {node.lineno}: import {n}" for n in names
                      if n.startswith(("torch.nn", "torch.optim", "torch.autograd")) or n in {"nn", "optim", "autograd"}]
        if isinstance(node, ast.keyword) and node.arg == "requires_grad":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append(f"line {node.lineno}: requires_grad={ast.unparse(node.value)}")
    assert not found, found


def write_idx(path, data: bytes, magic: int, dims, gz=False):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)


def write_idx_set(folder, n_train=64, n_test=32, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        # digit k lights up row block k: learnable, so the smoke run can show progress
        imgs = torch.zeros(n, 28, 28, dtype=torch.uint8)
        for i, k in enumerate(labels):
            imgs[i, 2 * k:2 * k + 3] = 200
        imgs = (imgs.int() + torch.randint(0, 40, imgs.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", imgs.numpy().tobytes(), 0x803, (n, 28, 28), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels.to(torch.uint8).numpy().tobytes(), 0x801, (n,), gz)
    return folder


def test_idx_reader_good_and_broken(tmp_path):
    for gz in (True, False):
        d = write_idx_set(tmp_path / f"gz{gz}", gz=gz)
        data = mnist_scratch.load_idx_dir(d)
        assert data.x_train.shape == (64, 784) and data.y_test.shape == (32,) and data.x_train.max() <= 1
    write_idx(tmp_path / "bad_magic", b"\x00" * 4, 0x802, (4,))
    with pytest.raises(IdxError, match="magic number"):
        read_idx(tmp_path / "bad_magic", 1)
    write_idx(tmp_path / "short", b"\x00" * 100, 0x803, (1, 28, 28))
    with pytest.raises(IdxError, match="truncated"):
        read_idx(tmp_path / "short", 3)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(IdxError, match="gzip"):
        read_idx(tmp_path / "broken.gz", 1)
    with pytest.raises(SystemExit, match="no train-images"):
        mnist_scratch.main(["train", "--data-dir", str(tmp_path)])


def test_idx_sets_that_parse_but_are_not_mnist_are_named(tmp_path):
    empty = write_idx_set(tmp_path / "empty", n_train=0)
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte: holds no images"):
        mnist_scratch.main(["train", "--data-dir", str(empty)])
    d = write_idx_set(tmp_path / "label250", gz=False)
    labels = bytearray((d / "t10k-labels-idx1-ubyte").read_bytes())
    labels[8 + 5] = 250
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(SystemExit, match="t10k-labels-idx1-ubyte: label 250 at index 5; labels must be 0-9"):
        mnist_scratch.main(["train", "--data-dir", str(d)])
    write_idx(d / "t10k-images-idx3-ubyte", b"\x00" * 32 * 27 * 27, 0x803, (32, 27, 27))
    with pytest.raises(IdxError, match="images of 27 x 27 pixels"):
        mnist_scratch.load_idx_dir(d)
    # a small gzip file that would inflate past any MNIST size stops at the bound
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(b"\x00" * (mnist_scratch.MAX_IDX_BYTES + 16), 1))
    with pytest.raises(IdxError, match="inflates to more than"):
        read_idx(tmp_path / "bomb.gz", 1)


def test_smoke_train_and_sweep_write_every_artifact(tmp_path):
    d = write_idx_set(tmp_path / "idx", n_train=200, n_test=50)
    out = tmp_path / "out"
    mnist_scratch.main(["train", "--data-dir", str(d), "--epochs", "2", "--out", str(out)])
    w = torch.load(out / "mnist_weights.pkl", weights_only=True)
    assert set(w) == {"W1", "W2", "b1", "b2"}
    assert [tuple(w[k].shape) for k in ("W1", "b1", "W2", "b2")] == [(784, 128), (128,), (128, 10), (10,)]
    for name in ("curves.png", "metrics.json", "summary.md"):
        assert (out / name).stat().st_size > 0
    results = mnist_scratch.cmd_sweep(mnist_scratch.get_args_parser().parse_args(
        ["sweep", "--data-dir", str(d), "--epochs", "3", "--rates", "0.0001", "1.0", "--out", str(out),
         "--threshold", "50"]))
    assert results[0]["epochs_to_threshold"] is None and results[1]["epochs_to_threshold"] is not None
    text = (out / "lr_sweep.md").read_text()
    assert "lr 0.0001: never learned: test accuracy" in text and "lr 1.0: reached 50% at epoch" in text
    assert (out / "lr_sweep.png").stat().st_size > 0
