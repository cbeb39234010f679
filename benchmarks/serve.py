"""The HTTP server under load: latency and throughput at concurrency 1, 4, 16, 64, then with bad uploads.

One run, side by side:

1. The bare engine (the server's :class:`~effnet.serve.Classifier`: onnx, threads not
   spinning, in this process, before the server starts): median ms of a batch-1 call on a
   preprocessed photo, of decode + preprocess (resizing on 1 and on 2 threads), and of
   decode + engine (what one request must do at least). While the server runs, the bare
   engine is timed again between ``--rounds`` concurrency-1 rounds, and the overhead is the
   median over rounds of (request p50 - engine median): the machine's drift cancels.
2. ``effnet serve --engine onnx --max-batch 16 --batch-timeout-ms 5`` in a subprocess on a
   free 127.0.0.1 port, the real ImageNet Lite0 weights; a small asyncio load generator
   (HTTP/1.1 keep-alive, one connection per concurrent client, raw JPEG bodies of the shared
   ImageNet photos in turn) at each concurrency for ``--requests`` requests or ``--seconds``,
   whichever ends first: p50/p95/p99 latency (ms, client side), images/s, errors, and the
   server's mean batch size (from /metrics).
3. The same at concurrency 16 with 5% bad uploads mixed in (truncated JPEGs and text
   bodies): their status codes, 5xx count, and the good requests' p50 against step 2's.

Server and client share the machine's cores (2 here): the numbers include the client's
CPU. Run with nothing else on the machine.

    python benchmarks/serve.py [--concurrency 1,4,16,64] [--requests 400] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

MODEL = ["--model", "tf_efficientnet_lite0", "--pretrained"]


def _photos(n: int = 32) -> list:
    from effnet.data import data_dir

    files = sorted((data_dir() / "imagenet-samples" / "images").glob("*.JPEG"))[:n]
    return [f.read_bytes() for f in files]


class BareEngine:
    """The server's engine and preprocessing in this process (:class:`effnet.serve.Classifier`,
    onnx, threads not spinning, as the server builds them), timed call by call."""

    def __init__(self, photos: list) -> None:
        import effnet
        from effnet.serve.classifier import Classifier

        self.photos = photos
        self.classifier = Classifier(effnet.create_model("tf_efficientnet_lite0", pretrained=True).eval(), "onnx")
        self.x = self.classifier.preprocess(photos[0])[None]
        for _ in range(20):
            self.classifier(self.x)

    def engine_ms(self, iters: int) -> float:
        """Median ms of a batch-1 engine call (softmax included), back to back."""
        return _median_ms(lambda i: self.classifier(self.x), iters)

    def decode_ms(self, iters: int, split: bool = False) -> float:
        """Median ms of decode + preprocess of a photo (``split``: resize on 2 threads)."""
        return _median_ms(lambda i: self.classifier.preprocess(self.photos[i % len(self.photos)], "p", split), iters)

    def decode_engine_ms(self, iters: int) -> float:
        """Median ms of what a lone request must do at least: decode (split) + engine."""
        c = self.classifier
        return _median_ms(lambda i: c(c.preprocess(self.photos[i % len(self.photos)], "p", True)[None]), iters)


def _median_ms(fn, iters: int) -> float:
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


async def _request(reader, writer, body: bytes, ctype: str) -> tuple:
    writer.write(b"POST /predict?topk=5 HTTP/1.1\r\nHost: bench\r\nContent-Type: " + ctype.encode() +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")   # status line + headers, one read
    status, length, close = int(head[0].split()[1]), 0, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "connection" and "close" in value.lower():
            close = True
    await reader.readexactly(length)
    return status, close


async def load(port: int, concurrency: int, requests: int, seconds: float, bodies: list) -> dict:
    """``concurrency`` keep-alive clients sending ``bodies`` (``(bytes, content_type, good)``) in turn."""
    latencies, statuses, counter = [], [], iter(range(requests))
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                body, ctype, good = bodies[(i * 7 + k) % len(bodies)]
                t0 = time.perf_counter()
                status, close = await _request(reader, writer, body, ctype)
                latencies.append((time.perf_counter() - t0, good, status))
                statuses.append(status)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    good = sorted(t for t, g, s in latencies if g and s == 200)
    q = (lambda p: 1000 * good[min(len(good) - 1, int(p * len(good)))]) if good else (lambda p: float("nan"))
    codes: dict = {}
    for s in statuses:
        codes[s] = codes.get(s, 0) + 1
    return {"concurrency": concurrency, "requests": len(statuses), "ok": len(good), "p50_ms": q(0.5),
            "p95_ms": q(0.95), "p99_ms": q(0.99), "images_per_s": len(good) / wall, "codes": codes,
            "errors_5xx": sum(n for s, n in codes.items() if s >= 500),
            "unexpected": sum(1 for t, g, s in latencies if (s == 200) != g)}


def _metric(url: str, name: str) -> float:
    from conftest import prometheus_sum

    return prometheus_sum(urllib.request.urlopen(url + "/metrics").read().decode(), name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level (at most)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time per concurrency level (at most)")
    ap.add_argument("--rounds", type=int, default=5, help="concurrency-1 rounds in turn with the bare engine")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    if not {1, 16} <= set(levels):
        ap.error("--concurrency must include 1 and 16: the targets compare them")
    photos = _photos()
    engine = BareEngine(photos)
    bare = {"engine_ms": engine.engine_ms(200), "decode_ms": engine.decode_ms(200),
            "decode_split_ms": engine.decode_ms(200, split=True), "decode_engine_ms": engine.decode_engine_ms(200)}
    print(f"bare onnx engine, batch 1: {bare['engine_ms']:.2f} ms; decode + preprocess: {bare['decode_ms']:.2f} ms "
          f"({bare['decode_split_ms']:.2f} ms resizing on 2 threads); decode (2 threads) + engine: "
          f"{bare['decode_engine_ms']:.2f} ms (medians)", flush=True)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import ServerProcess

    good = [(p, "image/jpeg", True) for p in photos]
    bad = [(photos[0][:len(photos[0]) // 3], "image/jpeg", False), (b"not an image", "image/jpeg", False)]
    rows = []
    server = ServerProcess(["serve", *MODEL, "--engine", "onnx", "--max-batch", "16", "--batch-timeout-ms", "5"])
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(load(port, 4, 40, 10, good))                         # warm-up: connections, shapes
        # concurrency 1 against the bare engine in rounds taken in turn, so the machine's drift
        # (this 2-core VM's speed wanders by 20-30% over minutes) falls on both alike
        c1_rounds = []
        for _ in range(args.rounds):
            e = engine.engine_ms(60)
            r = asyncio.run(load(port, 1, args.requests // (2 * args.rounds), args.seconds, good))
            c1_rounds.append({"engine_ms": e, "p50_ms": r["p50_ms"], "overhead_ms": r["p50_ms"] - e})
            print(json.dumps(c1_rounds[-1]), flush=True)
        for c in levels:
            b0, n0 = _metric(url, "effnet_batch_size_sum"), _metric(url, "effnet_batch_size_count")
            r = asyncio.run(load(port, c, args.requests if c > 1 else args.requests // 2, args.seconds, good))
            r["mean_batch"] = (_metric(url, "effnet_batch_size_sum") - b0) / max(
                1.0, _metric(url, "effnet_batch_size_count") - n0)
            rows.append(r)
            print(json.dumps(r), flush=True)
        # 5% bad uploads: 1 in 20, truncated JPEGs and text bodies in turn, at shuffled places
        mixed = [bad[(i // 20) % 2] if i % 20 == 19 else good[i % len(good)] for i in range(400)]
        random.Random(0).shuffle(mixed)
        r = asyncio.run(load(port, 16, args.requests, args.seconds, mixed))
        r["bad_share"] = sum(1 for b in mixed if not b[2]) / len(mixed)
        rows.append({**r, "mixed": True})
        print(json.dumps(rows[-1]), flush=True)
    c1 = next(r for r in rows if r["concurrency"] == 1 and not r.get("mixed"))
    c16 = next(r for r in rows if r["concurrency"] == 16 and not r.get("mixed"))
    print("\n| concurrency | requests | p50 ms | p95 ms | p99 ms | images/s | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = f"{r['concurrency']}{' + 5% bad' if r.get('mixed') else ''}"
        errs = "0" if not r["errors_5xx"] and not r["unexpected"] else f"{r['errors_5xx']} 5xx, {r['unexpected']} unexpected"
        if r.get("mixed"):
            errs = f"{r['errors_5xx']} 5xx; 4xx: {sum(n for s, n in r['codes'].items() if 400 <= s < 500)}"
        print(f"| {label} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['images_per_s']:.1f} | {r.get('mean_batch', float('nan')):.2f} | {errs} |")
    overhead = statistics.median(r["overhead_ms"] for r in c1_rounds)
    print(f"\nconcurrency 1, {len(c1_rounds)} rounds in turn with the bare engine: request p50 minus engine median = "
          + ", ".join(f"{r['p50_ms']:.2f} - {r['engine_ms']:.2f}" for r in c1_rounds)
          + f" ms; median overhead {overhead:.2f} ms")
    print(f"concurrency 1 (own run): p50 {c1['p50_ms']:.2f} ms; decode (2 threads) + engine in process "
          f"{bare['decode_engine_ms']:.2f} ms")
    print(f"concurrency 16 / concurrency 1 throughput: {c16['images_per_s'] / c1['images_per_s']:.2f}x")
    mixed = rows[-1]
    print(f"5% bad uploads at concurrency 16: good p50 {mixed['p50_ms']:.1f} ms vs {c16['p50_ms']:.1f} ms "
          f"({mixed['p50_ms'] / c16['p50_ms']:.3f}x), 5xx {mixed['errors_5xx']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bare": bare, "c1_rounds": c1_rounds, "overhead_ms": overhead,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
