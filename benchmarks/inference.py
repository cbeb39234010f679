"""Inference speed: effnet's engines against the reference export path, side by side in one run.

The reference path is what a careful user does today: the same architecture exported with
torch.onnx (BatchNorm not folded) and run in onnxruntime with default session settings.
EfficientNet-PyTorch's own model, exported the same way, is added when it is installed.
Ratios are throughput over the reference path's and latency over its latency.

    python benchmarks/inference.py [--model efficientnet_b0] [--engines ...] [--iters 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import effnet
from effnet.analysis import benchmark, count_macs, time_fn


def time_session(session, name: str, batch_sizes, size: int, iters: int, macs: int) -> dict:
    """One benchmark row for an onnxruntime session, timed exactly as effnet's engines are."""
    inp = session.get_inputs()[0].name
    run = lambda x: session.run(None, {inp: x.numpy()})  # noqa: E731
    return time_fn(run, name, batch_sizes, size, 3, iters, 2, macs)


def reference_session(module: torch.nn.Module, size: int, workdir: Path, name: str):
    import onnxruntime as ort

    path = workdir / f"{name}.onnx"
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(module.eval(), (x,), str(path), input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])   # default settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--engines", default="eager,channels_last,onnx,onnx-int8")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = effnet.create_model(args.model).eval()
    size = model.config.preprocess.input_size
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    macs = count_macs(model, size)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ref = reference_session(model, size, Path(d), "reference")
        rows.append(time_session(ref, "reference-onnx", sizes, size, args.iters, macs))
        try:
            from efficientnet_pytorch import EfficientNet as LukeMelas

            variant = args.model.split("_")[-1]
            lm = LukeMelas.from_name(f"efficientnet-{variant}", image_size=size)
            lm.set_swish(memory_efficient=False)          # its custom autograd Swish does not export
            rows.append(time_session(reference_session(lm, size, Path(d), "lukemelas"),
                                     "lukemelas-onnx", sizes, size, args.iters, macs))
        except ImportError:
            pass
        calibration = None
        if "onnx-int8" in args.engines:
            from effnet.data import data_dir, eval_transform, load_image

            files = sorted((data_dir() / "imagenet-samples" / "images").iterdir())[:64]
            t = eval_transform(model.config)
            x = torch.stack([t(load_image(f)) for f in files]).numpy()
            calibration = [x[i:i + 16] for i in range(0, len(x), 16)]
        rows += benchmark(model, args.engines.split(","), sizes, size, args.iters, calibration=calibration)
    refrow = rows[0]
    print(f"{args.model} at {size}x{size}, fp32 unless named, {args.threads} threads; latency at batch "
          f"{min(sizes)}, throughput at batch {max(sizes)}; ratios against reference-onnx")
    print(f"{'engine':<16}{'lat b1 ms':>10}{'p90 ms':>8}{'x ref lat':>10}{'images/s':>10}{'x ref thr':>10}"
          f"{'peak RSS MB':>12}{'GFLOP/s':>9}")
    for r in rows:
        print(f"{r['engine']:<16}{r['latency_ms']:>10.2f}{r['latency_p90_ms']:>8.2f}"
              f"{r['latency_ms'] / refrow['latency_ms']:>10.2f}{r['images_per_s']:>10.1f}"
              f"{r['images_per_s'] / refrow['images_per_s']:>10.2f}{r['peak_mb']:>12.0f}{r['gflops']:>9.1f}")


if __name__ == "__main__":
    main()
