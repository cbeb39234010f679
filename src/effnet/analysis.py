"""Model analysis: parameter counts and MACs (torch.utils.flop_counter).

Counting runs on the ``meta`` device when asked, so even EfficientNet-L2 at 800 px is
counted in a fraction of a second without allocating its weights or activations.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "model_stats", "ENGINES", "build_engine", "benchmark", "time_fn",
           "reference_models", "format_table"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int | None = None,
               batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass, from torch.utils.flop_counter (MACs = FLOPs / 2).

    flop_counter counts convolutions and matrix products (the classifier), which is the
    convention of paper Table 2; BN, activations, pooling and elementwise ops add none.

    Args:
        model: the network, on any device including ``meta``.
        input_size: input side in pixels (square) or (height, width).
        in_chans: input channels (default: ``model.in_chans`` or 3).
        batch_size: images per forward pass; the result is for the whole batch.

    Returns:
        MACs as an int.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    chans = in_chans or getattr(model, "in_chans", 3)
    ref = next(model.parameters())
    x = torch.zeros(batch_size, chans, h, w, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_stats(name: str, num_classes: int = 1000) -> dict:
    """Params and MACs at the native resolution of a registered model, counted on ``meta``.

    Returns:
        ``{"name", "params", "macs", "input_size"}`` (params and MACs as ints).
    """
    from .registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    size = model.config.input_size
    return dict(name=name, params=count_params(model), macs=count_macs(model, size), input_size=size)


# ---- latency / throughput benchmarks ----------------------------------------------------------

ENGINES = ("eager", "channels_last", "compile", "onnx", "onnx-int8")


def _peak_rss_reset() -> int:
    """Reset the kernel's peak-RSS mark (Linux /proc/self/clear_refs) and return current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def build_engine(model: nn.Module, engine: str, resolution: int, calibration=None, workdir=None):
    """A callable ``f(x: Tensor (N, C, H, W)) -> logits`` running ``model`` with ``engine``.

    Engines: ``eager`` (fp32 NCHW), ``channels_last`` (NHWC memory format), ``compile``
    (torch.compile of the BN-folded model, inductor with freezing), ``onnx`` (BN folded,
    exported and run in onnxruntime with all graph optimisations), ``onnx-int8`` (that model
    statically quantized, calibrated on ``calibration`` batches).
    """
    import tempfile
    from pathlib import Path

    from . import deploy

    model = model.eval()
    if engine == "eager":
        return lambda x: model(x)
    if engine == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))
    if engine == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(deploy.fold_bn(model))
        return lambda x: compiled(x)
    if engine in ("onnx", "onnx-int8"):
        d = Path(workdir or tempfile.mkdtemp(prefix="effnet-bench-"))
        path = deploy.export_onnx(model, d / "model.onnx", input_size=resolution)
        if engine == "onnx-int8":
            if calibration is None:
                raise ValueError("onnx-int8 needs calibration batches")
            path = deploy.quantize_onnx_int8(path, d / "model-int8.onnx", calibration)
        session = deploy.OnnxModel(path, threads=torch.get_num_threads())
        return lambda x: torch.from_numpy(session(x))
    raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")


def time_fn(run, name: str, batch_sizes: Sequence[int], resolution: int, in_chans: int, iters: int, warmup: int,
            macs: int) -> dict:
    """Time ``run(x)`` at the smallest and largest batch size; one row of :func:`benchmark`."""
    import statistics
    import time

    small, large = min(batch_sizes), max(batch_sizes)
    _peak_rss_reset()
    times = {}
    with torch.inference_mode():
        for bs in sorted({small, large}):
            x = torch.randn(bs, in_chans, resolution, resolution)
            for _ in range(warmup):
                run(x)
            t = []
            for _ in range(iters):
                t0 = time.perf_counter()
                run(x)
                t.append(time.perf_counter() - t0)
            times[bs] = sorted(t)
    lat = times[small]
    thr = large / statistics.median(times[large])
    return dict(engine=name, latency_ms=1e3 * statistics.median(lat),
                latency_p90_ms=1e3 * lat[min(len(lat) - 1, int(0.9 * len(lat)))], batch=large,
                images_per_s=thr, peak_mb=_status_kb("VmHWM") / 1024, macs=macs, gflops=2 * macs * thr / 1e9)


def benchmark(model: nn.Module, engines: Sequence[str] = ("eager",), batch_sizes: Sequence[int] = (1, 32),
              resolution: int | None = None, iters: int = 10, warmup: int = 2, calibration=None) -> list[dict]:
    """Measure each engine side by side in this process.

    For each engine: latency at the smallest batch size (median and 90th percentile over
    ``iters`` runs, milliseconds), throughput at the largest (images/s, median run), the
    process's peak resident memory while running (MB; Linux VmHWM, reset after the engine
    is built so export/compile memory is not counted), MACs per image and achieved GFLOP/s
    (2 x MACs x images/s).

    Returns:
        One dict per engine: ``engine, latency_ms, latency_p90_ms, batch, images_per_s,
        peak_mb, macs, gflops``.
    """
    resolution = resolution or model.config.preprocess.input_size
    macs = count_macs(model, resolution)
    return [time_fn(build_engine(model, engine, resolution, calibration), engine, batch_sizes, resolution,
                    model.in_chans, iters, warmup, macs) for engine in engines]


def reference_models(name: str) -> dict:
    """Other projects' implementations of the same model, where importable: ``{label: module}``.

    timm and torchvision (which do not import on a CPU-only torch here) and
    EfficientNet-PyTorch; a label maps to None when the package cannot be imported.
    """
    out = {}
    variant = name.split("_")[-1]
    try:
        import timm
        out["timm"] = timm.create_model(name).eval()
    except Exception:       # ImportError, or timm's own torchvision import failing
        out["timm"] = None
    try:
        import torchvision
        out["torchvision"] = getattr(torchvision.models, name.replace("tf_", ""))().eval()
    except Exception:
        out["torchvision"] = None
    try:
        from efficientnet_pytorch import EfficientNet as LukeMelas
        m = LukeMelas.from_name(f"efficientnet-{variant}")
        m.set_swish(memory_efficient=False)
        out["efficientnet_pytorch"] = m.eval()
    except Exception:
        out["efficientnet_pytorch"] = None
    return out


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`benchmark` as an aligned text table, with throughput ratios to the first row."""
    head = (f"{'engine':<26}{'lat b1 (ms)':>12}{'p90 (ms)':>10}{'batch':>7}{'images/s':>10}{'x first':>9}"
            f"{'peak RSS MB':>12}{'MACs (G)':>10}{'GFLOP/s':>9}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['engine']:<26}{r['latency_ms']:>12.2f}{r['latency_p90_ms']:>10.2f}{r['batch']:>7}"
                     f"{r['images_per_s']:>10.1f}{r['images_per_s'] / rows[0]['images_per_s']:>9.2f}"
                     f"{r['peak_mb']:>12.0f}{r['macs'] / 1e9:>10.3f}{r['gflops']:>9.1f}")
    return "\n".join(lines)
