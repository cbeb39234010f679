"""EfficientNetV2 (Tan & Le, ICML 2021): the tables, their published counts, the timm and
torchvision weight layouts, and each weight source's own eval preprocessing.

Numbers: parameter counts of timm's ``tf_efficientnetv2_*`` (the issue lists them; timm and
the official code agree), MACs from the V2 paper (Table 7 for S/M/L, the official configs'
comments and timm's model cards for B0..B3). Oracle: ../shared/data/reference-scaling
``timm.tf_efficientnetv2_b0`` (timm's own forward pass on 6 real photos).
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.analysis import count_macs, count_params
from effnet.data import eval_transform, load_image
from effnet.registry import get_weight_source
from effnet.scaling import estimate_macs, estimate_params, scale_network
from effnet.specs import EFFICIENTNETV2_BASE, EFFICIENTNETV2_S, BlockType
from effnet.weights import WeightMismatchError

from conftest import meta_model

# (params at 1000 classes, eval size in pixels, published MACs at that size or None)
PUBLISHED = {
    "s": (21_458_488, 384, 8.4e9), "m": (54_139_356, 480, 24.7e9), "l": (118_515_272, 480, 56.3e9),
    "xl": (208_119_808, 512, None), "b0": (7_139_704, 224, 0.72e9), "b1": (8_141_052, 240, 1.2e9),
    "b2": (10_096_086, 260, 1.7e9), "b3": (14_358_406, 300, 3.0e9),
}


@pytest.mark.parametrize("prefix", ["efficientnetv2", "tf_efficientnetv2"])
@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_params_exact_and_macs_within_one_percent(prefix, variant):
    params, size, macs = PUBLISHED[variant]
    model = meta_model(f"{prefix}_{variant}")
    assert count_params(model) == params
    assert model.config.input_size == size
    counted = count_macs(model, size)                       # torch.utils.flop_counter, on meta
    assert counted == estimate_macs(model.config.network, size)
    assert estimate_params(model.config.network) == params
    if macs is not None:
        assert abs(counted / macs - 1) < 0.01, f"{variant}: {counted / 1e9:.3f} G vs published {macs / 1e9} G"


def test_v2_s_reads_like_paper_table_4():
    rows = [(s.block, s.expand_ratio, s.kernel, s.stride, s.out_chs, s.repeats, s.se_ratio)
            for s in EFFICIENTNETV2_S.stages]
    F, M = BlockType.FUSED_MBCONV, BlockType.MBCONV
    assert EFFICIENTNETV2_S.stem_chs == 24 and EFFICIENTNETV2_S.head_chs == 1280
    assert rows == [(F, 1, 3, 1, 24, 2, 0.0), (F, 4, 3, 2, 48, 4, 0.0), (F, 4, 3, 2, 64, 4, 0.0),
                    (M, 4, 3, 2, 128, 6, 0.25), (M, 6, 3, 1, 160, 9, 0.25), (M, 6, 3, 2, 256, 15, 0.25)]


def test_v2_rounds_widths_to_nearest_unlike_v1():
    # V2-B3 (width 1.2): the first stage's 16 channels scale to 19.2 -> 16 (nearest multiple
    # of 8), where V1's rule adds 8 (16 < 0.9 * 19.2) and gives 24 and 18,656 more parameters.
    net = effnet.get_config("efficientnetv2_b3").network
    assert net.stages[0].out_chs == 16 and net.stem_chs == 40 and net.head_chs == 1536
    v1_rule = scale_network(dataclasses.replace(EFFICIENTNETV2_BASE, round_limit=0.9),
                            effnet.get_config("efficientnetv2_b3").scaling)
    assert v1_rule.stages[0].out_chs == 24
    assert estimate_params(v1_rule) - estimate_params(net) == 18_656


def test_flavours_padding_and_batchnorm():
    for name, padding, momentum in (("efficientnetv2_s", "symmetric", 0.1), ("tf_efficientnetv2_s", "same", 0.01)):
        cfg = effnet.get_config(name)
        assert (cfg.padding, cfg.norm_eps, cfg.norm_momentum, cfg.family) == (padding, 1e-3, momentum,
                                                                              "EfficientNetV2")
    assert effnet.get_config("efficientnetv2_s").train_size == 300
    assert effnet.get_config("efficientnetv2_b0").train_size == 192


# ---- weights ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle(data):
    folder = data / "reference-scaling"
    ref = json.loads((folder / "references.json").read_text())["timm.tf_efficientnetv2_b0"]
    return folder, ref


def test_timm_oracle_reproduced(oracle):
    folder, ref = oracle
    model = effnet.create_model("tf_efficientnetv2_b0", weights=folder / ref["weights"]).eval()
    assert count_params(model) == ref["params"]
    x = torch.from_numpy(np.load(folder / ref["inputs"]))
    with torch.no_grad():
        logits = model(x).numpy()
    expected = np.load(folder / ref["logits"])
    assert np.abs(logits - expected).max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_timm_oracle_inputs_are_our_eval_transform(oracle, data):
    # The oracle's eval transform (timm's pretrained_cfg at its 192 px train size) is
    # reproduced by ours from the same photos.
    folder, ref = oracle
    t = ref["eval_transform"]
    pre = effnet.PreprocessConfig(t["input_size"][1], t["crop_pct"], t["interpolation"], tuple(t["mean"]),
                                  tuple(t["std"]), t["crop_mode"])
    transform = eval_transform(pre)
    photos = data / "imagenet-samples"
    ours = torch.stack([transform(load_image(next(photos.rglob(name)))) for name in ref["images"]])
    assert np.abs(ours.numpy() - np.load(folder / ref["inputs"])).max() < 1e-5


def test_v1_file_in_v2_model_and_back_name_the_family(oracle, data):
    folder, ref = oracle
    with pytest.raises(WeightMismatchError, match=r"holds an EfficientNetV2 network but the model "
                                                   r"\(efficientnet_b0\) is an EfficientNet: load it into an "
                                                   r"efficientnetv2_\* or tf_efficientnetv2_\* model"):
        effnet.create_model("efficientnet_b0", weights=folder / ref["weights"])
    with pytest.raises(WeightMismatchError, match=r"holds an EfficientNet network but the model "
                                                   r"\(efficientnetv2_b0\) is an EfficientNetV2"):
        effnet.create_model("efficientnetv2_b0", weights=data / "reference" / "timm_efficientnet_b0.safetensors")


def _torchvision_v2_keys(model):
    """torchvision's names for each of ``model``'s tensors, written from torchvision's module
    tree (torchvision/models/efficientnet.py), independently of effnet's converter tables:
    features.0 = stem (0 conv, 1 BN); features.1..N = stages, block.I their layers in order;
    FusedMBConv: [fused conv-BN-act, project conv-BN] or, with expansion 1, [fused] alone;
    MBConv: [expand, depthwise, SqueezeExcitation(fc1, fc2), project]; features.N+1 = head;
    classifier.1 = Linear."""
    layers = {"FusedMBConv": ("fused", "project"), "MBConv": ("expand", "depthwise", "se", "project")}
    mapping = {"stem.conv": "features.0.0", "stem.bn": "features.0.1",
               "head.conv": f"features.{len(model.stages) + 1}.0", "head.bn": f"features.{len(model.stages) + 1}.1",
               "classifier": "classifier.1"}
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            present = [n for n in layers[type(block).__name__] if not isinstance(getattr(block, n), torch.nn.Identity)]
            for i, layer in enumerate(present):
                ours, theirs = f"stages.{s}.{b}.{layer}", f"features.{s + 1}.{b}.block.{i}"
                if layer == "se":
                    mapping[ours + ".reduce"], mapping[ours + ".expand"] = theirs + ".fc1", theirs + ".fc2"
                else:
                    mapping[ours + ".conv"], mapping[ours + ".bn"] = theirs + ".0", theirs + ".1"
    out = {}
    for key in model.state_dict():
        module, leaf = key.rsplit(".", 1)
        out[key] = f"{mapping[module]}.{leaf}"
    return out


@pytest.mark.parametrize("name", ["efficientnetv2_s", "efficientnetv2_m"])
def test_torchvision_layout_lands_every_tensor_in_place(name, tmp_path):
    # No torchvision V2 file is in the shared data (and torchvision does not run here): a
    # state dict under torchvision's names, each tensor distinct, must land exactly where
    # torchvision's module tree puts it.
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = effnet.create_model(name)
    keys = _torchvision_v2_keys(source)
    sd = {keys[k]: (torch.randn_like(v) if v.is_floating_point() else v.clone())
          for k, v in source.state_dict().items()}
    assert "features.1.0.block.0.0.weight" in sd and "features.4.0.block.2.fc1.weight" in sd
    assert not any(k.startswith("features.1.") and ".block.1." in k for k in sd)  # Fused-MBConv1: one layer
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = effnet.create_model(name, weights=path)
    for ours, theirs in keys.items():
        assert torch.equal(model.state_dict()[ours], sd[theirs]), ours


# ---- each source's eval preprocessing ----------------------------------------------------------

def test_squash_crop_mode_resizes_both_sides(data):
    # timm's crop_mode='squash' (its V2-M/L/XL ports): Resize((s, s)) ignoring the aspect
    # ratio, then CenterCrop. On a non-square photo it differs from the aspect-keeping resize.
    path = next(p for p in sorted((data / "imagenet-samples").rglob("*.JPEG"))
                if abs(Image.open(p).size[0] / Image.open(p).size[1] - 1) > 0.2)
    img = load_image(path)
    pre = effnet.PreprocessConfig(480, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3, "squash")
    x = eval_transform(pre)(img)
    manual = np.asarray(img.resize((480, 480), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert x.shape == (3, 480, 480)
    assert np.abs(x.permute(1, 2, 0).numpy() - (manual - 0.5) / 0.5).max() < 1e-5
    centered = eval_transform(effnet.PreprocessConfig(480, 1.0, "bicubic", (0.5,) * 3, (0.5,) * 3))(img)
    assert (centered - x).abs().mean() > 0.05
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        effnet.PreprocessConfig(480, crop_mode="stretch")


# timm default_cfgs (tf_efficientnetv2_*: test_input_size, crop_pct, crop_mode, mean) and
# torchvision's EfficientNet_V2_*_Weights transforms (crop = resize, interpolation, mean).
@pytest.mark.parametrize("name, tag, size, resize, interp, mean, mode, tf_trained", [
    ("tf_efficientnetv2_s", "timm", 384, 384, "bicubic", (0.5,) * 3, "center", True),
    ("tf_efficientnetv2_m", "timm", 480, 480, "bicubic", (0.5,) * 3, "squash", True),
    ("tf_efficientnetv2_l", "timm_in21k_ft_in1k", 480, 480, "bicubic", (0.5,) * 3, "squash", True),
    ("tf_efficientnetv2_xl", "timm_in21k_ft_in1k", 512, 512, "bicubic", (0.5,) * 3, "squash", True),
    ("tf_efficientnetv2_b0", "timm", 224, 256, "bicubic", effnet.registry.IMAGENET_MEAN, "center", True),
    ("tf_efficientnetv2_b3", "timm", 300, 332, "bicubic", effnet.registry.IMAGENET_MEAN, "center", True),
    ("efficientnetv2_s", "torchvision", 384, 384, "bilinear", effnet.registry.IMAGENET_MEAN, "center", False),
    ("efficientnetv2_m", "torchvision", 480, 480, "bilinear", effnet.registry.IMAGENET_MEAN, "center", False),
    ("efficientnetv2_l", "torchvision", 480, 480, "bicubic", (0.5,) * 3, "center", True),   # a TF port
])
def test_registered_sources_carry_their_own_preprocessing(name, tag, size, resize, interp, mean, mode, tf_trained):
    source = get_weight_source(name, tag)
    pre = source.preprocess
    assert (pre.input_size, pre.resize_size, pre.interpolation, pre.mean, pre.crop_mode) == \
           (size, resize, interp, tuple(float(m) for m in mean), mode)
    assert source.format == tag.split("_")[0] and source.url.startswith("https://")
    assert source.tf_trained == tf_trained
    if source.sha256 is None:             # no published sha256: torch.hub's prefix in the name is checked
        assert effnet.weights.hub.hash_prefix_from_name(source.file_name)


def test_every_tf_v2_name_has_weights_and_its_default_preprocessing():
    for v in PUBLISHED:
        cfg = effnet.get_config(f"tf_efficientnetv2_{v}")
        assert cfg.weights and cfg.preprocess == cfg.weights[0].preprocess, v
    for v in ("s", "m", "l"):
        cfg = effnet.get_config(f"efficientnetv2_{v}")
        assert cfg.weights[0].tag == "torchvision" and cfg.preprocess == cfg.weights[0].preprocess
    # 21k-pretrained first where it exists, as timm orders them
    assert [w.tag for w in effnet.get_config("tf_efficientnetv2_s").weights] == ["timm_in21k_ft_in1k", "timm"]
