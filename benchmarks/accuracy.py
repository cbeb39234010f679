"""ImageNet top-1 / top-5 of the registered pretrained weights on the shared ImageNet photos.

The 304 labelled photos of ``$EFFNET_DATA/imagenet-samples`` are scored (1) with each eval
preprocessing variant (bicubic or bilinear resize, crop_pct 0.875, the official
size / (size + 32), or 1.0), eager fp32, to choose the registered one; (2) with the
registered preprocessing through every inference engine (onnx, openvino and their static
INT8 versions, calibrated on ants/bees training photos, which are ImageNet photos outside
the 304); (3) with the same file in the symmetric-padding model, which it was not trained for.

    python benchmarks/accuracy.py [--models tf_efficientnet_lite0,...] [--engines ...] [--no-variants]

304 photos are few: one photo is 0.33 points, and a 95% interval on 87% is about +-3.8
points, so variants within 1-3 photos of each other are not told apart by this set.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import torch

import effnet
from effnet import deploy
from effnet.deploy import build_engine
from effnet.data import ImageDataset, data_dir, eval_transform
from effnet.registry import PreprocessConfig

CROPS = ("0.875", "official", "1.0")


def load_set(pre: PreprocessConfig):
    """The 304 photos preprocessed with ``pre``: (N, 3, S, S) float32 and (N,) int64 labels."""
    root = data_dir() / "imagenet-samples"
    ds = ImageDataset.from_csv(root / "labels.csv", eval_transform(pre), root=root)
    items = [ds[i] for i in range(len(ds))]
    bad = [p for x, _, p in items if x is None]
    if bad:
        raise SystemExit(f"unreadable photos: {bad[:3]}")
    return torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items])


def score(run, x: torch.Tensor, y: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    """Top-1 and top-5 (%) of ``run`` (images -> logits) on ``x``, ``y``."""
    logits = torch.cat([run(x[i:i + batch]).float() for i in range(0, len(x), batch)])
    top5 = logits.topk(5, dim=1).indices
    return (100.0 * (top5[:, 0] == y).float().mean().item(), 100.0 * (top5 == y[:, None]).any(1).float().mean().item())


def variant(pre: PreprocessConfig, interpolation: str, crop: str) -> PreprocessConfig:
    pct = {"0.875": 0.875, "official": pre.input_size / (pre.input_size + 32), "1.0": 1.0}[crop]
    return dataclasses.replace(pre, interpolation=interpolation, crop_pct=pct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2")
    parser.add_argument("--engines", default="onnx,openvino,onnx-int8,openvino-int8")
    parser.add_argument("--no-variants", action="store_true", help="skip the preprocessing variants")
    parser.add_argument("--calibration", default=str(data_dir() / "finetune" / "hymenoptera_data" / "train"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model = effnet.create_model(name, pretrained=True).eval()
        source = effnet.get_config(name).weights[0]
        pre = model.config.preprocess
        print(f"{name} ({source.tag}: {source.file_name}), registered preprocessing: {pre.interpolation}, "
              f"crop_pct {pre.crop_pct:.4f}, {pre.input_size} px", flush=True)
        with torch.inference_mode():
            if not args.no_variants:
                for interp in ("bicubic", "bilinear"):
                    for crop in CROPS:
                        v = variant(pre, interp, crop)
                        x, y = load_set(v)
                        t1, t5 = score(model, x, y)
                        mark = " (registered)" if (v.interpolation, round(v.crop_pct, 4)) == \
                            (pre.interpolation, round(pre.crop_pct, 4)) else ""
                        rows.append((name, f"eager, {interp}, crop {crop} ({v.crop_pct:.3f}){mark}", t1, t5))
                        print(f"  {rows[-1][1]:<48} top-1 {t1:6.2f}  top-5 {t5:6.2f}", flush=True)
            x, y = load_set(pre)
            sym = name.replace("tf_", "", 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # the TF-padding warning: measured on purpose
                symmetric = effnet.create_model(sym, weights=package_path(source), num_classes=None).eval()
            t1, t5 = score(symmetric, x, y)
            rows.append((name, f"same file in {sym} (symmetric padding)", t1, t5))
            print(f"  {rows[-1][1]:<48} top-1 {t1:6.2f}  top-5 {t5:6.2f}", flush=True)
        calibration = None
        for engine in [e for e in args.engines.split(",") if e]:
            if engine.endswith("int8") and calibration is None:
                calibration = deploy.calibration_batches(model, args.calibration, n=64)
            t0 = time.perf_counter()
            run = build_engine(model, engine, pre.input_size, calibration)
            with torch.inference_mode():
                t1, t5 = score(run, x, y)
            rows.append((name, f"{engine}, registered preprocessing", t1, t5))
            print(f"  {rows[-1][1]:<48} top-1 {t1:6.2f}  top-5 {t5:6.2f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print("\n| model | engine and preprocessing | top-1 | top-5 |\n|---|---|---:|---:|")
    for name, what, t1, t5 in rows:
        print(f"| {name} | {what} | {t1:.2f} | {t5:.2f} |")


def package_path(source):
    """The local file of a registered package source."""
    from effnet.weights import package_file

    return package_file(source.package, source.sha256)


if __name__ == "__main__":
    main()
