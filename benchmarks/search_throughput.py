"""Search throughput: the same trials run one after another in process on all cores, and on
Ray Tune with 1 CPU per trial (trials side by side), measured in one run; the ratio of
trials per hour is what the issue asks to be at least 1.3.

Each runner gets its own study folder (so nothing is reused between them) and the same
trials: ``--trials`` candidates of the default grid at phi = 1, trained for ``--epochs`` on
``--data``. Wall time counts everything a user waits for, Ray's start-up included.

    python benchmarks/search_throughput.py --data ../shared/data/proxy/flowers12 \\
        [--model efficientnet_b0] [--trials 8] [--epochs 5] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from effnet.search import search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("EFFNET_DATA", "../shared/data"), "proxy",
                                                   "flowers12"))
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, runner, cpus in (("in process, one after another", "local", cores),
                                    ("Ray Tune, 1 CPU per trial", "ray", 1)):
            start = time.perf_counter()
            r = search(args.model, args.data, os.path.join(tmp, runner), epochs=args.epochs,
                       image_size=args.image_size, batch_size=args.batch_size, max_trials=args.trials,
                       runner=runner, cpus_per_trial=cpus, log=lambda s: None)
            wall = time.perf_counter() - start
            done = sum(row["status"] == "done" for row in r.rows)
            rows.append((label, cpus, done, wall, done / wall * 3600,
                         {row["trial"]: (row["top1"], row["seconds"]) for row in r.rows}))
    print(f"{args.model}, {args.trials} trials x {args.epochs} epoch(s) at {args.image_size} px base, "
          f"batch {args.batch_size}, {cores} cores\n")
    print("| runner | CPUs per trial | trials done | wall (s) | trials/hour | x |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, cpus, done, wall, per_hour, _ in rows:
        print(f"| {label} | {cpus} | {done} | {wall:.0f} | {per_hour:.1f} | {per_hour / rows[0][4]:.2f} |")
    print("\nval top-1 and seconds per trial (in process / Ray):")
    for name in rows[0][5]:
        print(f"  {name}: {rows[0][5][name]} / {rows[1][5].get(name)}")


if __name__ == "__main__":
    main()
