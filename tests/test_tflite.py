"""The int8 EfficientNet-Lite0 TFLite backbone against the TFLite interpreter (ai-edge-litert)."""

import numpy as np
import pytest
import torch

import effnet
from effnet.data import center_crop, load_image, resize_shorter_side, to_tensor

TFLITE = "weights/efficientnet-lite0_int8_modelmaker_3class.tflite"


@pytest.fixture(scope="module")
def tflite_path(data):
    return data / TFLITE


@pytest.fixture(scope="module")
def photos(data):
    files = sorted((data / "imagenet-samples" / "images").iterdir())
    files += sorted((data / "finetune" / "hymenoptera_data" / "val").glob("*/*"))
    assert len(files) == 304 + 153
    crops = []
    for f in files:
        crops.append(np.asarray(center_crop(resize_shorter_side(load_image(f), 256), 224), dtype=np.uint8))
    return crops


@pytest.fixture(scope="module")
def interpreter_features(tflite_path, photos):
    """The interpreter's own pooled 1280-d features (dequantized int8) for each photo."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    pooled = next(d for d in it.get_tensor_details()
                  if "global_average_pooling2d/Mean" in d["name"] and list(d["shape"]) == [1, 1280])
    scale, zero = pooled["quantization"]
    inp = it.get_input_details()[0]["index"]
    feats = []
    for crop in photos:
        it.set_tensor(inp, crop[None])
        it.invoke()
        feats.append((it.get_tensor(pooled["index"]).astype(np.float32) - zero) * scale)
    return np.concatenate(feats)


def effnet_features(model, photos):
    pre = model.config.preprocess
    x = torch.stack([to_tensor(c, pre.mean, pre.std) for c in photos])
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(b), pre_logits=True)
                          for b in x.split(64)]).numpy()


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors")
def test_lite0_features_match_the_interpreter(tflite_path, photos, interpreter_features):
    model = effnet.create_model("efficientnet_lite0", num_classes=3, weights=tflite_path).eval()
    assert model.config.padding == "same"           # switched for a TF graph
    cos = cosines(effnet_features(model, photos), interpreter_features)
    mean, p5, low = cos.mean(), np.percentile(cos, 5), cos.min()
    print(f"cosine vs interpreter over {len(cos)} photos: mean {mean:.4f}, p5 {p5:.4f}, min {low:.4f}")
    assert mean >= 0.995 and p5 >= 0.99 and low >= 0.95


def test_graph_input_function_is_kept(tflite_path):
    # The graph computes x = pixel - 127 before the stem (QUANTIZE, MUL by 255, ADD -127).
    # effnet feeds the official Lite normalisation, x' = (pixel - 127) / 128, to a stem kernel
    # scaled by 128: the same function, with inputs in [-1, 1] for training.
    import tflite

    model = effnet.create_model("efficientnet_lite0", weights=tflite_path)
    pre = model.config.preprocess
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx((128 / 255,) * 3)
    x = to_tensor(np.full((4, 4, 3), 200, np.uint8), pre.mean, pre.std)
    torch.testing.assert_close(x, torch.full((3, 4, 4), 73.0 / 128))
    # The graph's own stem kernel, read and dequantized here independently (OHWI int8, per-channel scale).
    g = tflite.Model.GetRootAsModel(tflite_path.read_bytes(), 0).Subgraphs(0)
    m = tflite.Model.GetRootAsModel(tflite_path.read_bytes(), 0)
    conv = next(g.Operators(i) for i in range(g.OperatorsLength())
                if m.OperatorCodes(g.Operators(i).OpcodeIndex()).BuiltinCode() == tflite.BuiltinOperator.CONV_2D)
    t = g.Tensors(conv.InputsAsNumpy()[1])
    q = np.frombuffer(m.Buffers(t.Buffer()).DataAsNumpy().tobytes(), np.int8).reshape(t.ShapeAsNumpy())
    w = q.astype(np.float64) * t.Quantization().ScaleAsNumpy().reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(model.stem.conv.weight.detach().numpy(), 128 * w.transpose(0, 3, 1, 2), rtol=1e-6)
    assert model.num_classes == 3          # not given: the file's own 3-class head, never a random one
    assert effnet.create_model("efficientnet_lite0", weights=tflite_path, num_classes=1000).num_classes == 1000


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors")
def test_wrong_padding_is_visibly_worse(tflite_path, photos, interpreter_features):
    with pytest.warns(UserWarning, match="TF-trained weights .*TFLite graph"):
        model = effnet.create_model("efficientnet_lite0", weights=tflite_path, padding="symmetric").eval()
    cos = cosines(effnet_features(model, photos[:48]), interpreter_features[:48])
    assert cos.mean() < 0.97


def test_three_class_head_and_folded_bias(tflite_path):
    model = effnet.create_model("efficientnet_lite0", num_classes=3, weights=tflite_path)
    assert model.classifier.weight.shape == (3, 1280)
    bn = model.stages[1][0].depthwise.bn
    # BatchNorm carries the folded bias as a pass-through: weight 1, mean 0, var 1 - eps.
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and bn.running_mean.abs().max() == 0
    torch.testing.assert_close(bn.running_var + bn.eps, torch.ones_like(bn.running_var))
    assert bn.bias.abs().max() > 0


def test_graph_of_another_architecture_is_refused(tflite_path):
    with pytest.raises(ValueError, match="has 49 convolutions, the model 64"):
        effnet.create_model("efficientnet_lite1", weights=tflite_path)
    with pytest.raises(ValueError, match="no squeeze-and-excitation"):
        effnet.create_model("efficientnet_b0", weights=tflite_path)
