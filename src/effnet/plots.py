"""Figures: the family's accuracy against cost, training curves, search/sweep trials, class
activation maps (paper Figs. 1, 3, 5, 7, 8).

Every function draws with matplotlib's object API (``matplotlib.figure.Figure`` on the Agg
canvas: no pyplot state, no display needed) and writes its PNG through
:func:`effnet._io.atomic_write`, creating the output's folder when missing; an output name
must end in ``.png`` (checked before anything is drawn). ``matplotlib`` is imported only when
a figure is drawn.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

__all__ = ["family_points", "plot_family", "plot_metrics", "plot_trials", "plot_run", "upsample_cam",
           "plot_cam_rows", "plot_cam_grid"]

PathLike = Union[str, os.PathLike]


def _figure(width: float, height: float, layout: Optional[str] = None):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def _png_path(path: PathLike) -> Path:
    """``path`` as a Path; ValueError unless its name ends in ``.png`` (any case): every figure
    is written as PNG, and PNG bytes in a ``.jpg`` or ``.pdf`` file would mislead viewers."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure file {path} must end in .png (figures are written as PNG); "
                         f"give a name like {path.stem or 'figure'}.png")
    return path


def _save(fig, path: PathLike, dpi: int = 100) -> Path:
    from ._io import atomic_write, make_parent

    path = _png_path(path)
    make_parent(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    # matplotlib writes RGBA; the figures are opaque, and RGB is ~15% smaller for photos.
    from PIL import Image

    buf.seek(0)
    rgb = io.BytesIO()
    Image.open(buf).convert("RGB").save(rgb, format="PNG", optimize=True)
    return atomic_write(path, rgb.getvalue())


def _number(text) -> Optional[float]:
    """A CSV cell as a finite float, or None (empty, 'nan', text)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: PathLike) -> tuple[list[str], list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


# ---- the family: accuracy against cost --------------------------------------------------------

def family_points(pattern: str = "*") -> list[dict]:
    """Every registered model with a published ImageNet top-1, with its params and MACs.

    One point per (model, weight source) whose :class:`~effnet.registry.WeightSource` has a
    ``top1``. MACs are counted (on the ``meta`` device, nothing allocated) at the input
    size of that source's preprocessing, where the top-1 was measured (torchvision's B2
    is scored at 288 px, not the native 260).

    Args:
        pattern: shell-style filter on model names (``"*lite*"``).

    Returns:
        A list of dicts ``name, family, source`` (weight tag), ``top1`` (%), ``params``
        (int), ``macs`` (int, multiply-adds per image) and ``input_size`` (pixels), sorted
        by family then MACs. Empty when no registered source publishes a top-1.
    """
    from .analysis import count_macs, count_params
    from .registry import create_model, get_config, list_models

    points = []
    for name in list_models(pattern):
        cfg = get_config(name)
        sources = [w for w in cfg.weights if w.top1 is not None]
        if not sources:
            continue
        with torch.device("meta"):
            model = create_model(name)
        params = count_params(model)
        for w in sources:
            size = w.preprocess.input_size
            points.append(dict(name=name, family=cfg.family, source=w.tag, top1=float(w.top1), params=params,
                               macs=count_macs(model, size), input_size=size))
    return sorted(points, key=lambda p: (p["family"], p["source"], p["macs"]))


def _log_axis_labels(axis) -> None:
    """Plain numbers on a log axis (0.5, 2, 20 rather than 5x10^-1), minor ticks at 2 and 5."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos, keep=("1", "2", "5")):
        return f"{v:g}" if v > 0 and f"{v:e}"[0] in keep else ""
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(FuncFormatter(fmt))


def _short(name: str) -> str:
    for prefix in ("tf_efficientnet_", "efficientnet_"):
        if name.startswith(prefix):
            return name[len(prefix):].upper() if "lite" not in name else name[len(prefix):].capitalize()
    return name


def plot_family(out_png: PathLike, points: Optional[List[dict]] = None) -> Path:
    """Top-1 against MACs and against params for the registered models with a published top-1
    (paper Figs. 1 and 5 style: log x axes, one labelled point per model and weight source,
    a line per family and source).

    Args:
        out_png: the PNG to write (its folder is created).
        points: rows as :func:`family_points` returns (default: computed now).

    Returns:
        ``out_png`` as a Path.

    Raises:
        ValueError: ``out_png`` does not end in ``.png``, or no point to plot.
        WriteError (an OSError): the file cannot be written.
    """
    out_png = _png_path(out_png)
    points = family_points() if points is None else points
    if not points:
        raise ValueError("no registered model has a published top-1 (WeightSource.top1); nothing to plot")
    fig = _figure(12, 5)
    axes = fig.subplots(1, 2)
    groups: dict = {}
    for p in points:
        groups.setdefault((p["family"], p["source"]), []).append(p)
    markers = "osD^v<>p*h"
    for ax, key, unit, xlabel in ((axes[0], "macs", 1e9, "MACs per image (billions, log scale)"),
                                  (axes[1], "params", 1e6, "parameters (millions, log scale)")):
        labelled: set = set()
        for i, ((family, source), pts) in enumerate(sorted(groups.items())):
            pts = sorted(pts, key=lambda p: p[key])
            xs, ys = [p[key] / unit for p in pts], [p["top1"] for p in pts]
            ax.plot(xs, ys, marker=markers[i % len(markers)], label=f"{family} ({source} weights)")
            for p, x, y in zip(pts, xs, ys):
                if p["name"] not in labelled:                     # one label per model (several sources)
                    labelled.add(p["name"])
                    ax.annotate(_short(p["name"]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xscale("log")
        _log_axis_labels(ax.xaxis)
        ax.set(xlabel=xlabel, ylabel="ImageNet top-1 (%, published)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_title("top-1 against MACs")
    axes[1].set_title("top-1 against model size")
    fig.tight_layout()
    return _save(fig, out_png)


# ---- runs: training curves, search and sweep trials -------------------------------------------

def plot_metrics(csv_path: PathLike, out_png: PathLike) -> Path:
    """Training curves of a run's ``metrics.csv`` (written by :func:`effnet.train.fit`):
    train loss, train/val top-1 (and val top-5) and learning rate against epoch.

    Args:
        csv_path: the metrics file (columns ``epoch, lr, train_loss, train_top1, val_top1,
            val_top5, ...``; empty cells are left out).
        out_png: the PNG to write.

    Returns:
        ``out_png`` as a Path.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``out_png`` does not end in ``.png``, no ``epoch`` column, or no epoch row yet.
    """
    out_png = _png_path(out_png)
    fields, rows = _read_csv(csv_path)
    if "epoch" not in fields:
        raise ValueError(f"{csv_path} has no epoch column (columns: {', '.join(fields) or 'none'}); "
                         f"expected a metrics.csv written by effnet train")
    rows = [r for r in rows if _number(r.get("epoch")) is not None]
    if not rows:
        raise ValueError(f"{csv_path} holds no finished epoch yet; nothing to plot")

    def series(col):
        pts = [(_number(r["epoch"]), _number(r.get(col))) for r in rows]
        return [e for e, v in pts if v is not None], [v for e, v in pts if v is not None]

    fig = _figure(14, 4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    from matplotlib.ticker import MaxNLocator

    ax1.plot(*series("train_loss"), marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    for col, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")):
        xs, ys = series(col)
        if xs:
            ax2.plot(xs, ys, marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    ax3.plot(*series("lr"), marker="o")
    ax3.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(str(Path(csv_path).parent.name or csv_path), fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


_TRIAL_COLUMNS = ("top1", "macs")
_DIM_COLUMNS = ("dim", "dimension")


def plot_trials(csv_path: PathLike, out_png: PathLike, title: Optional[str] = None) -> Path:
    """Top-1 against MACs of a search or sweep's ``trials.csv`` (paper Figs. 3 and 8 style),
    the best trial marked (by the ``score`` column of a search when present, else top-1).

    Rows whose ``top1`` and ``macs`` are not both numbers (failed or unfinished trials) are
    left out. With a ``dim`` (or ``dimension``) column, as a sweep writes, each dimension
    is a line through its trials in MACs order; otherwise trials are points. The best
    trial is ringed and labelled with its ``alpha, beta, gamma`` when the file has them.

    Args:
        csv_path: the trials file; needs columns ``top1`` (%) and ``macs`` (multiply-adds
            per image).
        out_png: the PNG to write.
        title: figure title (default: the folder's name).

    Returns:
        ``out_png`` as a Path.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``out_png`` does not end in ``.png``, a required column is missing, or no
            row has both numbers.
    """
    out_png = _png_path(out_png)
    fields, rows = _read_csv(csv_path)
    missing = [c for c in _TRIAL_COLUMNS if c not in fields]
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {', '.join(missing)} (columns: {', '.join(fields) or 'none'}); "
                         f"expected a trials.csv of effnet search or sweep")
    trials = [r for r in rows if _number(r["top1"]) is not None and _number(r["macs"]) is not None]
    if not trials:
        raise ValueError(f"{csv_path} has {len(rows)} trial row(s) but none with both top1 and macs "
                         f"(no trial finished); nothing to plot")
    macs_max = max(_number(r["macs"]) for r in trials)
    unit, unit_name = (1e9, "billions") if macs_max >= 1e9 else (1e6, "millions")
    dim = next((c for c in _DIM_COLUMNS if c in fields), None)
    fig = _figure(7, 5)
    ax = fig.subplots()
    groups: dict = {}
    for r in trials:
        groups.setdefault((r.get(dim) or "trials") if dim else "trials", []).append(r)
    for label, pts in groups.items():
        pts = sorted(pts, key=lambda r: _number(r["macs"]))
        xs, ys = [_number(r["macs"]) / unit for r in pts], [_number(r["top1"]) for r in pts]
        curve = dim is not None and label != "search"    # a sweep's dimension is a curve; a search's grid is not
        ax.plot(xs, ys, marker="o", linestyle="-" if curve else "none",
                label=label if curve else f"{len(pts)} candidates" if label == "search" else f"{len(pts)} trials")
        if not curve:
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r.get("trial", ""), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    # a search ranks by its objective (the score column); otherwise the best top-1
    key = "score" if all(_number(r.get("score")) is not None for r in trials) else "top1"
    best = max(trials, key=lambda r: _number(r[key]))
    bx, by = _number(best["macs"]) / unit, _number(best["top1"])
    ax.plot([bx], [by], marker="o", markersize=14, markerfacecolor="none", markeredgecolor="red",
            linestyle="none", label="best")
    coeffs = [f"{c}={_number(best[c]):.3g}" for c in ("alpha", "beta", "gamma") if _number(best.get(c)) is not None]
    ax.annotate(f"best {by:.2f}%" + (f"\n{', '.join(coeffs)}" if coeffs else ""), (bx, by),
                textcoords="offset points", xytext=(10, -26), fontsize=8, color="red")
    ax.set(xlabel=f"MACs per image ({unit_name})", ylabel="val top-1 (%)",
           title=title or Path(csv_path).resolve().parent.name)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_run(run_dir: PathLike, out_png: Optional[PathLike] = None) -> Path:
    """Plot a run folder: a search or sweep (``trials.csv``, :func:`plot_trials`) or a
    training run (``metrics.csv``, :func:`plot_metrics`).

    Args:
        run_dir: the folder.
        out_png: the PNG (default: ``trials.png`` or ``curves.png`` in ``run_dir``).

    Returns:
        The PNG written, as a Path.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, or holds neither file.
        ValueError: ``out_png`` does not end in ``.png``; as the plotting function (no
            finished epoch or trial).
    """
    if out_png is not None:
        out_png = _png_path(out_png)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist or is not a folder")
    if (run_dir / "trials.csv").is_file():
        return plot_trials(run_dir / "trials.csv", out_png or run_dir / "trials.png")
    if (run_dir / "metrics.csv").is_file():
        return plot_metrics(run_dir / "metrics.csv", out_png or run_dir / "curves.png")
    raise FileNotFoundError(f"{run_dir} holds neither trials.csv (effnet search / sweep) nor metrics.csv "
                            f"(effnet train); give the folder given to --out of one of them")


# ---- class activation maps ----------------------------------------------------------------------

# upsample_cam: a map whose span is at most this fraction of its magnitude is constant (float32
# rounding of a bilinear upsampling is ~1e-7 relative; a real CAM spans a good part of its range).
CAM_FLAT_TOLERANCE = 1e-6


def upsample_cam(maps: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """CAMs resized to the image and scaled to [0, 1] per map, for display (Zhou et al. 2016).

    Args:
        maps: (N, h, w) float maps from :func:`effnet.analysis.cam`.
        size: output side in pixels, or (H, W).

    Returns:
        (N, H, W) float32 in [0, 1]: bilinear upsampling, then ``(m - min) / (max - min)``
        per map. A constant map (a 32 px model's 1x1 map, say) gives zeros: a span within
        :data:`CAM_FLAT_TOLERANCE` of the map's magnitude ``max(|min|, |max|)`` is float
        rounding of the upsampling, not a pattern to stretch to [0, 1].

    Raises:
        ValueError: ``maps`` is not 3-D.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {tuple(maps.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    up = torch.nn.functional.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    flat = span <= CAM_FLAT_TOLERANCE * torch.maximum(lo.abs(), hi.abs())
    return torch.where(flat, torch.zeros_like(up), (up - lo) / span.clamp_min(1e-30))


def _draw_overlay(ax, photo, heat, alpha: float = 0.5) -> None:
    ax.imshow(photo)
    ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_photo(ax, photo) -> None:
    ax.imshow(photo)
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(name: str, width: int = 28) -> str:
    name = name.split(",")[0]
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_cam_rows(entries: Sequence[dict], out_png: PathLike, title: Optional[str] = None) -> Path:
    """One image's CAMs: a row per model with the photo, the heat-map overlay and the top-5.

    Args:
        entries: one dict per model: ``label`` (str), ``photo`` (H, W, 3) uint8 array (the
            crop the model saw), ``heat`` (H, W) float array in [0, 1] (:func:`upsample_cam`),
            ``top`` list of (class name, probability in [0, 1]) best first, ``class_name``
            (the class whose map is drawn) and ``class_prob`` (its probability in [0, 1]).
        out_png: the PNG to write.
        title: figure title (e.g. the image file name).

    Returns:
        ``out_png`` as a Path.

    Raises:
        ValueError: ``out_png`` does not end in ``.png``.
    """
    out_png = _png_path(out_png)
    n = len(entries)
    fig = _figure(11, 3.3 * n + (0.4 if title else 0))
    axes = fig.subplots(n, 3, squeeze=False, gridspec_kw=dict(width_ratios=[1, 1, 1.3]))
    for row, e in zip(axes, entries):
        _draw_photo(row[0], e["photo"])
        row[0].set_title(e["label"], fontsize=9)
        _draw_overlay(row[1], e["photo"], e["heat"])
        row[1].set_title(f"CAM: {_wrap(e['class_name'])}", fontsize=9)
        names = [_wrap(c) for c, _ in e["top"]][::-1]
        probs = [100 * p for _, p in e["top"]][::-1]
        row[2].barh(range(len(probs)), probs, color="tab:blue")
        row[2].set_yticks(range(len(names)), names, fontsize=8)
        row[2].set_xlim(0, 100)
        row[2].set_xlabel("probability (%)", fontsize=8)
        row[2].set_title(f"top-{len(probs)}", fontsize=9)
        for i, p in enumerate(probs):
            row[2].text(min(p + 1, 80), i, f"{p:.1f}", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_cam_grid(rows: Sequence[Sequence[dict]], out_png: PathLike, title: Optional[str] = None,
                  dpi: int = 80) -> Path:
    """Several images' CAMs in one figure like paper Fig. 7: a row per image, the photo then
    a column per model, each overlay titled with its class and probability. The photo column
    is the first model's crop (models with other crop fractions see slightly more or less).

    Args:
        rows: per image, the entries of :func:`plot_cam_rows` (one per model, same order).
        out_png: the PNG to write.
        title: figure title.
        dpi: resolution (at 80, 184-pixel panels: a grid of 4 photos and one model is ~400 KB).

    Returns:
        ``out_png`` as a Path.

    Raises:
        ValueError: ``out_png`` does not end in ``.png``.
    """
    out_png = _png_path(out_png)
    n, m = len(rows), len(rows[0])
    # constrained layout: the first row's two-line titles (model, class) do not eat the others' room
    fig = _figure(2.3 * (m + 1), 2.45 * n + 0.3 + (0.4 if title else 0), layout="constrained")
    axes = fig.subplots(n, m + 1, squeeze=False)
    for i, (ax_row, entries) in enumerate(zip(axes, rows)):
        _draw_photo(ax_row[0], entries[0]["photo"])
        if i == 0:
            ax_row[0].set_title("image", fontsize=10)
        for ax, e in zip(ax_row[1:], entries):
            _draw_overlay(ax, e["photo"], e["heat"])
            header = f"{e['label']}\n" if i == 0 else ""
            ax.set_title(f"{header}{_wrap(e['class_name'], 22)} {100 * e['class_prob']:.0f}%", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png, dpi=dpi)
