import math

import pytest
import torch

import effnet
from effnet.analysis import count_params
from effnet.blocks import MBConv

from conftest import meta_model, randomize_bn, realistic_model

# Parameter counts at 1000 classes of the reference PyTorch implementation (timm).
REFERENCE_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232, "b4": 19_341_616,
    "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960, "b8": 87_413_142, "l2": 480_309_308,
    "lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072, "lite3": 8_197_096, "lite4": 13_006_568,
}


@pytest.mark.parametrize("prefix", ["efficientnet", "tf_efficientnet"])
@pytest.mark.parametrize("variant", list(REFERENCE_PARAMS))
def test_param_counts_equal_reference(prefix, variant):
    assert count_params(meta_model(f"{prefix}_{variant}")) == REFERENCE_PARAMS[variant]


@pytest.mark.parametrize("name", effnet.list_models())
def test_forward_shape_at_native_size(name):
    # Shape inference of every op on the meta device: exact shapes, no compute.
    model = meta_model(name).eval()
    size = model.config.input_size
    feats = model.forward_features(torch.empty(2, 3, size, size, device="meta"))
    assert feats.shape == (2, model.num_features, math.ceil(size / 32), math.ceil(size / 32))
    assert model.forward_head(feats).shape == (2, 1000)


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "tf_efficientnet_lite0",
                                  "tf_efficientnetv2_b0"])
def test_forward_odd_non_square_and_channels(name):
    torch.manual_seed(0)
    for in_chans in (3, 1, 4):
        model = effnet.create_model(name, in_chans=in_chans, num_classes=10).eval()
        with torch.no_grad():
            y = model(torch.randn(1, in_chans, 97, 131))
            fm = model.forward_features(torch.randn(1, in_chans, 97, 131))
        assert y.shape == (1, 10) and torch.isfinite(y).all()
        assert fm.shape == (1, 1280, 4, 5)      # ceil(97/32), ceil(131/32)


def test_wrong_input_channels_is_a_clear_error():
    model = effnet.create_model("efficientnet_b0", in_chans=1)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, H, W\), got \[1, 3, 32, 32\]"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name, chans", [
    ("efficientnet_b0", [16, 24, 40, 112, 320]),
    ("tf_efficientnet_b3", [24, 32, 48, 136, 384]),
    ("efficientnet_lite4", [24, 32, 56, 160, 448]),
    ("efficientnetv2_b0", [16, 32, 48, 112, 192]),     # V2 base: the stride-1 stages 0 and 4 end a level
    ("tf_efficientnetv2_s", [24, 48, 64, 160, 256]),
])
def test_feature_maps_match_feature_info(name, chans):
    model = effnet.create_model(name).eval()
    assert [f["num_chs"] for f in model.feature_info] == chans
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    h, w = 97, 131
    with torch.no_grad():
        maps = model.forward_feature_maps(torch.randn(1, 3, h, w))
    assert [tuple(m.shape) for m in maps] == \
           [(1, c, math.ceil(h / r), math.ceil(w / r)) for c, r in zip(chans, [2, 4, 8, 16, 32])]


@pytest.mark.parametrize("name, params", [("efficientnet_b0", 5_288_548), ("efficientnetv2_b0", 7_139_704)])
def test_num_classes_zero_returns_pooled_features_and_reset_classifier(name, params):
    torch.manual_seed(0)
    model = effnet.create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
        assert feats.shape == (2, 1280)
        torch.testing.assert_close(feats, model.forward_features(x).mean((2, 3)))
    model.reset_classifier(7)
    assert model.classifier.weight.shape == (7, 1280)
    assert model.classifier.weight.abs().max() <= 1 / math.sqrt(7)
    assert model(x).shape == (2, 7)
    assert count_params(effnet.create_model(name, num_classes=0)) == params - 1281 * 1000


def test_drop_path_ramps_linearly_by_block_index():
    model = effnet.create_model("efficientnet_b0", drop_path_rate=0.2)
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 16
    rates = [b.drop_path.p for b in blocks if b.has_skip]
    idx = [i for i, b in enumerate(blocks) if b.has_skip]
    assert rates == pytest.approx([0.2 * i / 16 for i in idx])
    assert idx[0] == 2 and rates[-1] == pytest.approx(0.2 * 14 / 16)   # last skip block is #14 (stage 6)


def test_dropout_per_variant_and_overrides():
    assert effnet.create_model("efficientnet_b0").dropout.p == 0.2
    assert effnet.create_model("efficientnet_b3").dropout.p == 0.3
    m = effnet.create_model("tf_efficientnet_b0", drop_rate=0.5, norm_eps=1e-2)
    assert m.dropout.p == 0.5 and m.stem.bn.eps == 1e-2 and m.config.norm_eps == 1e-2
    assert effnet.create_model("tf_efficientnet_b0").stem.bn.eps == 1e-3
    assert effnet.create_model("tf_efficientnet_b0").stem.bn.momentum == 0.01
    assert effnet.create_model("efficientnet_b0").stem.bn.eps == 1e-5
    with pytest.raises(TypeError, match="unknown override"):
        effnet.create_model("efficientnet_b0", width=2.0)


def test_unknown_name_suggests_close_names():
    with pytest.raises(KeyError, match="efficientnet_b0") as e:
        effnet.create_model("efficientnet-b0")
    assert "Did you mean" in str(e.value)
    with pytest.raises(RuntimeError, match="no pretrained weights"), torch.device("meta"):
        effnet.create_model("efficientnet_b8", pretrained=True)


def test_list_models():
    names = effnet.list_models()
    assert len(names) == 49 and {"mobilenetv1_100", "mobilenetv2_100", "resnet50"} <= set(names)
    assert effnet.list_models("efficientnetv2_*") == [f"efficientnetv2_{v}" for v in
                                                      ("b0", "b1", "b2", "b3", "l", "m", "s", "xl")]
    assert effnet.list_models("efficientnet_b*")[:3] == ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"]
    assert effnet.list_models("*lite*") == [f"efficientnet_lite{i}" for i in range(5)] + \
           [f"tf_efficientnet_lite{i}" for i in range(5)]


def test_official_initialisation():
    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b0")
    w = model.head.conv.weight        # 1x1, 320 -> 1280: std sqrt(2 / 1280)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)
    dw = model.stages[5][0].depthwise.conv.weight   # depthwise 5x5: fan_out = 25
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    assert model.classifier.weight.abs().max().item() <= 1 / math.sqrt(1000)
    assert model.classifier.bias.abs().max().item() == 0


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnetv2_b0"])
def test_gradient_checkpointing_gives_identical_gradients(name):
    torch.manual_seed(0)
    model = effnet.create_model(name, num_classes=5, drop_path_rate=0.0, drop_rate=0.0)
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])

    def grads():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        return [p.grad.clone() for p in model.parameters()]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = grads()
    model.load_state_dict(state)       # BN running stats moved; restore them
    model.set_grad_checkpointing(True)
    ckpt = grads()
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mbconv_skip_only_when_shapes_match():
    assert MBConv(16, 16, 3, 1, 6).has_skip
    assert not MBConv(16, 24, 3, 1, 6).has_skip
    assert not MBConv(16, 16, 3, 2, 6).has_skip
    b = MBConv(16, 16, 3, 1, 6, drop_path_rate=0.5).train()
    x = torch.randn(64, 16, 4, 4)
    out = b(x)
    # Dropped samples reduce to the identity.
    same = [(o - xi).abs().max().item() == 0 for o, xi in zip(out, x)]
    assert 10 < sum(same) < 54


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tf_efficientnetv2_b0"])
def test_torchscript_and_export(name):
    torch.manual_seed(0)
    model = realistic_model(name)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), ref, rtol=1e-5, atol=1e-5)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), ref, rtol=1e-5, atol=1e-5)
    # With a fixed input size, the SAME padding is constant: no shape ops in the graph.
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("sym_size" in t for t in targets), targets
    assert "aten.pad.default" in targets


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tf_efficientnetv2_b0"])
def test_onnx_export_matches_eager(name, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = realistic_model(name)
    x = torch.randn(2, 3, 224, 224)
    path = tmp_path / "b0.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert ref.std() > 0.1                   # real signal, not near-zero logits
    assert abs(out - ref).max() < 1e-4 * max(1.0, abs(ref).max())     # relative to the logits' scale


def test_default_checkpointing_skips_the_stride_32_stages():
    model = effnet.create_model("efficientnet_b3")
    model.set_grad_checkpointing()
    assert model._checkpoint_stages == [0, 1, 2, 3, 4]          # stages 5, 6 run at stride 32
    model.set_grad_checkpointing(True, stages=[0])
    assert model._checkpoint_stages == [0]


# ---- one builder for every baseline -----------------------------------------------------------

@pytest.mark.parametrize("name, reductions", [
    ("resnet50", [4, 8, 16, 32]), ("mobilenetv1_100", [2, 4, 8, 16, 32]), ("mobilenetv2_100", [2, 4, 8, 16, 32]),
])
def test_baselines_script_export_and_give_feature_maps(name, reductions):
    torch.manual_seed(0)
    model = randomize_bn(effnet.create_model(name, num_classes=10)).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=1e-5, atol=1e-5)
        maps = model.forward_feature_maps(x)
    assert [f["reduction"] for f in model.feature_info] == reductions
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]
    assert [tuple(m.shape[2:]) for m in maps] == [(-(-97 // r), -(-131 // r)) for r in reductions]


def test_resnet_bottleneck_is_he_et_al_with_v1_5_striding():
    from effnet.blocks import Bottleneck

    model = effnet.create_model("resnet50")
    first, second = model.stages[1][0], model.stages[1][1]
    assert isinstance(first, Bottleneck)
    # conv3_x: [1x1, 128; 3x3, 128; 1x1, 512], stride on the 3x3, projection shortcut.
    assert first.reduce.conv.weight.shape == (128, 256, 1, 1) and first.reduce.conv.stride == (1, 1)
    assert first.conv.conv.weight.shape == (128, 128, 3, 3) and first.conv.conv.stride == (2, 2)
    assert first.restore.conv.weight.shape == (512, 128, 1, 1)
    assert first.shortcut.conv.weight.shape == (512, 256, 1, 1) and first.shortcut.conv.stride == (2, 2)
    assert isinstance(second.shortcut, torch.nn.Identity)
    # The residual is added before the last ReLU: outputs are non-negative.
    with torch.no_grad():
        assert (first(torch.randn(2, 256, 16, 16)) >= 0).all()


def test_tf_padding_max_pool_keeps_ceil_sizes():
    # The stem max-pool with TF 'SAME' padding: padded pixels never win (-inf), ceil(H / 2).
    model = effnet.create_model("resnet50", padding="same").eval()
    x = torch.randn(1, 3, 100, 75)
    with torch.no_grad():
        pooled = model.stem_pool(model.stem(x))
    assert pooled.shape[2:] == (25, 19)
    from effnet.layers import MaxPool2dSame

    y = -torch.rand(1, 1, 4, 4) - 1                                   # all negative: zero padding would win
    assert (MaxPool2dSame(3, 2)(y) < 0).all()
