"""Knowledge distillation and Noisy Student on the ants/bees photos, from real ImageNet weights.

A. Distillation. A ``tf_efficientnet_lite2`` teacher is fine-tuned (``finetune`` recipe) on
   ants/bees; its logits on the training photos are cached once (``write_logit_cache``); a
   ``tf_efficientnet_lite0`` student is fine-tuned for the same epochs without a teacher,
   and with the cached teacher at T=1 and T=4 (alpha 0.5).
B. Noisy Student. The training photos of each class are split in two halves (seeded); a
   Lite0 teacher is fine-tuned on the labeled half; it pseudo-labels the other half (soft,
   T=1, balanced); a Lite0 student is trained on labeled + pseudo-labeled photos with the
   ``noisy-student`` recipe's noise; against the teacher and against the same student
   recipe on the labeled half alone.
C. Teacher cost. Epochs of plain and cached-teacher training, interleaved round by round
   (one process each, the same data and settings), and one epoch with the teacher run
   online; the table gives each one's seconds and its ratio to the plain epoch.

Every run: batch 16, ``--epochs`` (4) epochs, seed ``--seed``, val top-1 per epoch; the
table gives the best and the last. Run with nothing else on the machine (C is a timing).

    python benchmarks/distill.py [--data ../shared/data/finetune/hymenoptera_data]
        [--out runs/distill_bench] [--epochs 4] [--seed 0] [--rounds 2] [--parts A,B,C]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path


def _fit(model, data, out, epochs, seed, **kw):
    from effnet.train import fit

    t0 = time.perf_counter()
    r = fit(model, data, epochs=epochs, batch_size=16, out=out, overwrite=True, workers=2, seed=seed,
            progress=False, **kw)
    top1 = [h["val_top1"] for h in r.history]
    return dict(best=max(top1), last=top1[-1], per_epoch=top1, seconds=time.perf_counter() - t0,
                epoch_seconds=[h["seconds"] for h in r.history])


def part_a(args, out: Path, results: dict) -> None:
    from effnet.train import Distillation, write_logit_cache

    results["teacher_lite2"] = _fit("tf_efficientnet_lite2", args.data, out / "teacher_lite2", args.epochs, args.seed,
                                    recipe="finetune", pretrained=True)
    teacher = out / "teacher_lite2" / "best"
    write_logit_cache(teacher, args.data, out / "lite2.safetensors", progress=False)
    results["student_plain"] = _fit("tf_efficientnet_lite0", args.data, out / "student_plain", args.epochs, args.seed,
                                    recipe="finetune", pretrained=True)
    for t in (1.0, 4.0):
        results[f"student_kd_T{t:g}"] = _fit(
            "tf_efficientnet_lite0", args.data, out / f"student_kd_T{t:g}", args.epochs, args.seed, recipe="finetune",
            pretrained=True, distill=Distillation(teacher=teacher, cache=out / "lite2.safetensors", temperature=t,
                                                  alpha=0.5))


def _split(data: Path, dst: Path, seed: int) -> Path:
    """dst/labeled/{train,val}/<class>/ (half of each class's train photos, all val photos)
    and dst/unlabeled/ (the other half, flat, no labels)."""
    if dst.exists():
        shutil.rmtree(dst)
    rng = random.Random(seed)
    for cls in sorted(p.name for p in (data / "train").iterdir() if p.is_dir()):
        files = sorted((data / "train" / cls).iterdir())
        rng.shuffle(files)
        half = len(files) // 2
        (dst / "labeled" / "train" / cls).mkdir(parents=True)
        (dst / "unlabeled").mkdir(parents=True, exist_ok=True)
        for f in files[:half]:
            shutil.copy(f, dst / "labeled" / "train" / cls / f.name)
        for f in files[half:]:
            shutil.copy(f, dst / "unlabeled" / f"{cls}_{f.name}")
        shutil.copytree(data / "val" / cls, dst / "labeled" / "val" / cls)
    return dst


def part_b(args, out: Path, results: dict) -> None:
    from effnet.train import Unlabeled, pseudo_label

    split = _split(args.data, out / "half", args.seed)
    labeled = split / "labeled"
    results["ns_teacher"] = _fit("tf_efficientnet_lite0", labeled, out / "ns_teacher", args.epochs, args.seed,
                                 recipe="finetune", pretrained=True)
    r = pseudo_label(out / "ns_teacher" / "best", split / "unlabeled", out / "pseudo.parquet", progress=False)
    n_unl = sum(1 for _ in (split / "unlabeled").iterdir())
    right = 0
    import pyarrow.parquet as pq
    table = pq.read_table(out / "pseudo.parquet").to_pydict()
    classes = ["ants", "bees"]
    for path, label, copy in zip(table["path"], table["label"], table["copy"]):
        right += copy == 0 and Path(path).name.startswith(classes[label])
    results["pseudo_labels"] = dict(r, accuracy=100 * right / n_unl)
    results["ns_baseline_half"] = _fit("tf_efficientnet_lite0", labeled, out / "ns_baseline", args.epochs, args.seed,
                                       recipe="noisy-student", pretrained=True)
    results["ns_student"] = _fit("tf_efficientnet_lite0", labeled, out / "ns_student", args.epochs, args.seed,
                                 recipe="noisy-student", pretrained=True,
                                 unlabeled=Unlabeled(out / "pseudo.parquet", ratio=1.0,
                                                     teacher=out / "ns_teacher" / "best"))


def part_c(args, out: Path, results: dict) -> None:
    from effnet.train import Distillation, get_recipe

    teacher = out / "teacher_lite2" / "best"
    cache = out / "lite2.safetensors"
    if not cache.is_file():
        raise SystemExit("part C needs part A's teacher and cache: run with --parts A,C first")
    recipe = get_recipe("finetune").replace(head_only_epochs=0)
    times: dict = {"plain": [], "cached": []}
    for _ in range(args.rounds):
        times["plain"].append(_fit("tf_efficientnet_lite0", args.data, out / "c_plain", 1, args.seed, recipe=recipe,
                                   pretrained=True)["epoch_seconds"][0])
        times["cached"].append(_fit("tf_efficientnet_lite0", args.data, out / "c_cached", 1, args.seed, recipe=recipe,
                                    pretrained=True, distill=Distillation(teacher=teacher, cache=cache)
                                    )["epoch_seconds"][0])
    times["online"] = [_fit("tf_efficientnet_lite0", args.data, out / "c_online", 1, args.seed, recipe=recipe,
                            pretrained=True, distill=Distillation(teacher=teacher))["epoch_seconds"][0]]
    results["teacher_cost"] = {k: dict(seconds=v, median=statistics.median(v)) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/finetune/hymenoptera_data"))
    p.add_argument("--out", type=Path, default=Path("runs/distill_bench"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--parts", default="A,B,C")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for part in args.parts.split(","):
        {"A": part_a, "B": part_b, "C": part_c}[part.strip()](args, args.out, results)
        results_path.write_text(json.dumps(results, indent=1))
    print("| run | val top-1 per epoch | best | last | wall s |")
    print("|---|---|---:|---:|---:|")
    for name, r in results.items():
        if "per_epoch" in r:
            print(f"| {name} | {', '.join(f'{v:.2f}' for v in r['per_epoch'])} | {r['best']:.2f} | {r['last']:.2f} "
                  f"| {r['seconds']:.0f} |")
    if "pseudo_labels" in results:
        r = results["pseudo_labels"]
        print(f"\npseudo-labels: {r['kept']} of {r['images']} photos, {r['accuracy']:.2f}% correct, per class "
              f"{r['per_class']}, {r['rows']} rows after balancing")
    if "teacher_cost" in results:
        c = results["teacher_cost"]
        base = c["plain"]["median"]
        print("\n| epoch | seconds (rounds) | ratio to plain |\n|---|---|---:|")
        for k, v in c.items():
            print(f"| {k} | {', '.join(f'{s:.1f}' for s in v['seconds'])} | {v['median'] / base:.3f} |")


if __name__ == "__main__":
    main()
