"""Training-step time and peak memory: eager fp32 NCHW vs channels_last, bf16 autocast, gradient
checkpointing (effnet's default: stages before stride 32; and all stages), as ratios against
eager fp32 measured in the same run.

Each configuration runs in a fresh subprocess, so its peak resident memory (Linux VmHWM
above the resident size after building the model) is its own.

    python benchmarks/training.py [--model efficientnet_b0] [--batch-size 32] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "eager fp32": {},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"amp": True},
    "grad ckpt (default)": {"checkpoint": "default"},
    "grad ckpt (all)": {"checkpoint": "all"},
}


def one(model_name: str, batch: int, size: int, steps: int, cfg: dict) -> dict:
    import torch

    import effnet
    from effnet.analysis import _peak_rss_reset, _status_kb

    torch.manual_seed(0)
    model = effnet.create_model(model_name).train()
    fmt = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if cfg.get("checkpoint"):
        stages = list(range(len(model.stages))) if cfg["checkpoint"] == "all" else None
        model.set_grad_checkpointing(True, stages=stages)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,))
    base = _peak_rss_reset()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cfg.get("amp"))):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:                                  # the first step warms up
            times.append(time.perf_counter() - t0)
    return dict(step_s=statistics.median(times), peak_mb=(_status_kb("VmHWM") * 1024 - base) / 2 ** 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.batch_size, args.resolution, args.steps, CONFIGS[args.one])))
        return
    rows = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                              "--resolution", str(args.resolution), "--steps", str(args.steps), "--one", name],
                             capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = rows["eager fp32"]
    print(f"{args.model} training step at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"median of {args.steps} steps; ratios against eager fp32")
    print(f"{'config':<20}{'step (s)':>10}{'x time':>8}{'peak MB':>10}{'x memory':>10}")
    for name, r in rows.items():
        print(f"{name:<20}{r['step_s']:>10.2f}{r['step_s'] / ref['step_s']:>8.2f}{r['peak_mb']:>10.0f}"
              f"{r['peak_mb'] / ref['peak_mb']:>10.2f}")


if __name__ == "__main__":
    main()
