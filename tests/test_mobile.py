"""Mobile formats (LiteRT / TFLite and ExecuTorch, fp32 and INT8): verified exports, runners, CLI, errors.

Needs the mobile extra (litert-torch, ai-edge-litert, executorch), which ``make test`` installs;
skipped with the reason otherwise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import effnet
from effnet import deploy
from effnet.cli import main
from effnet.data import eval_transform, load_image
from effnet.deploy import mobile

from conftest import realistic_model

for _module in ("litert_torch", "ai_edge_litert", "executorch"):
    pytest.importorskip(_module, reason=f"{_module} is not installed: pip install 'effnet[mobile]' "
                                        "(make test installs it)")

SMALL = 128      # px: the fp32 checks at a small size


def photos(data, model, n, size=None, folder=("imagenet-samples", "images")):
    """The first ``n`` shared photos preprocessed for ``model`` (at ``size`` px): (n, 3, S, S) float32."""
    import dataclasses

    pre = model.config.preprocess
    t = eval_transform(dataclasses.replace(pre, input_size=size) if size else pre)
    files = sorted(data.joinpath(*folder).rglob("*.*"))[:n]
    return torch.stack([t(load_image(f)) for f in files]).numpy()


@pytest.fixture(scope="module")
def lite0():
    return effnet.create_model("tf_efficientnet_lite0", pretrained=True).eval()


@pytest.fixture(scope="module")
def b0(data):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return effnet.create_model("efficientnet_b0", weights=data / "reference" / "timm_efficientnet_b0.safetensors").eval()


@pytest.mark.parametrize("fmt", ["tflite", "executorch"])
@pytest.mark.parametrize("name", ["lite0", "b0"])
def test_fp32_export_matches_eager_on_photos(fmt, name, request, data, tmp_path):
    model = request.getfixturevalue(name)
    x = photos(data, model, 8, SMALL)
    path = tmp_path / f"m.{fmt}"
    report = deploy.export_mobile(model, path, fmt, input_size=SMALL, images=x)
    runner = deploy.TFLiteModel(path, threads=2) if fmt == "tflite" else deploy.ExecuTorchModel(path, threads=2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = runner(x)                     # a batch of 8 through a batch-1 program
    scale = max(1.0, float(np.abs(ref).max()))
    assert out.shape == ref.shape == (8, 1000)
    assert np.abs(out - ref).max() <= 1e-4 * scale
    assert (out.argmax(1) == ref.argmax(1)).all()
    meta = json.loads(mobile.metadata_path(path).read_text())
    layout = "NHWC" if fmt == "tflite" else "NCHW"
    shape = [1, SMALL, SMALL, 3] if fmt == "tflite" else [1, 3, SMALL, SMALL]
    assert (meta["input"]["layout"], meta["input"]["shape"], meta["input"]["dtype"]) == (layout, shape, "float32")
    assert meta["preprocess"]["mean"] == list(model.config.preprocess.mean)
    assert meta["verification"]["images"] == 8 and meta["verification"]["max_abs_diff"] <= 1e-4 * scale
    assert len(meta["classes"]) == 1000 and report["bytes"] == path.stat().st_size


@pytest.mark.parametrize("fmt", ["tflite-int8", "executorch-int8"])
def test_int8_agrees_with_fp32_on_32_imagenet_photos(fmt, lite0, data, tmp_path):
    x = photos(data, lite0, 32)
    calibration = [photos(data, lite0, 32, folder=("finetune", "hymenoptera_data", "train"))]   # not the scored photos
    path = tmp_path / f"m.{fmt}"
    deploy.export_mobile(lite0, path, fmt, calibration=calibration, images=x[:4])
    runner = deploy.TFLiteModel(path) if fmt.startswith("tflite") else deploy.ExecuTorchModel(path)
    with torch.no_grad():
        ref = lite0(torch.from_numpy(x)).numpy()
    agreement = (runner(x).argmax(1) == ref.argmax(1)).mean()
    print(f"{fmt}: top-1 agrees with fp32 eager on {agreement:.1%} of 32 photos, {path.stat().st_size / 2 ** 20:.2f} MB")
    assert agreement >= 0.9
    assert path.stat().st_size < 0.35 * 17.7 * 2 ** 20          # int8 weights: about a quarter of the fp32 file
    meta = json.loads(mobile.metadata_path(path).read_text())
    if fmt == "tflite-int8":      # full-integer, like the official Lite files: int8 in and out
        assert meta["input"]["dtype"] == meta["output"]["dtype"] == "int8"
        assert meta["input"]["quantization"]["scale"] > 0
        ops = mobile.tflite_summary(path)["ops"]
        assert ops["CONV_2D"] == 33 and ops["DEPTHWISE_CONV_2D"] == 16
        assert "DEQUANTIZE" not in ops           # no float island left (residual adds and ReLU6 in int8)


class DataDependent(nn.Module):
    """A layer neither converter can take: Python control flow on a tensor's value."""

    def forward(self, x):
        return x * 2 if x.mean() > 0 else x


class Sort(nn.Module):
    """A layer that exports but has no ExecuTorch kernel here (aten::sort, not delegated to XNNPACK)."""

    def forward(self, x):
        return torch.sort(x, dim=1)[0]


@pytest.mark.parametrize("fmt, layer, why", [
    ("tflite", DataDependent, "GuardOnDataDependentSymNode"),
    ("executorch", DataDependent, "GuardOnDataDependentSymNode"),
    ("executorch", Sort, "the ExecuTorch runtime has no kernel for aten::sort"),
])
def test_a_layer_that_cannot_convert_is_named(fmt, layer, why, tmp_path):
    model = realistic_model("efficientnet_lite0")
    model.stages[2][1].depthwise = nn.Sequential(model.stages[2][1].depthwise, layer())
    pattern = rf"{fmt}: cannot convert layer stages\.2\.1\.depthwise\.1 \({layer.__name__}\): .*{why}"
    with pytest.raises(deploy.ExportError, match=pattern):
        deploy.export_mobile(model, tmp_path / "m", fmt, input_size=64)
    assert not (tmp_path / "m").exists() and not mobile.metadata_path(tmp_path / "m").exists()


def test_runners_read_the_official_int8_tflite_and_refuse_bad_files(data, tmp_path, monkeypatch):
    official = data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite"
    runner = deploy.TFLiteModel(official)            # uint8 NHWC input, uint8 softmax output
    assert runner.nhwc and runner.input["dtype"] == np.uint8
    imported = effnet.create_model("efficientnet_lite0", num_classes=None, weights=official).eval()
    x = photos(data, imported, 8, folder=("finetune", "hymenoptera_data", "val"))
    with torch.no_grad():
        ref = imported(torch.from_numpy(x)).softmax(1).numpy()
    out = runner(x)
    assert out.shape == (8, 3) and np.abs(out.sum(1) - 1).max() < 0.02       # probabilities
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 7 / 8
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(ValueError):
        deploy.TFLiteModel(junk)
    with pytest.raises(RuntimeError):
        deploy.ExecuTorchModel(junk)
    monkeypatch.setattr(mobile, "MAX_PROGRAM_MB", 1)
    with pytest.raises(ValueError, match="over the 1 MiB cap"):
        deploy.TFLiteModel(official)


def test_export_and_predict_cli(lite0, data, tmp_path, capsys):
    out = tmp_path / "lite0.tflite"
    common = ["--model", "tf_efficientnet_lite0", "--pretrained"]
    assert main(["export", *common, "--format", "tflite", "--resolution", str(SMALL), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NHWC 1x128x128x3 float32" in printed and "on 8 photos" in printed and out.exists()
    image = sorted((data / "imagenet-samples" / "images").iterdir())[0]
    for engine in ("eager", "executorch"):
        assert main(["predict", str(image), *common, "--engine", engine, "--topk", "3", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        if engine == "eager":
            expected = got
    top = lambda r: [(c["index"], round(c["prob"], 3)) for c in r[0]["top"]]     # noqa: E731
    assert top(got) == top(expected)
