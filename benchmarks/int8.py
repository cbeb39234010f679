"""INT8 against fp32: throughput side by side and top-1 on a labelled folder, per engine.

For a trained model (an effnet folder such as make demo's runs/demo/best), every engine is
built from the same verified ONNX export; the INT8 file is calibrated on training images
(never the val images it is scored on). Throughput is timed interleaved (time_engines);
top-1 is computed over the whole val folder by each engine itself.

    python benchmarks/int8.py --weights runs/demo/best
        [--val $EFFNET_DATA/finetune/hymenoptera_data/val]
        [--calibration $EFFNET_DATA/finetune/hymenoptera_data/train] [--pt2e]

``--pt2e`` adds PyTorch's own INT8 flow beside onnxruntime's, as the issue asks to measure
both: torch.export, ``prepare_pt2e`` with torchao's ``X86InductorQuantizer`` (its default
static config: int8 per-channel weights, uint8 activations), calibration on the same
images, ``convert_pt2e``, then torch.compile with inductor freezing, run in micro-batches
of 4 like the ONNX engines. It needs torchao (``pip install torchao``), which the project
does not depend on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import effnet
from effnet import deploy
from effnet.analysis import count_macs, paired_ratio, time_engines
from effnet.data import ImageDataset, data_dir, eval_transform


def pt2e_int8(model: torch.nn.Module, calibration, size: int):
    """``f(x (N, 3, size, size) float32 array) -> (N, classes) logits`` from PyTorch's PT2E INT8 flow.

    Raises:
        SystemExit: torchao is not installed.
    """
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise SystemExit("--pt2e needs torchao: pip install torchao")
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    example = torch.from_numpy(calibration[0][:2])           # batch 1 would specialize the batch dimension
    exported = torch.export.export(model.eval(), (example,),
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(torch.from_numpy(batch))
    compiled = torch.compile(convert_pt2e(prepared))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return lambda x: deploy.run_in_micro_batches(run, deploy._as_batch(x), deploy.MICRO_BATCH)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="an effnet folder (save_pretrained / effnet train's best/)")
    p.add_argument("--val", default=str(data_dir() / "finetune" / "hymenoptera_data" / "val"))
    p.add_argument("--calibration", default=str(data_dir() / "finetune" / "hymenoptera_data" / "train"))
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pt2e", action="store_true", help="add PyTorch's PT2E INT8 flow (needs torchao)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = effnet.from_pretrained(args.weights).eval()
    size = model.config.preprocess.input_size
    t = eval_transform(model.config)
    cal_files = sorted(f for f in Path(args.calibration).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(0)                        # a fixed sample across classes, not the first folder
    cal_files = [cal_files[i] for i in sorted(rng.choice(len(cal_files), args.calibration_images, replace=False))]
    calibration = deploy.calibration_batches(model, cal_files, n=len(cal_files))
    val = ImageDataset.from_folder(args.val, t)
    if model.class_names and list(model.class_names) != list(val.classes):
        raise SystemExit(f"the model's classes {model.class_names} are not the val folder's {val.classes}")
    xs, ys = zip(*(val[i][:2] for i in range(len(val))))
    x_val, y_val = torch.stack(xs).numpy(), np.array(ys)

    with tempfile.TemporaryDirectory() as d:
        fp32 = deploy.export_onnx(model, Path(d) / "fp32.onnx")
        int8 = deploy.quantize_onnx_int8(fp32, Path(d) / "int8.onnx", calibration)
        runners = {"onnx": deploy.OnnxModel(fp32, threads=args.threads),
                   "openvino": deploy.OpenVinoModel(fp32, threads=args.threads),
                   "onnx-int8": deploy.OnnxModel(int8, threads=args.threads),
                   "openvino-int8": deploy.OpenVinoModel(int8, threads=args.threads)}
        if args.pt2e:
            runners["pt2e-int8"] = pt2e_int8(model, calibration, size)
        top1 = {}
        for name, f in runners.items():
            pred = np.concatenate([f(x_val[i:i + 64]) for i in range(0, len(x_val), 64)]).argmax(1)
            top1[name] = 100.0 * float((pred == y_val).mean())
        with torch.no_grad():
            eager_pred = model(torch.from_numpy(x_val)).argmax(1).numpy()
        top1_eager = 100.0 * float((eager_pred == y_val).mean())
        file_mb = {k: (int8 if "int8" in k else fp32).stat().st_size / 2 ** 20 for k in runners
                   if k != "pt2e-int8"}
        rows = time_engines(runners, [1, args.batch_size],
                            size, iters=args.iters, rounds=args.rounds, macs=count_macs(model, size))
    fastest_fp32 = max((r for r in rows if "int8" not in r["engine"]), key=lambda r: r["images_per_s"])
    print(f"{model.config.name} from {args.weights}, {size}x{size}, {args.threads} threads; val {len(y_val)} images "
          f"({args.val}); eager fp32 top-1 {top1_eager:.2f}%; INT8 calibrated on {len(cal_files)} images of "
          f"{args.calibration}; throughput at batch {args.batch_size}, ratios against the fastest fp32 engine")
    print(f"{'engine':<15}{'lat b1 ms':>10}{'images/s':>10}{'x fp32':>8}{'val top-1':>11}{'file MB':>9}")
    for r in rows:
        print(f"{r['engine']:<15}{r['latency_ms']:>10.2f}{r['images_per_s']:>10.1f}"
              f"{paired_ratio(r, fastest_fp32, 'images_per_s'):>8.2f}{top1[r['engine']]:>10.2f}%"
              + (f"{file_mb[r['engine']]:>9.1f}" if r["engine"] in file_mb else f"{'-':>9}"))


if __name__ == "__main__":
    main()
