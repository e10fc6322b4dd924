"""Unit tests of the training building blocks: losses, schedule, EMA, optimizer groups, the model's
flip averaging and the folding of BatchNorm."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobile_model import MobileCNN, count_parameters, fold, get_config, inference_parameters
from train.engine import EMA, distillation_loss, lr_at, make_optimizer


def test_distillation_loss_is_zero_for_equal_outputs_and_matches_a_hand_worked_case():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    assert distillation_loss(logits, F.log_softmax(logits / 2, 1), 2.0).item() == pytest.approx(0, abs=1e-7)
    # two classes, T = 1: student p = softmax([0, 0]) = (.5, .5), teacher q = (.8, .2)
    # KL(q || p) = .8 ln(.8/.5) + .2 ln(.2/.5) = 0.192745...
    teacher = torch.tensor([[0.8, 0.2]]).log()
    assert distillation_loss(torch.zeros(1, 2), teacher, 1.0).item() == pytest.approx(0.1927448, abs=1e-6)
    # at T = 2 the loss is scaled by T^2 = 4 (Hinton et al.), on logits divided by 2
    student = torch.tensor([[1.0, -1.0]])
    p = F.softmax(student / 2, 1)[0]
    q = torch.tensor([0.8, 0.2])
    expected = 4 * float((q * (q / p).log()).sum())
    assert distillation_loss(student, q.log()[None], 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_dist_loss_is_two_minus_the_inter_and_intra_class_pearson_correlations():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    p, q = F.softmax(student, 1).numpy(), F.softmax(teacher, 1).numpy()
    inter = np.mean([np.corrcoef(p[i], q[i])[0, 1] for i in range(6)])        # across the classes of a photo
    intra = np.mean([np.corrcoef(p[:, j], q[:, j])[0, 1] for j in range(4)])  # across the batch, per class
    got = distillation_loss(student, F.log_softmax(teacher, 1), 1.0, "dist").item()
    assert got == pytest.approx(2 - inter - intra, rel=1e-6)
    assert distillation_loss(student, F.log_softmax(student, 1), 1.0, "dist").item() == pytest.approx(0, abs=1e-6)
    assert got > 0.1   # unequal outputs cost something


def test_lr_warms_up_linearly_then_decays_to_zero_on_a_cosine():
    base, warmup, total = 4e-3, 10, 110
    assert lr_at(0, total, warmup, base) == pytest.approx(base / 10)
    assert lr_at(9, total, warmup, base) == pytest.approx(base)
    assert lr_at(10, total, warmup, base) == pytest.approx(base)            # cosine starts at the peak
    assert lr_at(60, total, warmup, base) == pytest.approx(base / 2)        # half-way down
    assert lr_at(110, total, warmup, base) == pytest.approx(0, abs=1e-12)   # and ends at zero
    assert lr_at(35, total, warmup, base) == pytest.approx(0.5 * base * (1 + math.cos(math.pi / 4)))


def test_ema_update_follows_its_decay_and_copies_integer_buffers():
    model = MobileCNN(get_config("nano"))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    model.features[0][1].num_batches_tracked += 7
    ema.update(model)   # first update: decay min(0.5, 2/11) = 2/11
    d = 2 / 11
    for k, v in model.state_dict().items():
        got = ema.model.state_dict()[k]
        if v.dtype.is_floating_point:
            torch.testing.assert_close(got, d * before[k] + (1 - d) * v)
        else:
            assert torch.equal(got, v)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_weight_decay_only_on_conv_and_linear_weights():
    model = MobileCNN(get_config("nano"))
    decay, no_decay = make_optimizer(model, 1e-3, 0.05).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters()
                                                      if n.endswith("weight") and p.ndim > 1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_flip_averaging_gives_an_image_and_its_mirror_the_same_output():
    torch.manual_seed(0)
    model = randomize_batchnorm(MobileCNN(get_config("nano"))).eval()
    x = torch.randn(3, 3, 112, 112)
    x[..., :40] += torch.tensor([3.0, -2.0, 1.0])[:, None, None]   # a left side unlike the right one
    torch.testing.assert_close(model(x), model(x.flip(3)), atol=1e-6, rtol=0)
    plain = MobileCNN(replace(get_config("nano"), flip_average=False)).eval()
    plain.load_state_dict(model.state_dict())
    assert (plain(x) - plain(x.flip(3))).abs().max() > 1e-4    # without it, the mirror reads differently


def randomize_batchnorm(model):
    """Statistics and affine values that a trained model would have, not the identity of a fresh BN."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("name", ["nano", "micro14", "mini14", "large"])
def test_folded_model_equals_the_training_form(name):
    torch.manual_seed(0)
    model = randomize_batchnorm(MobileCNN(get_config(name))).eval()
    folded = fold(model)
    assert folded.config.folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)
    # BN's shift becomes the conv bias: the folded count drops one parameter per BN channel
    bn = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert count_parameters(folded) == inference_parameters(model) == count_parameters(model) - bn
    assert fold(folded) is folded


def test_device_auto_is_the_cpu_here_and_missing_devices_are_refused(monkeypatch):
    from train.common import DeviceError, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device here"):
        resolve_device("cuda:0")
    with pytest.raises(DeviceError, match="MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")   # auto picks a GPU when there is one


def test_amp_is_refused_off_cuda(tmp_path):
    from train import dog_emotion
    with pytest.raises(SystemExit, match="bf16 autocast.*for CUDA"):
        dog_emotion.main(["train", "--config", "", "--data", str(tmp_path), "--device", "cpu", "--amp"])


@pytest.mark.parametrize("name", ["micro14", "nano"])
def test_a_channels_last_training_step_gives_the_gradients_of_an_nchw_one(name):
    """Training keeps weights and batches channels-last on the CPU (faster there): the same step
    in both layouts must give the same loss and gradients, to float rounding."""
    torch.manual_seed(0)
    nchw = MobileCNN(replace(get_config(name), input_size=48)).train()
    with torch.no_grad():                    # BatchNorm affine values that are not the fresh 1 and 0
        for m in nchw.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    last = MobileCNN(nchw.config).train()
    last.load_state_dict(nchw.state_dict())
    last = last.to(memory_format=torch.channels_last)
    assert last.features[1].depthwise[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.rand(16, 3, 48, 48), torch.randint(0, 4, (16,))
    losses = []
    for model, batch in ((nchw, x), (last, x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(1)                                        # the same dropout mask
        loss = F.cross_entropy(model(batch), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name_, a), b in zip(nchw.named_parameters(), last.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name_
    for a, b in zip(nchw.buffers(), last.buffers(), strict=True):      # BatchNorm's running statistics
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)
