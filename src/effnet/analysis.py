"""Model analysis: parameter counts and MACs (torch.utils.flop_counter), engine benchmarks and
class activation maps (:func:`cam`).

Counting runs on the ``meta`` device when asked, so even EfficientNet-L2 at 800 px is
counted in a fraction of a second without allocating its weights or activations.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .deploy import build_engine

__all__ = ["count_params", "count_macs", "model_stats", "benchmark",
           "time_engines", "paired_ratio", "reference_models", "format_table", "cam"]


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


def model_stats(name: str, num_classes: int = 1000, **scaling) -> dict:
    """Params and MACs at the native resolution of a registered model, counted on ``meta``
    (nothing is allocated).

    Args:
        name: a registered model name.
        num_classes: classifier outputs.
        **scaling: ``scaling=`` or ``phi=`` (and ``alpha``/``beta``/``gamma``) as
            :func:`effnet.create_model` takes them: the stats of the scaled network.

    Returns:
        ``{"name", "params", "macs", "input_size", "config"}`` (params and MACs as ints,
        input size in pixels, the model's :class:`~effnet.registry.ModelConfig`).

    Raises:
        As :func:`effnet.create_model` (unknown name, bad coefficients...).
    """
    from .registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **scaling)
    size = model.config.input_size
    return dict(name=name, params=count_params(model), macs=count_macs(model, size), input_size=size,
                config=model.config)


# ---- class activation maps ------------------------------------------------------------------

def _linear_classifier(model: nn.Module) -> nn.Linear:
    """The classifier of a global-average-pool + linear head, or a ValueError saying why not."""
    if not callable(getattr(model, "forward_features", None)) or not callable(getattr(model, "forward_head", None)):
        raise ValueError(f"CAM needs a model with forward_features (the last feature map) and forward_head "
                         f"(global average pool + linear), such as effnet.create_model(...); "
                         f"{type(model).__name__} has not both")
    fc = getattr(model, "classifier", None)
    if not isinstance(fc, nn.Linear):
        what = "no classifier (num_classes=0)" if getattr(model, "num_classes", None) == 0 or isinstance(fc, nn.Identity) \
            else f"a {type(fc).__name__} classifier"
        raise ValueError(f"CAM needs a linear classifier on the pooled features, but {type(model).__name__} has {what}; "
                         f"build the model with num_classes >= 1 (or model.reset_classifier(n) and train it)")
    return fc


def _class_indices(class_index, logits: torch.Tensor) -> torch.Tensor:
    """``class_index`` (None, int, (N,) integer tensor or sequence) as an (N,) int64 tensor, checked."""
    n, k = logits.shape
    if class_index is None:
        return logits.argmax(dim=1)
    if isinstance(class_index, bool) or (torch.is_tensor(class_index) and class_index.dtype == torch.bool):
        raise TypeError(f"class_index must be an int, an (N,) integer tensor or None, got a bool {class_index!r}")
    if not torch.is_tensor(class_index):
        if isinstance(class_index, (float, str, bytes)):
            raise TypeError(f"class_index must be an int, an (N,) integer tensor or None, got "
                            f"{type(class_index).__name__} {class_index!r}")
        try:
            class_index = torch.as_tensor(class_index)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"class_index must be an int, an (N,) integer tensor or None, got "
                            f"{type(class_index).__name__} {class_index!r}") from e
    if class_index.is_floating_point() or class_index.is_complex() or class_index.dtype == torch.bool:
        raise TypeError(f"class_index must hold integers (torch.long), got dtype {class_index.dtype}")
    if class_index.dim() == 0:
        class_index = class_index.expand(n)
    if class_index.shape != (n,):
        raise ValueError(f"class_index must be an int or have shape ({n},), one class per image, "
                         f"got shape {tuple(class_index.shape)}")
    lo, hi = int(class_index.min()), int(class_index.max())
    if lo < 0 or hi >= k:
        bad = lo if lo < 0 else hi
        raise ValueError(f"class_index {bad} is outside the model's {k} classes (0..{k - 1})")
    return class_index.to(device=logits.device, dtype=torch.long)


def cam(model: nn.Module, x: torch.Tensor, class_index=None, *, return_logits: bool = False):
    """Class activation maps (Zhou et al., CVPR 2016; paper Fig. 7) from the last feature map.

    With a global-average-pool + linear head, logit ``k`` is ``mean_hw(W_k . f[:, :, h, w]) + b_k``;
    the CAM of class ``k`` is the map inside that mean, ``M_k[h, w] = sum_c W[k, c] f[c, h, w]``.
    So ``cam(...).mean((1, 2)) + bias[class_index]`` equals the logits (to float rounding,
    about 1e-6 in float32 for logits of a few units). One forward pass, no gradients; the model
    is run in eval mode (and put back in training mode afterwards if it was).

    Args:
        model: an :class:`~effnet.model.ConvNet` (any registered or scaled network), or any
            module with ``forward_features`` -> (N, C, h, w), ``forward_head`` (global average
            pool + linear) and an ``nn.Linear`` ``classifier`` of C inputs.
        x: (N, in_chans, H, W) float images, preprocessed as the model expects
            (:func:`effnet.data.eval_transform`), in the weights' dtype and on their device.
        class_index: the class whose map to make per image: an int (every image), an (N,)
            integer tensor or sequence (one per image), or None: each image's top-1 class.
        return_logits: also return the logits of the same forward pass.

    Returns:
        (N, h, w) maps in the features' dtype (float32 for a float32 model), h = ceil(H/32) and
        w = ceil(W/32) for the registered networks; raw class scores (logit units before
        the bias), not normalised, and not upsampled (see :func:`effnet.plots.upsample_cam`).
        With ``return_logits``: ``(maps, logits)``, logits (N, num_classes).

    Raises:
        ValueError: the model has no linear classifier on pooled features (``num_classes=0``,
            another head); its head is not global-average-pool + linear (the maps' means
            do not give its logits); ``class_index`` out of ``0 .. num_classes - 1`` or not of
            shape (N,).
        TypeError: ``class_index`` neither None, an int nor integers (a float, a bool).
        As ``model.forward_features`` for a bad ``x`` (wrong shape, integer pixels, dtype).
    """
    fc = _linear_classifier(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.forward_features(x)
            if features.dim() != 4 or features.shape[1] != fc.in_features:
                raise ValueError(f"CAM needs a (N, C, h, w) last feature map with C = the classifier's "
                                 f"{fc.in_features} inputs; forward_features gave {tuple(features.shape)}")
            logits = model.forward_head(features)
            k = _class_indices(class_index, logits)
            weights = fc.weight.to(features.dtype)[k]                        # (N, C)
            maps = torch.einsum("nchw,nc->nhw", features, weights)
            bias = fc.bias[k].to(maps.dtype) if fc.bias is not None else 0.0
            score = logits.gather(1, k[:, None])[:, 0]
            # Guard against heads that are not pool + linear (the identity would be false).
            tol = 1e3 * torch.finfo(maps.dtype).eps * (1.0 + float(score.abs().max()))
            gap = float((maps.mean((1, 2)) + bias - score).abs().max())
            if gap > tol:                       # (a NaN gap, from non-finite weights, is not a head error)
                raise ValueError(f"the model's head is not global average pool + linear classifier: the CAM means "
                                 f"differ from its logits by {gap:.3g} (> {tol:.3g}); CAM does not apply")
    finally:
        model.train(was_training)
    return (maps, logits) if return_logits else maps


# ---- latency / throughput benchmarks ----------------------------------------------------------

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


def time_engines(runs: dict, batch_sizes: Sequence[int], resolution: int, in_chans: int = 3, iters: int = 10,
                 warmup: int = 2, macs: int = 0, rounds: int = 3, peak_mb: dict | None = None,
                 settle_s: float = 0.2) -> list[dict]:
    """Time several engines side by side, interleaved, so that machine noise hits all alike.

    Each engine is timed in ``rounds`` rounds taken in turn (engine A, B, C, A, B, C, ...),
    ``iters // rounds`` runs per round at the smallest batch size (latency) and
    ``iters // (2 * rounds)`` at the largest (throughput), at least one of each. On a shared machine whose speed drifts by 10-25% over
    minutes, interleaving keeps the ratios between engines stable where timing one engine
    after another does not.

    Args:
        runs: ``{name: f}``, each ``f(x: Tensor (N, C, H, W)) -> Tensor``, already warmed up
            or not (``warmup`` runs per batch size are done here first).
        batch_sizes: latency at the smallest, throughput at the largest.
        resolution: input side in pixels.
        macs: MACs per image, for achieved GFLOP/s (2 x MACs x images/s).
        peak_mb: ``{name: MB}`` measured by the caller (see :func:`benchmark`); else 0.
        settle_s: pause before each engine's turn, in seconds. onnxruntime's worker threads
            spin for a while after a run; without the pause they take a core from whichever
            engine is timed next (measured: OpenVINO's batch-1 latency 7.6 ms right after an
            onnxruntime session, 5.9 ms after one that does not spin).

    Returns:
        One dict per engine, in ``runs`` order: ``engine, latency_ms`` (median over all
        rounds), ``latency_p90_ms, batch, images_per_s`` (largest batch over its median
        time), ``peak_mb, macs, gflops``, and per round ``round_latency_ms`` and
        ``round_images_per_s`` (that round's medians), from which :func:`paired_ratio`
        compares two engines round by round.
    """
    import statistics
    import time

    small, large = min(batch_sizes), max(batch_sizes)
    inputs = {bs: torch.randn(bs, in_chans, resolution, resolution) for bs in {small, large}}
    times = {name: {small: [], large: []} for name in runs}
    with torch.inference_mode():
        for f in runs.values():
            for bs in inputs:
                for _ in range(warmup):
                    f(inputs[bs])
        for _ in range(max(1, rounds)):
            for name, f in runs.items():
                time.sleep(settle_s)           # let the previous engine's spinning worker threads go idle
                for bs, n in ((small, max(1, iters // rounds)), (large, max(1, iters // (2 * rounds)))):
                    for _ in range(n):
                        t0 = time.perf_counter()
                        f(inputs[bs])
                        times[name][bs].append(time.perf_counter() - t0)
    rows = []
    for name in runs:
        lat = sorted(times[name][small])
        thr = large / statistics.median(times[name][large])
        rows.append(dict(engine=name, latency_ms=1e3 * statistics.median(lat),
                         latency_p90_ms=1e3 * lat[min(len(lat) - 1, int(0.9 * len(lat)))], batch=large,
                         images_per_s=thr, peak_mb=(peak_mb or {}).get(name, 0.0), macs=macs,
                         gflops=2 * macs * thr / 1e9,
                         round_latency_ms=[1e3 * statistics.median(r) for r in _rounds(times[name][small], rounds)],
                         round_images_per_s=[large / statistics.median(r)
                                             for r in _rounds(times[name][large], rounds)]))
    return rows


def _rounds(samples: list, rounds: int) -> list[list]:
    """``samples`` taken in ``rounds`` equal consecutive rounds, split back into them."""
    rounds = max(1, rounds)
    n = len(samples) // rounds
    return [samples[i * n:(i + 1) * n] for i in range(rounds)]


def paired_ratio(row: dict, ref: dict, key: str = "latency_ms") -> float:
    """``row[key] / ref[key]`` as the median of its round-by-round ratios (rows of :func:`time_engines`).

    This machine's speed flips between states within seconds (batch-1 latency of one
    session: 5.1 ms in one round, 7.5 ms in the next, from steal by the hypervisor), so the
    ratio of two overall medians depends on which engine drew more slow rounds. Rounds
    are taken back to back, so the ratio within a round compares like with like; the median
    over rounds discards the rounds where the state flipped mid-round.
    ``key``: ``latency_ms`` or ``images_per_s``. Falls back to the overall ratio for rows
    without rounds.
    """
    import statistics

    per_round = {"latency_ms": "round_latency_ms", "images_per_s": "round_images_per_s"}[key]
    a, b = row.get(per_round), ref.get(per_round)
    if not a or not b or len(a) != len(b):
        return row[key] / ref[key]
    return statistics.median(x / y for x, y in zip(a, b))


def benchmark(model: nn.Module, engines: Sequence[str] = ("eager",), batch_sizes: Sequence[int] = (1, 32),
              resolution: int | None = None, iters: int = 10, warmup: int = 2, calibration=None,
              extra: dict | None = None, rounds: int = 3) -> list[dict]:
    """Measure engines of ``model`` (and any ``extra`` callables) side by side in this process.

    Every engine is built first; its peak memory is its working memory in MB: the rise of
    the process's peak resident set (Linux VmHWM, reset after building) over the resident
    size after building, during one first run at each batch size: activations, workspaces
    and weights packed on first use, not the weights loaded while building, nor export or
    compilation. Then all are timed interleaved by
    :func:`time_engines`: latency at the smallest batch size (median and 90th percentile,
    ms), throughput at the largest (images/s), MACs per image and achieved GFLOP/s.

    Args:
        model: an EfficientNet in eval mode.
        engines: names from :data:`effnet.deploy.ENGINES`.
        resolution: input side in pixels (default: the model's preprocessing size).
        iters: timed runs at the small batch size over all rounds (half as many at the large).
        calibration: preprocessed real-image batches for the INT8 engines.
        extra: ``{label: f}`` other callables to time in the same rounds (a reference
            implementation, another project's model), listed first in the result.
        rounds: interleaved rounds.

    Returns:
        One dict per callable, ``extra`` first: ``engine, latency_ms, latency_p90_ms, batch,
        images_per_s, peak_mb, macs, gflops``.
    """
    resolution = resolution or model.config.preprocess.input_size
    macs = count_macs(model, resolution)
    runs, peak = {}, {}
    todo = [(label, f) for label, f in (extra or {}).items()] + [(e, None) for e in engines]
    with torch.inference_mode():
        for name, f in todo:
            f = f or build_engine(model, name, resolution, calibration)
            rss0 = _peak_rss_reset()
            for bs in sorted({min(batch_sizes), max(batch_sizes)}):
                f(torch.randn(bs, model.in_chans, resolution, resolution))
            peak[name] = max(0.0, (_status_kb("VmHWM") * 1024 - rss0) / 2 ** 20)
            runs[name] = f
    return time_engines(runs, batch_sizes, resolution, model.in_chans, iters, warmup, macs, rounds, peak)


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
    """The rows of :func:`benchmark` as an aligned text table.

    Columns: latency at the small batch (median, 90th percentile, ms) and its ratio to the
    first row's, the large batch, throughput (images/s) and its ratio to the first row's
    (both ratios paired round by round, :func:`paired_ratio`), peak memory (MB), MACs per
    image (G) and achieved GFLOP/s.
    """
    head = (f"{'engine':<26}{'latency ms':>11}{'p90 ms':>8}{'x first':>8}{'batch':>6}{'images/s':>10}{'x first':>8}"
            f"{'peak MB':>8}{'MACs (G)':>9}{'GFLOP/s':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['engine']:<26}{r['latency_ms']:>11.2f}{r['latency_p90_ms']:>8.2f}"
                     f"{paired_ratio(r, rows[0]):>8.2f}{r['batch']:>6}"
                     f"{r['images_per_s']:>10.1f}{paired_ratio(r, rows[0], 'images_per_s'):>8.2f}"
                     f"{r['peak_mb']:>8.0f}{r['macs'] / 1e9:>9.3f}{r['gflops']:>8.1f}")
    return "\n".join(lines)
