"""Inference speed: effnet's engines against the reference export path, side by side in one run.

The reference path is what a careful user does today: the same architecture exported with
torch.onnx (BatchNorm not folded) and run in onnxruntime with default session settings.
EfficientNet-PyTorch's own model, exported the same way, is added when it is installed.
All engines are built first, then timed interleaved (reference, engine 1, engine 2, ...,
reference, ...) so that the machine's drift hits them alike; ratios are latency over the
reference path's latency and throughput over its throughput, each the median of the ratios
within rounds (effnet.analysis.paired_ratio).

    python benchmarks/inference.py [--model efficientnet_b0] [--weights W] [--engines ...]
                                   [--iters 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

import effnet
from effnet.analysis import benchmark, paired_ratio
from effnet.deploy import INT8_ENGINES
from effnet.deploy import calibration_batches


def reference_session(module: torch.nn.Module, size: int, workdir: Path, name: str):
    """``f(x: Tensor) -> Tensor``: ``module`` exported with torch.onnx and run in onnxruntime with defaults."""
    import onnxruntime as ort

    path = workdir / f"{name}.onnx"
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(module.eval(), (x,), str(path), input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])   # default settings
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def cpu_flags() -> str:
    """The CPU's name and its widest vector extensions, as /proc/cpuinfo gives them."""
    name, flags = platform.processor() or "CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
    return f"{name}, " + (" ".join(f for f in wanted if f in flags) or "no AVX2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--weights", default=None, help="an effnet folder (e.g. runs/demo/best) instead of --model")
    p.add_argument("--engines", default="eager,channels_last,compile,onnx,openvino,onnx-int8,openvino-int8")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--iters", type=int, default=30, help="timed batch-1 runs per engine over all rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = effnet.from_pretrained(args.weights) if args.weights else effnet.create_model(args.model)
    model = model.eval()
    size = model.config.preprocess.input_size
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    with tempfile.TemporaryDirectory() as d:
        extra = {"reference-onnx": reference_session(model, size, Path(d), "reference")}
        try:
            from efficientnet_pytorch import EfficientNet as LukeMelas

            if args.weights is None and model.config.name.startswith("efficientnet_b"):
                variant = model.config.name.split("_")[-1]
                lm = LukeMelas.from_name(f"efficientnet-{variant}", image_size=size)
                lm.set_swish(memory_efficient=False)          # its custom autograd Swish does not export
                extra["lukemelas-onnx"] = reference_session(lm, size, Path(d), "lukemelas")
        except ImportError:
            pass
        calibration = calibration_batches(model) if set(engines) & set(INT8_ENGINES) else None   # 64 photos
        rows = benchmark(model, engines, sizes, size, args.iters, calibration=calibration, extra=extra,
                         rounds=args.rounds)
    ref = rows[0]
    print(f"{model.config.name} at {size}x{size}, fp32 unless named, {args.threads} threads, {cpu_flags()}; "
          f"latency at batch {min(sizes)}, throughput at batch {max(sizes)}; {args.rounds} interleaved rounds; "
          f"ratios against reference-onnx")
    print(f"{'engine':<16}{'lat ms':>8}{'p90 ms':>8}{'x ref lat':>10}{'images/s':>10}{'x ref thr':>10}"
          f"{'peak MB':>9}{'GFLOP/s':>9}")
    for r in rows:
        print(f"{r['engine']:<16}{r['latency_ms']:>8.2f}{r['latency_p90_ms']:>8.2f}"
              f"{paired_ratio(r, ref):>10.2f}{r['images_per_s']:>10.1f}"
              f"{paired_ratio(r, ref, 'images_per_s'):>10.2f}{r['peak_mb']:>9.0f}{r['gflops']:>9.1f}")


if __name__ == "__main__":
    main()
