"""EfficientNetV2's claim is training speed: training images/s of V2 models against the V1
models of their accuracy class, each at its own training size, measured side by side.

Pairs (V2 paper Table 7 puts each V2 model against V1 models of similar top-1):
- ``efficientnetv2_b0`` at 192 px (its official training size) vs ``efficientnet_b1`` at 240 px;
- ``efficientnetv2_s`` at 300 px vs ``efficientnet_b4`` at 380 px.

One process; in every round each model runs one full training step (forward, cross-entropy,
backward, RMSProp step) on the same batch size, models interleaved so that any drift of the
machine hits all of them alike. The table gives the median images/s over the rounds and each
pair's ratio (V2 over V1).

    python benchmarks/v2_training_speed.py [--batch-size 8] [--rounds 3] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

PAIRS = (("efficientnetv2_b0", 192, "efficientnet_b1", 240), ("efficientnetv2_s", 300, "efficientnet_b4", 380))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    import effnet
    from effnet.train import build_optimizer, get_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = []
    for v2, v2_size, v1, v1_size in PAIRS:
        for name, size in ((v2, v2_size), (v1, v1_size)):
            torch.manual_seed(0)
            model = effnet.create_model(name).to(device).train()
            opt = build_optimizer(model, get_recipe("paper"), 1e-3)
            x = torch.randn(args.batch_size, 3, size, size, device=device)
            y = torch.randint(0, 1000, (args.batch_size,), device=device)
            runs.append(dict(name=name, size=size, model=model, opt=opt, x=x, y=y, times=[]))

    def step(r: dict) -> float:
        t0 = time.perf_counter()
        r["opt"].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(r["model"](r["x"]), r["y"]).backward()
        r["opt"].step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for r in runs:                      # warm-up: allocator, kernels
        step(r)
    for _ in range(args.rounds):
        for r in runs:
            r["times"].append(step(r))
    print(f"training step, batch {args.batch_size}, {args.rounds} rounds, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<20}{'px':>5}{'images/s':>10}")
    speed = {}
    for r in runs:
        speed[r["name"]] = args.batch_size / statistics.median(r["times"])
        print(f"{r['name']:<20}{r['size']:>5}{speed[r['name']]:>10.2f}")
    for v2, _, v1, _ in PAIRS:
        print(f"{v2} / {v1}: {speed[v2] / speed[v1]:.2f}x")


if __name__ == "__main__":
    main()
