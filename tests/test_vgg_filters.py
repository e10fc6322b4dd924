import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from conftest import make_image
from train import vgg_filters


class TinyVGG(torch.nn.Module):
    """A stand-in with VGG16's first layer and output size: the loading code is the same, the
    file is 1 MB instead of VGG16's 528 MB, and it builds in milliseconds."""

    def __init__(self, weights=None):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.classifier = torch.nn.Linear(64, 1000)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@pytest.fixture
def tiny_vgg(monkeypatch):
    monkeypatch.setattr(vgg_filters.torchvision.models, "vgg16", TinyVGG)


def test_preprocess_shape_and_formula():
    img = Image.new("RGB", (300, 256), (200, 100, 50))
    x = vgg_filters.vgg_preprocess(img)
    assert x.shape == (1, 3, 224, 224)
    for c, (v, m, s) in enumerate(zip((200, 100, 50), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        assert torch.allclose(x[0, c], torch.full((224, 224), (v / 255 - m) / s), atol=1e-5)
    # a smooth image: the 224 crop is the centre of the 256-shorter-side resize
    grad = make_image(4, size=(512, 256))
    y = vgg_filters.vgg_preprocess(grad)
    ref = torchvision.transforms.functional
    manual = ref.normalize(ref.to_tensor(ref.center_crop(grad.resize((512, 256)), 224)),
                           (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(y[0], manual, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_odd_modes_are_handled(tmp_path, mode):
    make_image(1, size=(64, 80), mode=mode).save(tmp_path / "x.png")
    from train.data import load_rgb
    assert vgg_filters.vgg_preprocess(load_rgb(tmp_path / "x.png")).shape == (1, 3, 224, 224)


def test_responses_equal_conv2d_of_first_layer(tiny_vgg):
    model, desc = vgg_filters.load_vgg("random")
    assert "RANDOM" in desc
    x = torch.randn(1, 3, 224, 224)
    conv, relu = vgg_filters.first_layer_responses(model, x)
    ref = F.conv2d(x, model.features[0].weight, model.features[0].bias, padding=1)[:, :3]
    assert torch.allclose(conv, ref, atol=1e-5)
    assert torch.allclose(relu, ref.clamp(min=0), atol=1e-5)


def test_weights_file_missing_and_loaded(tmp_path, tiny_vgg):
    with pytest.raises(vgg_filters.WeightsMissing, match="not found at .*Nothing is downloaded"):
        vgg_filters.load_vgg(str(tmp_path / "vgg16.pth"))
    ref = TinyVGG()
    torch.save(ref.state_dict(), tmp_path / "vgg16.pth")
    model, desc = vgg_filters.load_vgg(str(tmp_path / "vgg16.pth"))
    assert str(tmp_path / "vgg16.pth") in desc
    assert torch.equal(model.features[0].weight, ref.features[0].weight) and not model.training


def test_top5_uses_imagenet_names():
    logits = torch.full((1, 1000), -10.0)
    logits[0, 207] = 5  # golden retriever
    logits[0, 1] = 4    # goldfish
    top = vgg_filters.top5(logits)[0]
    assert top[0][0] == "golden retriever" and top[1][0] == "goldfish" and len(top) == 5
    assert len(vgg_filters.CATEGORIES) == 1000


def test_random_mode_labels_every_output(tmp_path, monkeypatch):
    titles = []
    real_save, real_grid = vgg_filters.save_figure, vgg_filters.image_grid
    monkeypatch.setattr(vgg_filters, "save_figure", lambda fig, path: (titles.append(fig._suptitle.get_text()),
                                                                      real_save(fig, path))[1])
    monkeypatch.setattr(vgg_filters, "image_grid", lambda *a, **k: (titles.append(k["title"]), real_grid(*a, **k))[1])
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    make_image(1, size=(120, 100)).save(imgs / "a.jpg")
    make_image(2, size=(90, 130)).save(imgs / "b.png")
    vgg_filters.main(["--weights", "random", "--images", str(imgs), "--out", str(tmp_path / "out")])
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# VGG16 analysis [RANDOM WEIGHTS]") and "RANDOM weights" in report
    for name in ("predictions.png", "filters.png", "responses.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "a.jpg" in report and "b.png" in report and "Filter 2:" in report
    assert len(titles) == 3 and all("RANDOM WEIGHTS" in t for t in titles), titles
