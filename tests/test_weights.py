"""Weight conversion and loading against real oracles (../shared/data/reference, efficientnet_pytorch)."""

import json
import pickle

import numpy as np
import pytest
import torch

import effnet
from effnet.weights import WeightFileError, WeightMismatchError, load_weights, read_weight_file

from conftest import randomize_bn

# references.json entry -> the effnet model that must reproduce it.
REFERENCE_MODELS = {
    "timm.efficientnet_b0": "efficientnet_b0",              # symmetric padding, BN eps 1e-5
    "timm.tf_efficientnet_b0": "tf_efficientnet_b0",        # same weights, SAME padding, BN eps 1e-3
    "torchvision.efficientnet_b0": "efficientnet_b0",
    "lukemelas.efficientnet-b0": "tf_efficientnet_b0",
}


@pytest.fixture(scope="module")
def references(data):
    return json.loads((data / "reference" / "references.json").read_text())


@pytest.mark.parametrize("entry", list(REFERENCE_MODELS))
def test_reference_logits_reproduced(entry, references, data):
    ref = references[entry]
    path = data / "reference" / ref["weights"]
    model = effnet.create_model(REFERENCE_MODELS[entry], weights=path).eval()
    x = torch.from_numpy(np.load(data / "reference" / ref["inputs"]))
    expected = np.load(data / "reference" / ref["logits"])
    with torch.no_grad():
        logits = model(x).numpy()
    diff = np.abs(logits - expected).max()
    assert diff < 1e-4, f"{entry}: max abs diff {diff:.2e}"
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_padding_and_eps_matter_for_the_same_weights(references, data):
    # Loading the timm file into the wrong flavour gives visibly different logits: the
    # reference pair is a real test of padding and BN epsilon, not of key names alone.
    ref = references["timm.tf_efficientnet_b0"]
    model = effnet.create_model("efficientnet_b0", weights=data / "reference" / ref["weights"]).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.load(data / "reference" / ref["inputs"]))).numpy()
    assert np.abs(logits - np.load(data / "reference" / ref["logits"])).max() > 1e-2


# ---- every B variant, against EfficientNet-PyTorch's own forward pass ---------------------------

def _block_ids(name):
    return [(s, b) for s, st in enumerate(effnet.get_config(name).network.stages) for b in range(st.repeats)]


def lukemelas_to_timm(sd, name):
    """timm's layout written out from its structure (timm/models/_efficientnet_blocks.py)."""
    ids, out = _block_ids(name), {}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    for k, v in sd.items():
        if k.startswith("_blocks."):
            _, i, mod, leaf = k.split(".", 3)
            s, b = ids[int(i)]
            has_expand = f"_blocks.{i}._expand_conv.weight" in sd
            names = ({"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"} if has_expand else
                     {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"})
            names.update({"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"})
            out[f"blocks.{s}.{b}.{names[mod]}.{leaf}"] = v
        else:
            mod, leaf = k.split(".", 1)
            out[f"{top[mod]}.{leaf}"] = v
    return out


def lukemelas_to_torchvision(sd, name):
    """torchvision's layout (torchvision/models/efficientnet.py: features, block.I, fc1/fc2)."""
    ids, out = _block_ids(name), {}
    head = len(effnet.get_config(name).network.stages) + 1
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{head}.0",
           "_bn1": f"features.{head}.1", "_fc": "classifier.1"}
    for k, v in sd.items():
        if k.startswith("_blocks."):
            _, i, mod, leaf = k.split(".", 3)
            s, b = ids[int(i)]
            e = 1 if f"_blocks.{i}._expand_conv.weight" in sd else 0
            names = {"_expand_conv": "0.0", "_bn0": "0.1", "_depthwise_conv": f"{e}.0", "_bn1": f"{e}.1",
                     "_se_reduce": f"{e + 1}.fc1", "_se_expand": f"{e + 1}.fc2",
                     "_project_conv": f"{e + 2}.0", "_bn2": f"{e + 2}.1"}
            out[f"features.{s + 1}.{b}.block.{names[mod]}.{leaf}"] = v
        else:
            mod, leaf = k.split(".", 1)
            out[f"{top[mod]}.{leaf}"] = v
    return out


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_converters_hold_for_every_b_variant(variant, tmp_path):
    from efficientnet_pytorch import EfficientNet as Oracle

    torch.manual_seed(0)
    size = 64
    oracle = randomize_bn(Oracle.from_name(f"efficientnet-{variant}", image_size=size)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = oracle(x)
    sd = oracle.state_dict()
    name = f"tf_efficientnet_{variant}"
    layouts = {
        "lukemelas": (sd, name, {}),
        "timm": (lukemelas_to_timm(sd, name), name, {}),
        # torchvision's layout in a symmetric-padding model switched to TF semantics
        "torchvision": (lukemelas_to_torchvision(sd, name), f"efficientnet_{variant}",
                        dict(padding="same", norm_eps=1e-3)),
    }
    for fmt, (state, model_name, overrides) in layouts.items():
        path = tmp_path / f"{fmt}.pth"
        torch.save(state, path)
        model = effnet.create_model(model_name, weights=path, **overrides).eval()
        with torch.no_grad():
            got = model(x)
        diff = (got - expected).abs().max().item()
        assert diff < 1e-4, f"{variant} {fmt}: {diff:.2e}"


# ---- loading behaviour and errors ---------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_b0(data):
    return data / "reference" / "timm_efficientnet_b0.safetensors"


def test_new_num_classes_keeps_backbone(timm_b0):
    ref = effnet.create_model("efficientnet_b0", weights=timm_b0).eval()
    model = effnet.create_model("efficientnet_b0", weights=timm_b0, num_classes=5).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ref.forward_features(x))
        assert model(x).shape == (1, 5)
    assert model.classifier.weight.abs().max() <= 1 / 5 ** 0.5      # fresh official init
    feats = effnet.create_model("efficientnet_b0", weights=timm_b0, num_classes=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(feats(x), ref.forward_head(ref.forward_features(x), pre_logits=True))


def test_stem_adapted_to_one_and_four_channels(timm_b0):
    rgb = effnet.create_model("efficientnet_b0", weights=timm_b0).eval()
    gray = effnet.create_model("efficientnet_b0", weights=timm_b0, in_chans=1).eval()
    six = effnet.create_model("efficientnet_b0", weights=timm_b0, in_chans=6).eval()
    four = effnet.create_model("efficientnet_b0", weights=timm_b0, in_chans=4)
    g = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        # A gray image through the summed stem equals the RGB model on the gray image in 3 channels,
        # and RGB repeated twice at half scale keeps the response of a gray image too.
        torch.testing.assert_close(gray(g), rgb(g.expand(1, 3, 64, 64)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(six(g.expand(1, 6, 64, 64)), rgb(g.expand(1, 3, 64, 64)), rtol=1e-4, atol=1e-5)
    w = rgb.stem.conv.weight
    torch.testing.assert_close(four.stem.conv.weight, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert gray.stem.conv.weight.shape[1] == 1


def test_wrong_architecture_lists_mismatched_keys(timm_b0):
    with pytest.raises(WeightMismatchError) as e:
        effnet.create_model("efficientnet_b3", weights=timm_b0)
    msg = str(e.value)
    assert "mis-shaped" in msg and "stem.conv.weight file (32, 3, 3, 3) vs model (40, 3, 3, 3)" in msg
    assert "timm_efficientnet_b0.safetensors" in msg
    assert "missing (185): stages.0.1.depthwise.conv.weight" in msg     # b3 has 2 blocks in stage 0
    assert len(e.value.mismatched) == 309 and any(k.startswith("stages.3.4.") for k in e.value.missing)
    with pytest.raises(WeightMismatchError, match="unexpected"):
        effnet.create_model("efficientnet_lite0", weights=timm_b0)      # SE keys have nowhere to go


def test_unknown_layout_and_bad_files(tmp_path, timm_b0):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightMismatchError, match="encoder.weight"):
        effnet.create_model("efficientnet_b0", weights=tmp_path / "other.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightFileError, match="empty"):
        effnet.create_model("efficientnet_b0", weights=tmp_path / "empty.pth")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(WeightFileError, match="not a recognised weight file"):
        read_weight_file(tmp_path / "noise.bin")
    blob = timm_b0.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WeightFileError, match=r"cut\.safetensors is truncated"):
        effnet.create_model("efficientnet_b0", weights=tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError):
        effnet.create_model("efficientnet_b0", weights=tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickles_are_loaded_weights_only(tmp_path, capsys):
    torch.save({"conv_stem.weight": torch.zeros(1), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightFileError):
        read_weight_file(tmp_path / "evil.pth")
    assert "code ran" not in capsys.readouterr().out
    with open(tmp_path / "legacy.pth", "wb") as f:
        pickle.dump(_Evil(), f, protocol=2)
    with pytest.raises(WeightFileError):
        read_weight_file(tmp_path / "legacy.pth")
    assert "code ran" not in capsys.readouterr().out


def test_failed_load_leaves_model_unchanged(timm_b0):
    model = effnet.create_model("efficientnet_b3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightMismatchError):
        load_weights(model, timm_b0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_save_pretrained_round_trip(tmp_path, timm_b0):
    model = effnet.create_model("tf_efficientnet_b0", weights=timm_b0, num_classes=3, drop_rate=0.1)
    model.save_pretrained(tmp_path / "run", class_names=["ants", "bees", "wasps"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = effnet.from_pretrained(tmp_path / "run")
    assert loaded.class_names == ["ants", "bees", "wasps"] and not loaded.training
    assert loaded.config.padding == "same" and loaded.config.norm_eps == 1e-3 and loaded.dropout.p == 0.1
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 class names"):
        model.save_pretrained(tmp_path / "bad", class_names=["a", "b"])
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_registry_lists_published_weights():
    b0 = effnet.get_config("efficientnet_b0").weights
    assert [w.tag for w in b0] == ["timm", "torchvision"]
    tv = b0[1]
    assert tv.url == "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth"
    assert tv.sha256.startswith("7f5810bc") and tv.preprocess.resize_size == 256 and tv.top1 == 77.692
    b7 = {w.tag: w for w in effnet.get_config("efficientnet_b7").weights}["torchvision"]
    assert dict(b7.overrides)["norm_eps"] == 1e-3 and b7.preprocess.resize_size == 600
    assert effnet.get_config("efficientnet_b4").weights[1].preprocess.resize_size == 384
    adv = {w.tag: w for w in effnet.get_config("tf_efficientnet_b3").weights}["advprop"]
    assert adv.preprocess.mean == (0.5, 0.5, 0.5) and adv.format == "lukemelas"
    lite = {w.tag: w for w in effnet.get_config("tf_efficientnet_lite0").weights}["tflite"]
    assert lite.url.endswith("cloud-tpu-checkpoints/efficientnet/lite/efficientnet-lite0.tar.gz")
    with pytest.raises(KeyError, match="choose from"):
        effnet.create_model("efficientnet_b0", pretrained="keras")
