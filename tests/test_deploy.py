"""Deployment: BN folding, ONNX export verified in onnxruntime, INT8 agreement on real photos, bench."""

import numpy as np
import pytest
import torch

import effnet
from effnet import deploy
from effnet.cli import main
from effnet.data import eval_transform, load_image
from effnet.scaling import estimate_macs

from conftest import randomize_bn, realistic_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_lite0", "tf_efficientnetv2_b0"])
def test_bn_folding_is_exact(name):
    torch.manual_seed(0)
    model = realistic_model(name)
    x = torch.randn(2, 3, 97, 131)
    # In float64 the fold is exact: what remains is rounding far below any tolerance.
    m64 = realistic_model(name).double()
    with torch.no_grad():
        diff64 = (deploy.fold_bn(m64)(x.double()) - m64(x.double())).abs().max().item()
    assert diff64 < 1e-10 * max(1.0, m64(x.double()).abs().max().item()), diff64
    # In float32 the folded model agrees within 5e-5 relative to the logits' scale (V1 B0
    # ~5e-6; V2-B0's longer reductions of its full 3x3 convs ~1.1e-5, measured).
    folded = deploy.fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        ref = model(x)
        diff = (folded(x) - ref).abs().max().item()
    assert diff < 5e-5 * max(1.0, ref.abs().max().item()), diff
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())    # the original is untouched


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0", "efficientnetv2_b0"])
def test_onnx_export_matches_eager(name, tmp_path):
    torch.manual_seed(0)
    model = realistic_model(name)
    path = deploy.export_onnx(model, tmp_path / f"{name}.onnx", input_size=224)   # verifies internally too
    x = torch.randn(3, 3, 224, 224)                                               # another batch size
    with torch.no_grad():
        ref = model(x).numpy()
    out = deploy.OnnxModel(path, threads=2)(x)
    assert ref.std() > 0.1 and np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_openvino_matches_eager_at_every_batch_split(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(effnet.create_model(name)).eval()
    path = deploy.export_onnx(model, tmp_path / f"{name}.onnx", input_size=96)
    ov = deploy.OpenVinoModel(path, threads=2, micro_batch=4)
    for n in (1, 4, 9):             # one request; one micro-batch; micro-batches of 4, 4 and 1
        x = torch.randn(n, 3, 96, 96)
        with torch.no_grad():
            ref = model(x).numpy()
        out = ov(x)
        assert out.shape == ref.shape and ref.std() > 0.05
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), (n, np.abs(out - ref).max())
    assert sorted(shape[0] for shape in ov._requests) == [1, 4]          # one compiled model per shape met
    x = torch.randn(9, 3, 96, 96)                                         # the whole batch in one request
    np.testing.assert_allclose(deploy.OpenVinoModel(path, threads=2, micro_batch=None)(x), ov(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, se_blocks", [("efficientnet_b0", 16), ("efficientnet_b3", 26)])
def test_blocked_se_graph_rewrites_the_se_blocks_and_computes_the_same(name, se_blocks, tmp_path):
    from effnet.deploy.ort_graph import blocked_se_graph, nchwc_block_size, ort_optimized_graph

    torch.manual_seed(0)
    model = randomize_bn(effnet.create_model(name)).eval()
    path = deploy.export_onnx(model, tmp_path / f"{name}.onnx", input_size=96)
    graph, rewritten = blocked_se_graph(ort_optimized_graph(path, threads=2))
    block = nchwc_block_size()
    if block is None:                    # a CPU without onnxruntime NCHWc kernels: nothing to rewrite
        assert rewritten == 0
        return
    assert block in (8, 16)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("GlobalAveragePool") == ops.count("Tile") == rewritten
    if block == 16:                      # measured with AVX-512: every SE block, b3's NCHW gates included
        assert rewritten == se_blocks
    else:
        assert rewritten >= 1
    if name == "efficientnet_b0":        # no SE multiply left between a ReorderOutput and a ReorderInput
        assert rewritten == 16 and ops.count("ReorderInput") + ops.count("ReorderOutput") <= 8, ops
    blocked, plain = deploy.onnx_session(path, threads=2), deploy.onnx_session(path, threads=2, optimization="all")
    for n in (1, 3):
        x = torch.randn(n, 3, 96, 96)
        with torch.no_grad():
            ref = model(x).numpy()
        got, want = blocked.run(None, {"input": x.numpy()})[0], plain.run(None, {"input": x.numpy()})[0]
        assert ref.std() > 0.05
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max() and np.abs(got - ref).max() < 1e-4


def test_blocked_session_falls_back_when_the_rewrite_is_wrong(tmp_path, monkeypatch):
    import effnet.deploy.ort_graph as og
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = randomize_bn(effnet.create_model("efficientnet_b0")).eval()
    path = deploy.export_onnx(model, tmp_path / "b0.onnx", input_size=64)
    real = og.blocked_se_graph

    def broken(optimized):                       # the rewrite, with the classifier's weights doubled
        graph, n = real(optimized)
        gemm = next(node for node in graph.graph.node if node.op_type == "Gemm")
        w = next(t for t in graph.graph.initializer if t.name == gemm.input[1])
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
        return graph, max(n, 1)

    monkeypatch.setattr(og, "blocked_se_graph", broken)
    with pytest.warns(UserWarning, match="differs from onnxruntime's"):
        session = deploy.onnx_session(path, threads=2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - ref).max() < 1e-4     # onnxruntime's own graph

    def failing(optimized):
        raise RuntimeError("protobuf limit")

    monkeypatch.setattr(og, "blocked_se_graph", failing)
    with pytest.warns(UserWarning, match="could not rewrite .*protobuf limit"):
        session = deploy.onnx_session(path, threads=2)
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - ref).max() < 1e-4
    with pytest.raises(ValueError, match="unknown optimization 'fastest'"):
        deploy.onnx_session(path, optimization="fastest")


def test_micro_batches_cover_the_batch_in_order(tmp_path):
    calls = []

    def run(b):
        calls.append(len(b))
        return b[:, :1, 0, 0] * 2

    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    out = deploy.run_in_micro_batches(run, x, 4)
    assert calls == [4, 4, 2] and out[:, 0].tolist() == [2.0 * i for i in range(10)]
    assert deploy.run_in_micro_batches(run, x, None).shape == (10, 1) and calls[-1] == 10
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        deploy.OpenVinoModel(tmp_path / "never-read.onnx")(np.zeros((3, 224, 224)))   # checked before compiling


def test_openvino_missing_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)        # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'effnet\[openvino\]'"):
        deploy.OpenVinoModel(tmp_path / "any.onnx")


def test_export_refuses_a_wrong_model(tmp_path, monkeypatch):
    model = effnet.create_model("efficientnet_lite0").eval()
    monkeypatch.setattr(deploy.export, "fold_bn", lambda m: _Broken(m))     # a "fold" that changes the function
    with pytest.raises(deploy.ExportError, match="differs from eager"):
        deploy.export_onnx(model, tmp_path / "bad.onnx", input_size=64)
    assert not (tmp_path / "bad.onnx").exists()


class _Broken(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m.eval()
        self.config, self.in_chans = m.config, m.in_chans

    def forward(self, x):
        return self.m(x) * 1.01 + 0.1


def test_int8_top1_agreement_on_shared_photos(data, tmp_path):
    model = effnet.create_model("efficientnet_lite0", num_classes=None,
                                weights=data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite").eval()
    t = eval_transform(model.config)
    files = sorted((data / "imagenet-samples" / "images").iterdir())
    files += sorted((data / "finetune" / "hymenoptera_data" / "val").glob("*/*"))
    x = torch.stack([t(load_image(f)) for f in files]).numpy()
    calibration = [x[i:i + 16] for i in range(0, 64, 16)]
    fp32 = deploy.export_onnx(model, tmp_path / "fp32.onnx")
    int8 = deploy.quantize_onnx_int8(fp32, tmp_path / "int8.onnx", calibration)
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size
    engines = dict(fp32=deploy.OnnxModel(fp32, threads=2), onnx_int8=deploy.OnnxModel(int8, threads=2),
                   openvino_int8=deploy.OpenVinoModel(int8, threads=2))
    pred = {k: np.concatenate([f(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1) for k, f in engines.items()}
    for k in ("onnx_int8", "openvino_int8"):
        agreement = (pred[k] == pred["fp32"]).mean()
        print(f"{k} vs FP32 top-1 agreement over {len(x)} shared photos: {100 * agreement:.1f}%")
        assert agreement >= 0.95, k


def test_export_cli_onnx_and_torchscript(tmp_path, capsys, data):
    weights = str(data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite")
    common = ["export", "--model", "efficientnet_lite0", "--weights", weights, "--resolution", "96"]
    assert main(common + ["--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(common + ["--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    onnx = deploy.OnnxModel(tmp_path / "m.onnx")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = scripted(x).numpy()
    assert out.shape == (2, 3)
    np.testing.assert_allclose(onnx(x), out, atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnetv2_b0"])
def test_bench_prints_a_table_at_tiny_size(name, capsys):
    engines = ["eager", "channels_last", "onnx", "openvino"]
    argv = ["bench", "--model", name, "--resolution", "64", "--batch-sizes", "1,2",
            "--engines", ",".join(engines), "--iters", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    table = [line.split() for line in out if line.split() and line.split()[0] in engines]
    assert [r[0] for r in table] == engines
    for r in table:     # engine, latency, p90, x first, batch, images/s, x first, peak MB, MACs (G), GFLOP/s
        lat, p90, batch, thr = float(r[1]), float(r[2]), int(r[4]), float(r[5])
        assert 0 < lat <= p90 and batch == 2 and thr > 0
        assert float(r[8]) == round(estimate_macs(effnet.get_config(name).network, 64) / 1e9, 3)
        assert abs(float(r[9]) - 2 * float(r[8]) * thr) < 0.06 + 0.01 * float(r[9])    # GFLOP/s = 2 MACs x images/s
    assert table[0][3] == table[0][6] == "1.00"


def test_benchmark_interleaves_engines_and_reports_each():
    from effnet.analysis import time_engines

    order = []
    runs = {"a": lambda x: order.append("a"), "b": lambda x: order.append("b")}
    rows = time_engines(runs, [1, 2], 8, iters=6, warmup=1, macs=10 ** 6, rounds=3)
    timed = order[4:]                                   # after 2 engines x 2 batch sizes x 1 warm-up run
    assert timed[:3] == ["a"] * 3 and timed[3:6] == ["b"] * 3 and timed[6:9] == ["a"] * 3   # a, b, a, b, ...
    assert len(timed) == 3 * 2 * (2 + 1) and [r["engine"] for r in rows] == ["a", "b"]
    assert all(r["batch"] == 2 and r["images_per_s"] > 0 and r["latency_p90_ms"] >= r["latency_ms"] for r in rows)
    assert all(len(r["round_latency_ms"]) == len(r["round_images_per_s"]) == 3 for r in rows)   # one per round


def test_paired_ratio_compares_engines_round_by_round():
    from effnet.analysis import paired_ratio

    # The machine flips between a fast and a slow state; the engine is 0.9x the reference's
    # time in every round but one, where it alone drew the slow state. Overall medians say
    # 1.35x; round by round it is 0.9x.
    ref = dict(latency_ms=5.0, round_latency_ms=[5.0, 5.0, 7.5, 7.5, 5.0], images_per_s=100.0,
               round_images_per_s=[100.0, 100.0, 70.0, 70.0, 100.0])
    row = dict(latency_ms=6.75, round_latency_ms=[4.5, 6.75, 6.75, 6.75, 4.5], images_per_s=77.0,
               round_images_per_s=[125.0, 77.0, 87.5, 87.5, 125.0])
    assert row["latency_ms"] / ref["latency_ms"] == pytest.approx(1.35)
    assert paired_ratio(row, ref) == pytest.approx(0.9)
    assert paired_ratio(row, ref, "images_per_s") == pytest.approx(1.25)
    assert paired_ratio(dict(latency_ms=3.0), dict(latency_ms=6.0)) == 0.5          # no rounds: overall ratio
