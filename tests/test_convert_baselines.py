"""The baselines' weights: torchvision MobileNetV2, timm MobileNetV1 and the torchvision/timm
ResNet-50 layout load into ``mobilenetv2_100``, ``mobilenetv1_100`` and ``resnet50``, and
their published ImageNet sources are registered.

Oracles: ../shared/data/reference-scaling (each project's own model and forward pass on 6 real
photos; references.json names the weight file, inputs and logits).
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import effnet
from effnet.weights import WeightMismatchError, cache_path, detect_format, load_weights, read_weight_file
from effnet.weights.convert import CLASSIFIER_KEYS, classifier_size
from effnet.registry import get_weight_source
from effnet.weights.hub import HashMismatchError, hash_prefix_from_name

# references.json entry -> the registered model that must reproduce it.
ORACLES = {"torchvision.mobilenet_v2": "mobilenetv2_100", "timm.mobilenetv1_100": "mobilenetv1_100"}
# torchvision.models.resnet50: Bottleneck repeats per layer (torchvision/models/resnet.py).
RESNET50_LAYERS = (3, 4, 6, 3)


@pytest.fixture(scope="module")
def references(data):
    return json.loads((data / "reference-scaling" / "references.json").read_text())


def _logits(model, data, ref):
    x = torch.from_numpy(np.load(data / "reference-scaling" / ref["inputs"]))
    with torch.no_grad():
        return model.eval()(x).numpy(), np.load(data / "reference-scaling" / ref["logits"])


@pytest.mark.parametrize("entry", list(ORACLES))
def test_oracle_logits_reproduced(entry, references, data):
    ref = references[entry]
    path = data / "reference-scaling" / ref["weights"]
    kind, sd = read_weight_file(path)          # the .pth is read weights_only (no pickle code runs)
    assert kind == "state_dict" and detect_format(sd) == entry.split(".")[0]
    model = effnet.create_model(ORACLES[entry], weights=path)
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    logits, expected = _logits(model, data, ref)
    diff = np.abs(logits - expected).max()
    assert diff < 1e-4, f"{entry}: max abs logit diff {diff:.2e}"
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_mobilenetv1_needs_relu6(references, data):
    # timm's mobilenetv1_100 (and TF-slim's MobileNetV1) use ReLU6: with plain ReLU the same
    # weights are visibly off, so the oracle above really checks the activation.
    from effnet.model import ConvNet
    from effnet.specs import MOBILENET_V1

    assert MOBILENET_V1.act == "relu6"
    ref = references["timm.mobilenetv1_100"]
    relu = ConvNet(dataclasses.replace(MOBILENET_V1, act="relu"), drop_rate=0.0, norm_eps=1e-5, norm_momentum=0.1)
    load_weights(relu, data / "reference-scaling" / ref["weights"])
    logits, expected = _logits(relu, data, ref)
    assert np.abs(logits - expected).max() > 1e-2


def test_torchvision_mobilenet_v2_keys_land_in_place(data, references):
    # Independent of the converter's tables: torchvision's block K (flat, 1..17) is effnet's
    # K-th block in stage order, and inside it conv.0/conv.1/conv.2/conv.3 are expand,
    # depthwise, project conv, project BN (t = 6), or depthwise, project conv, project BN (t = 1).
    _, sd = read_weight_file(data / "reference-scaling" / references["torchvision.mobilenet_v2"]["weights"])
    model = effnet.create_model("mobilenetv2_100", weights=data / "reference-scaling" /
                                references["torchvision.mobilenet_v2"]["weights"])
    ours = model.state_dict()
    blocks = [(s, b) for s, stage in enumerate(model.stages) for b in range(len(stage))]
    assert len(blocks) == 17
    t1 = {"conv.0.0": "depthwise.conv", "conv.0.1": "depthwise.bn", "conv.1": "project.conv", "conv.2": "project.bn"}
    t6 = {"conv.0.0": "expand.conv", "conv.0.1": "expand.bn", "conv.1.0": "depthwise.conv",
          "conv.1.1": "depthwise.bn", "conv.2": "project.conv", "conv.3": "project.bn"}
    seen = set()
    for key, value in sd.items():
        m = re.match(r"features\.(\d+)\.(conv\.\d(?:\.\d)?)\.(\w+)$", key)
        if m:
            k, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
            s, b = blocks[k - 1]
            target = f"stages.{s}.{b}.{(t1 if k == 1 else t6)[layer]}.{leaf}"
        else:
            target = {"features.0.0": "stem.conv", "features.0.1": "stem.bn", "features.18.0": "head.conv",
                      "features.18.1": "head.bn", "classifier.1": "classifier"}[key.rsplit(".", 1)[0]] + \
                     "." + key.rsplit(".", 1)[1]
        assert torch.equal(ours[target], value), f"{key} -> {target}"
        seen.add(target)
    assert seen == set(ours)                   # every effnet tensor came from the file


# ---- ResNet-50: torchvision/timm names, exactly ------------------------------------------------

def _resnet50_layout(model, seed=0):
    """A ResNet-50 state dict in torchvision's (= timm's) names with random values, shaped
    from ``model``; also the effnet key each name must land in, written from torchvision's
    structure (conv1/bn1 stem; layerN.B conv1/bn1 1x1, conv2/bn2 3x3, conv3/bn3 1x1,
    downsample.0/.1 in each layer's first block; fc)."""
    g = torch.Generator().manual_seed(seed)
    ours = model.state_dict()
    where = {"conv1": "stem.conv", "bn1": "stem.bn", "fc": "classifier"}
    inner = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv.conv", "bn2": "conv.bn",
             "conv3": "restore.conv", "bn3": "restore.bn", "downsample.0": "shortcut.conv",
             "downsample.1": "shortcut.bn"}
    for n, repeats in enumerate(RESNET50_LAYERS, 1):
        for b in range(repeats):
            for tv, ef in inner.items():
                if tv.startswith("downsample") and b > 0:
                    continue
                where[f"layer{n}.{b}.{tv}"] = f"stages.{n - 1}.{b}.{ef}"
    sd, target = {}, {}
    for module, ef in where.items():
        if ef.endswith(".bn"):
            leaves = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        else:
            leaves = ("weight", "bias") if module == "fc" else ("weight",)
        for leaf in leaves:
            shape = ours[f"{ef}.{leaf}"].shape
            if leaf == "num_batches_tracked":
                value = torch.randint(1, 10_000, (), generator=g)
            elif leaf == "running_var" or (leaf == "weight" and ef.endswith("bn")):
                value = torch.rand(shape, generator=g) + 0.5
            elif ef.endswith("conv") or module == "fc":         # unit-variance outputs: 1/sqrt(fan_in)
                value = torch.randn(shape, generator=g) / shape[1:].numel() ** 0.5
            else:
                value = torch.randn(shape, generator=g) * 0.1
            sd[f"{module}.{leaf}"] = value
            target[f"{module}.{leaf}"] = f"{ef}.{leaf}"
    return sd, target


def _torchvision_resnet50_forward(sd, x):
    """torchvision's ResNet.forward with Bottleneck v1.5 (stride on the 3x3), from its names."""
    def bn(h, p):
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for n, repeats in enumerate(RESNET50_LAYERS, 1):
        for b in range(repeats):
            p, stride = f"layer{n}.{b}", (2 if n > 1 and b == 0 else 1)
            out = F.relu(bn(F.conv2d(h, sd[p + ".conv1.weight"]), p + ".bn1"))
            out = F.relu(bn(F.conv2d(out, sd[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
            out = bn(F.conv2d(out, sd[p + ".conv3.weight"]), p + ".bn3")
            short = bn(F.conv2d(h, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1") \
                if b == 0 else h
            h = F.relu(out + short)
    return F.linear(h.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def test_resnet50_layout_loads_exactly(tmp_path):
    sd, target = _resnet50_layout(effnet.create_model("resnet50"))
    assert len(sd) == 320                      # torchvision resnet50().state_dict() has 320 entries
    assert detect_format(sd) == "resnet" and CLASSIFIER_KEYS["resnet"] == "fc.weight"
    assert classifier_size(sd) == 1000
    save_file(sd, str(tmp_path / "resnet50.safetensors"))
    model = effnet.create_model("resnet50", weights=tmp_path / "resnet50.safetensors")
    ours = model.state_dict()
    assert sorted(target.values()) == sorted(ours)          # strict: nothing missing, nothing extra
    for key, value in sd.items():
        assert torch.equal(ours[target[key]], value), f"{key} -> {target[key]}"
    # The renamed tensors compute torchvision's forward pass.
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _torchvision_resnet50_forward(sd, x), rtol=1e-4, atol=1e-4)


def test_resnet50_fc_is_the_classifier(tmp_path):
    # fc.weight's rows set num_classes when none is given, and the head is loaded.
    sd, _ = _resnet50_layout(effnet.create_model("resnet50", num_classes=10))
    save_file(sd, str(tmp_path / "r50_10.safetensors"))
    model = effnet.create_model("resnet50", weights=tmp_path / "r50_10.safetensors")
    assert model.num_classes == 10 and torch.equal(model.classifier.weight, sd["fc.weight"])


# ---- wrong layouts --------------------------------------------------------------------------------

def test_wrong_layout_gives_a_clear_error(tmp_path, data, references):
    tv_mnv2 = data / "reference-scaling" / references["torchvision.mobilenet_v2"]["weights"]
    with pytest.raises(WeightMismatchError) as e:          # a MobileNetV2 file in ResNet-50
        effnet.create_model("resnet50", weights=tv_mnv2)
    msg = str(e.value)
    assert "torchvision_mobilenet_v2.pth do not fit the model" in msg
    assert "missing" in msg and "stages.0.0.reduce.conv.weight" in msg
    assert ("The file holds a MobileNet or EfficientNet-Lite network but the model (resnet50) is a ResNet: "
            "load it into a mobilenetv1/v2 or *efficientnet_lite* model") in msg

    sd, _ = _resnet50_layout(effnet.create_model("resnet50"))
    save_file(sd, str(tmp_path / "r50.safetensors"))
    with pytest.raises(WeightMismatchError) as e:          # a ResNet-50 file in MobileNetV2
        effnet.create_model("mobilenetv2_100", weights=tmp_path / "r50.safetensors")
    assert "stem.conv.weight file (64, 3, 7, 7) vs model (32, 3, 3, 3)" in str(e.value)
    assert "stages.0.0.reduce.conv.weight" in e.value.unexpected and "head.conv.weight" in e.value.missing

    del sd["layer4.2.conv3.weight"]                        # a cut ResNet file names what it lacks
    save_file(sd, str(tmp_path / "r50_cut.safetensors"))
    with pytest.raises(WeightMismatchError, match=r"missing \(1\): stages\.3\.2\.restore\.conv\.weight"):
        effnet.create_model("resnet50", weights=tmp_path / "r50_cut.safetensors")

    save_file({"conv2d/kernel": torch.zeros(3, 3, 3, 64)}, str(tmp_path / "keras_like.safetensors"))
    with pytest.raises(WeightMismatchError, match=r"unexpected \(1\): conv2d/kernel"):
        effnet.create_model("resnet50", weights=tmp_path / "keras_like.safetensors")


# ---- registered sources ---------------------------------------------------------------------------

TORCHVISION_SOURCES = {
    # model: [(tag, file, resize, top-1)], default first (torchvision/models/{mobilenetv2,resnet}.py)
    "mobilenetv2_100": [("torchvision", "mobilenet_v2-7ebf99e0.pth", 232, 72.154),
                        ("torchvision_v1", "mobilenet_v2-b0353104.pth", 256, 71.878)],
    "resnet50": [("torchvision", "resnet50-11ad3fa6.pth", 232, 80.858),
                 ("torchvision_v1", "resnet50-0676ba61.pth", 256, 76.13)],
}


@pytest.mark.parametrize("name", list(TORCHVISION_SOURCES))
def test_torchvision_sources_registered(name):
    cfg = effnet.get_config(name)
    got = [(w.tag, w.file_name, w.preprocess.resize_size, w.top1) for w in cfg.weights]
    assert got == TORCHVISION_SOURCES[name]
    for w in cfg.weights:
        assert w.url == "https://download.pytorch.org/models/" + w.file_name
        assert w.format == ("resnet" if name == "resnet50" else "torchvision")
        pre = w.preprocess
        assert (pre.input_size, pre.interpolation, pre.mean, pre.std) == \
               (224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        # No full sha256 is published; the torch.hub prefix in the name is what is checked.
        assert w.sha256 is None and len(hash_prefix_from_name(w.file_name)) == 8 and not w.tf_trained
    assert get_weight_source(name) is cfg.weights[0]
    assert cfg.preprocess == cfg.weights[0].preprocess      # the model is registered with its default's


def test_timm_mobilenetv1_source_registered():
    (w,) = effnet.get_config("mobilenetv1_100").weights
    assert w.tag == "timm" and w.format == "timm" and w.top1 == 75.382 and w.sha256 is None
    assert w.url == ("https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/"
                     "dda9ab42e23f3061aa191630817df76e8fe9cace/model.safetensors")
    pre = w.preprocess
    assert (pre.input_size, pre.crop_pct, pre.resize_size, pre.interpolation, pre.mean, pre.std) == \
           (224, 0.875, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_registered_sources_load_from_the_cache(tmp_path, monkeypatch, data, references):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    # timm: no hash is published, so a readable file in the cache is used as it is.
    ref = references["timm.mobilenetv1_100"]
    source = get_weight_source("mobilenetv1_100")
    target = cache_path(source.url)
    target.parent.mkdir(parents=True)
    target.write_bytes((data / "reference-scaling" / ref["weights"]).read_bytes())
    model = effnet.create_model("mobilenetv1_100", pretrained=True)
    logits, expected = _logits(model, data, ref)
    assert np.abs(logits - expected).max() < 1e-4 and model.config.preprocess == source.preprocess
    # torchvision: the file name's sha256 prefix is checked, so another file is refused.
    tv = get_weight_source("mobilenetv2_100", "torchvision")
    target = cache_path(tv.url)
    target.parent.mkdir(parents=True)
    target.write_bytes((data / "reference-scaling" / references["torchvision.mobilenet_v2"]["weights"]).read_bytes())
    with pytest.raises(HashMismatchError, match="removed from the cache"):
        effnet.create_model("mobilenetv2_100", pretrained=True)
    assert not target.exists()
