"""Compound scaling as a method: the alpha/beta/gamma grid search and the dimension sweeps.

Paper Section 3.3, step 1: fix ``phi = 1``, assume twice the resources, and grid-search
``alpha, beta, gamma`` under ``alpha * beta**2 * gamma**2 ~= 2`` by training each
candidate; the paper found (1.2, 1.1, 1.15) on B0 but published neither the grid nor the
code. Figures 3, 4 and 8 scale one dimension at a time (width, depth, resolution) and
along ``phi`` for compound scaling.

Every trial here is one ordinary :func:`effnet.train.fit` run of the baseline scaled by a
:class:`effnet.Scaling`, trained from scratch on a proxy task, in its own run folder
``OUT/trials/<name>/``. A trial that finishes writes ``result.json`` there and is never
trained again; one that was killed resumes from its ``last.pt``. Trials run on Ray Tune
(``pip install 'effnet[search]'``; a local Ray instance, or a cluster with ``address``)
when it is installed, else one after another in this process, with the same outputs:
``OUT/trials.csv`` (:data:`TRIAL_COLUMNS`) and ``OUT/study.json`` (what was asked, so that a
re-run with other settings is refused rather than mixed in).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from . import _ray
from ._io import atomic_write
from ._validate import check_float, check_int
from .registry import create_model, get_config
from .scaling import (GRID_ALPHA, GRID_BETA, GRID_GAMMA, PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, Scaling,
                      candidate_grid, compound, estimate_macs, flops_factor, scale_network)
from .train import check_data, fit, get_recipe

__all__ = ["TRIAL_COLUMNS", "SWEEP_DEFAULTS", "Trial", "TrialSettings", "StudyResult", "search", "sweep",
           "run_trials", "run_trial", "objective_scores"]

# One row per trial in OUT/trials.csv.
# flops_factor is Eq. 3's alpha * beta^2 * gamma^2 as asked; macs_factor what the trained network
# really costs over the baseline, after round_repeats (ceil), round_filters (multiples of 8) and
# the resolution's rounding to a multiple of 8 pixels: at small proxy sizes the two differ.
TRIAL_COLUMNS = ["trial", "dim", "alpha", "beta", "gamma", "flops_factor", "phi", "depth", "width", "resolution",
                 "params", "macs", "macs_factor", "top1", "top5", "latency_ms", "seconds", "status"]

# The points of paper Fig. 3 (width w, depth d, resolution r multipliers of B0) and compound
# phi 0..4 (Fig. 8 compares scaled models up to about 16x the baseline's FLOPs).
SWEEP_DEFAULTS = {
    "width": (1.0, 1.4, 1.8, 2.6, 3.8, 5.0),
    "depth": (1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
    "resolution": (1.0, 1.3, 1.7, 2.2, 2.5),
    "compound": (0.0, 1.0, 2.0, 3.0, 4.0),
}

STUDY_FILE = "study.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Trial:
    """One scaled network to train.

    Attributes:
        name: the trial folder's name (``OUT/trials/<name>``), unique in a study.
        dim: what it samples: ``search``, ``width``, ``depth``, ``resolution``,
            ``compound``, or ``width@d<depth>,r<resolution>`` (a Fig. 4 curve).
        width, depth: multipliers of the baseline's channels and repeats.
        resolution: input side in pixels.
        alpha, beta, gamma, phi: the compound coefficients it came from (None for a
            single-dimension point).
    """

    name: str
    dim: str
    width: float
    depth: float
    resolution: int
    alpha: Optional[float] = None
    beta: Optional[float] = None
    gamma: Optional[float] = None
    phi: Optional[float] = None

    @property
    def scaling(self) -> Scaling:
        return Scaling(width=self.width, depth=self.depth, resolution=self.resolution)


@dataclass(frozen=True)
class TrialSettings:
    """How every trial of a study is trained (the same for all, so that they compare).

    Attributes:
        model: the registered baseline (``efficientnet_b0``, ``resnet50``...), random init.
        data: the proxy task, an image folder (``train/`` + ``val/``, or class folders).
        epochs: training epochs per trial, >= 1.
        image_size: the baseline's resolution in pixels; each trial scales it.
        batch_size: images per step.
        recipe: a :data:`effnet.train.RECIPES` name.
        seed: seeds weights, data order and augmentation (same for every trial).
        lr: peak learning rate (None: the recipe's rule).
        workers: DataLoader processes per trial (0: decode in the trial's process).
    """

    model: str
    data: str
    epochs: int
    image_size: int
    batch_size: int = 32
    recipe: str = "paper"
    seed: int = 0
    lr: Optional[float] = None
    workers: int = 0


@dataclass
class StudyResult:
    """A finished search or sweep: ``rows`` (dicts keyed by :data:`TRIAL_COLUMNS`, plus
    ``score``), ranked best first for a search; ``winner`` (the best finished row or None);
    ``csv`` (the trials.csv path); ``trained`` (trials trained by this call)."""

    rows: list
    winner: Optional[dict]
    csv: Path
    trained: int


def _fmt(x: float) -> str:
    return f"{x:g}"


def _trial_for(dim: str, width: float, depth: float, resolution: int, **coefs) -> Trial:
    """A trial named by its network alone (``w1.1_d1.2_r72``): two rows asking for the same
    network (the baseline in every sweep, two grid points that round to one resolution)
    share one training run."""
    return Trial(f"w{_fmt(round(width, 6))}_d{_fmt(round(depth, 6))}_r{resolution}", dim, width, depth, resolution,
                 **coefs)


@functools.lru_cache(maxsize=4096)        # pure, and asked again for every row of every partial table
def trial_macs(model: str, trial: Trial, num_classes: int = 1000) -> int:
    """MACs per image of ``model`` scaled by ``trial`` at its resolution (pure: from the
    scaled block table, :func:`effnet.scaling.estimate_macs`; equal to
    ``torch.utils.flop_counter``'s count)."""
    cfg = get_config(model)
    return estimate_macs(scale_network(cfg.base, cfg.scaling.compose(trial.scaling)), trial.resolution, num_classes)


def search_trials(image_size: int, alpha=GRID_ALPHA, beta=GRID_BETA, gamma=GRID_GAMMA, target: float = 2.0,
                  tolerance: float = 0.1, max_trials: Optional[int] = None) -> list[Trial]:
    """The step-1 trials: each :func:`effnet.scaling.candidate_grid` point at ``phi = 1``
    (depth ``alpha``, width ``beta``, resolution ``gamma * image_size`` rounded to a multiple
    of 8 pixels, :meth:`Scaling.pixels`). Raises ValueError as ``candidate_grid``."""
    trials = []
    for a, b, g in candidate_grid(alpha, beta, gamma, target, tolerance, max_trials):
        s = compound(1.0, a, b, g, base_resolution=image_size)
        trials.append(_trial_for("search", s.width, s.depth, s.resolution, alpha=a, beta=b, gamma=g))
    return trials


def sweep_trials(model: str, image_size: int, dims: Sequence[str] = ("width", "depth", "resolution", "compound"),
                 values: Optional[dict] = None, width_at: Sequence[tuple[float, float]] = (),
                 max_macs: Optional[float] = None, num_classes: int = 1000) -> list[Trial]:
    """Single-dimension trials (paper Fig. 3), compound ones along ``phi`` (Fig. 8, with the
    paper's alpha, beta, gamma) and width curves at fixed (depth, resolution) (Fig. 4).

    Args:
        values: per dimension the multipliers (``phi`` for ``compound``); default
            :data:`SWEEP_DEFAULTS`. A resolution multiplier ``r`` gives ``image_size * r``
            rounded to a multiple of 8 pixels.
        width_at: (depth, resolution multiplier) pairs; each adds the width values at that
            depth and resolution.
        max_macs: drop points whose network costs more MACs per image than this (at its
            resolution, counted by :func:`effnet.scaling.estimate_macs`).

    Raises:
        ValueError: an unknown dimension, a non-positive multiplier, or no point left under
            ``max_macs`` (the cheapest point's MACs are named).
    """
    values = {**SWEEP_DEFAULTS, **(values or {})}
    unknown = sorted(set(dims) - set(SWEEP_DEFAULTS))
    if unknown or not dims:
        raise ValueError(f"unknown sweep dimension(s) {unknown or list(dims)}; choose from {list(SWEEP_DEFAULTS)}")
    trials = []
    for dim in dims:
        for v in values[dim]:
            v = check_float(f"{dim} value", v, 0.0 if dim != "compound" else None,
                            low_open=dim != "compound")
            if dim == "compound":
                s = compound(v, base_resolution=image_size)
                trials.append(_trial_for(dim, s.width, s.depth, s.resolution, alpha=PAPER_ALPHA, beta=PAPER_BETA,
                                         gamma=PAPER_GAMMA, phi=v))
            else:
                s = Scaling(**{dim: float(v)})
                trials.append(_trial_for(dim, s.width, s.depth, s.pixels(image_size)))
    for depth, r in width_at:
        depth = check_float("width_at depth", depth, 0.0, low_open=True)
        px = Scaling(resolution=float(check_float("width_at resolution", r, 0.0, low_open=True))).pixels(image_size)
        for w in values["width"]:
            trials.append(_trial_for(f"width@d{_fmt(depth)},r{_fmt(r)}", float(w), depth, px))
    unique = list({(t.dim, t.name): t for t in trials}.values())
    if max_macs is not None:
        cost = {t.name: trial_macs(model, t, num_classes) for t in unique}
        kept = [t for t in unique if cost[t.name] <= max_macs]
        if not kept:
            cheapest = min(cost.values())
            raise ValueError(f"no sweep point is under --max-macs {max_macs:.3g}; the cheapest costs "
                             f"{cheapest:.3g} MACs at its resolution")
        unique = kept
    return unique


# ----------------------------------------------------------------------------- one trial

def _latency_ms(model: torch.nn.Module, resolution: int, repeats: int = 10) -> float:
    """Median wall time of one (1, 3, resolution, resolution) forward pass in eval mode, in
    milliseconds, after 2 warm-up passes, on the threads this process has."""
    model.eval()
    x = torch.randn(1, 3, resolution, resolution)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            model(x)
            if i >= 2:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def baseline_macs(model: str, image_size: int, num_classes: int = 1000) -> int:
    """MACs per image of the unscaled ``model`` at ``image_size`` pixels (:func:`trial_macs`)."""
    return trial_macs(model, Trial("baseline", "baseline", 1.0, 1.0, image_size), num_classes)


def _row(trial: Trial, settings: TrialSettings, num_classes: int) -> dict:
    macs = trial_macs(settings.model, trial, num_classes)
    return {"trial": trial.name, "dim": trial.dim, "alpha": trial.alpha, "beta": trial.beta, "gamma": trial.gamma,
            "flops_factor": (round(flops_factor(trial.alpha, trial.beta, trial.gamma), 6)
                             if trial.alpha is not None else None),
            "phi": trial.phi if trial.phi is not None else (1.0 if trial.dim == "search" else None),
            "depth": trial.depth, "width": trial.width, "resolution": trial.resolution, "macs": macs,
            "macs_factor": round(macs / baseline_macs(settings.model, settings.image_size, num_classes), 4)}


_MEASURED = ("params", "top1", "top5", "latency_ms", "seconds", "status")


def _read_result(path: Path) -> dict:
    """A finished trial's ``result.json`` (:data:`_MEASURED` keys).

    Raises:
        ValueError: not JSON, or not an object with those keys; the message names the file.
    """
    try:
        r = json.loads(path.read_text())
    except ValueError as e:
        r, why = None, f"not JSON ({e})"
    else:
        why = "not a trial result (an object with " + ", ".join(_MEASURED) + ")"
    if not isinstance(r, dict) or any(k not in r for k in _MEASURED):
        raise ValueError(f"{path} is {why}: delete its trial folder ({path.parent}) to train that trial again")
    return {k: r[k] for k in _MEASURED}


def run_trial(trial: Trial, settings: TrialSettings, out: Union[str, Path], threads: Optional[int] = None) -> dict:
    """Train one trial (or resume it, or read its finished result) and measure it.

    The network is ``settings.model`` scaled by ``trial.scaling``, initialised with
    ``settings.seed``, trained with :func:`effnet.train.fit` into ``out/trials/<name>/``.

    Returns:
        A :data:`TRIAL_COLUMNS` dict (``OUT/trials/<name>/result.json`` keeps the measured
        part, shared by every row naming the same network): ``top1``/``top5`` are the last epoch's val accuracy
        (percent; the last, not the best, so that no trial is picked on val noise), ``params``
        and ``macs`` (per image at the trial's resolution), ``latency_ms`` (batch 1, eval mode,
        median of 10, on ``threads`` threads), ``seconds`` (this call's wall time) and
        ``status`` (``done``, or ``failed: <error>``: a failed trial is reported, not raised,
        and is tried again by the next run).
    """
    run = Path(out) / "trials" / trial.name
    result_file = run / RESULT_FILE
    classes = check_data(settings.data)
    row = _row(trial, settings, len(classes))
    if result_file.is_file():
        return {**row, **_read_result(result_file)}
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        torch.manual_seed(settings.seed)
        net = create_model(settings.model, num_classes=len(classes), scaling=trial.scaling)
        resume = (run / "last.pt").is_file()
        r = fit(net, settings.data, epochs=settings.epochs, batch_size=settings.batch_size, recipe=settings.recipe,
                out=run, resume=resume, overwrite=not resume, image_size=trial.resolution, lr=settings.lr,
                workers=settings.workers, seed=settings.seed, progress=False)
        last = r.history[-1]
        row.update(params=sum(p.numel() for p in r.model.parameters()), top1=round(last["val_top1"], 4),
                   top5=round(last["val_top5"], 4), latency_ms=round(_latency_ms(r.model, trial.resolution), 3),
                   status="done")
    except Exception as e:     # diverged (FloatingPointError), impossible, out of memory...: report, go on
        row.update(params=None, top1=None, top5=None, latency_ms=None,
                   status=f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        torch.set_num_threads(previous)
    row["seconds"] = round(time.perf_counter() - start, 2)
    if row["status"] == "done":
        measured = {k: row[k] for k in _MEASURED}
        atomic_write(result_file, json.dumps(measured, indent=1).encode())
    return row


def _ray_trainable(config: dict) -> None:
    """Ray Tune function trainable: one :func:`run_trial`, its row reported as the metrics."""
    from ray import tune

    row = run_trial(Trial(**config["trial"]), TrialSettings(**config["settings"]), config["out"], config["threads"])
    tune.report({k: v for k, v in row.items() if v is not None})


def _run_ray(trials: list[Trial], settings: TrialSettings, out: Path, address: Optional[str], cpus_per_trial: int,
             gpus_per_trial: float, time_budget_s: Optional[float]) -> dict:
    """Run ``trials`` on Ray Tune; ``{trial name: "failed: ..."}`` for those of this run that failed."""
    from ray import tune

    with _ray.session(address):
        trainable = tune.with_resources(_ray_trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        space = {"trial": tune.grid_search([dataclasses.asdict(t) for t in trials]),
                 "settings": dataclasses.asdict(settings), "out": str(out), "threads": cpus_per_trial}
        tuner = tune.Tuner(trainable, param_space=space,
                           # reuse_actors: one worker process per slot for the whole
                           # study (torch and effnet imported once per slot, not per trial)
                           tune_config=tune.TuneConfig(reuse_actors=True,
                                                       time_budget_s=time_budget_s),
                           run_config=tune.RunConfig(storage_path=str(out / "ray"), name="trials", verbose=0))
        failures = {}
        for result in tuner.fit():
            name = Trial(**result.config["trial"]).name
            status = str((result.metrics or {}).get("status", ""))
            if status.startswith("failed"):
                failures[name] = status
            elif result.error is not None and not status:
                first = (str(result.error).strip().splitlines() or [""])[-1]
                failures[name] = f"failed: {type(result.error).__name__}: {first}"
        return failures


def ray_available() -> bool:
    """Whether Ray Tune is installed (``pip install 'effnet[search]'``)."""
    return _ray.available("ray.tune")


def run_trials(trials: Sequence[Trial], settings: TrialSettings, out: Union[str, Path], runner: str = "auto",
               address: Optional[str] = None, cpus_per_trial: Optional[int] = None, gpus_per_trial: float = 0,
               trials_per_node: Optional[int] = None, time_budget_s: Optional[float] = None,
               log: Callable[[str], None] = print, before: Optional[Callable[[], None]] = None,
               partial: Optional[Callable[[list[dict]], None]] = None) -> tuple[list[dict], int]:
    """Run every trial not yet finished in ``out`` and return all their rows, in order.

    Args:
        runner: ``ray`` (Ray Tune: a local instance, or the cluster at ``address``; every
            trial an independent task with ``cpus_per_trial`` CPUs and ``gpus_per_trial``
            GPUs; ``out`` must be on a file system all nodes share), ``local`` (one after
            another in this process, on ``cpus_per_trial`` threads, default all), or
            ``auto`` (``ray`` when installed).
        trials_per_node: with Ray and no ``cpus_per_trial``, pack this many trials on a
            machine of this one's core count.
        time_budget_s: start no trial after this many seconds; in process the running trial
            finishes, on Ray (``TuneConfig.time_budget_s``) running trials are stopped too and
            resume from their ``last.pt`` next time. Refused up front when one epoch of the
            largest pending trial is estimated (:func:`epoch_seconds`) to take longer.
        before: called once every check has passed, before any training (the study
            records its settings there, so that a refused run leaves nothing behind).
        partial: called with every trial's row so far after each in-process trial (the study
            rewrites ``trials.csv``, so a killed search still has its table).

    Returns:
        ``(rows, trained)``: one :data:`TRIAL_COLUMNS` dict per trial (a trial not started
        within the budget has status ``not run``; one that failed in this run ``failed: ...``)
        and how many networks finished training now.

    Raises:
        ValueError: an unknown runner, ``ray`` asked for but not installed, Ray's packing
            (``address``, ``gpus_per_trial``, ``trials_per_node``) with the local runner, more
            CPUs or GPUs per trial than a local Ray instance has, a budget too small for one epoch.
    """
    out = Path(out).resolve()          # Ray runs each trial in a folder of its own: paths must be absolute
    runner = _ray.resolve_runner(runner, "ray.tune", "Ray Tune", "search")
    ray_only = [f"--{k} {v}" for k, v in (("address", address), ("gpus-per-trial", gpus_per_trial or None),
                                          ("trials-per-node", trials_per_node)) if v is not None]
    if runner == "local" and ray_only:
        raise ValueError(f"{', '.join(ray_only)} set(s) how Ray packs trials, but the runner is 'local' (one trial "
                         f"after another in this process): use --runner ray (pip install 'effnet[search]'), or drop it")
    cores = os.cpu_count() or 1
    if cpus_per_trial is None:
        cpus_per_trial = max(1, cores // trials_per_node) if (runner == "ray" and trials_per_node) else (
            1 if runner == "ray" else cores)
    cpus_per_trial = check_int("cpus_per_trial", cpus_per_trial, 1)
    gpus_per_trial = check_float("gpus_per_trial", gpus_per_trial, 0.0)
    if runner == "ray" and not address:         # a local instance has this machine's resources: never wait for more
        gpus = torch.cuda.device_count()
        if cpus_per_trial > cores or gpus_per_trial > gpus:
            raise ValueError(f"a trial asks for {cpus_per_trial} CPU(s) and {gpus_per_trial:g} GPU(s); this machine "
                             f"has {cores} and {gpus}, so Ray would wait for ever: lower --cpus-per-trial / "
                             f"--gpus-per-trial, or join a cluster that has them (--address)")
    if time_budget_s is not None:
        time_budget_s = check_float("time_budget_s", time_budget_s, 0.0, low_open=True)
        parallel = max(1, (os.cpu_count() or 1) // cpus_per_trial) if runner == "ray" and not address else 1
        _check_budget(trials, settings, out, time_budget_s, cpus_per_trial, parallel, log)
    pending = list({t.name: t for t in trials if not (out / "trials" / t.name / RESULT_FILE).is_file()}.values())
    networks = len({t.name for t in trials})
    log(f"{networks - len(pending)} of {networks} networks already trained; training {len(pending)} "
        f"({runner}, {cpus_per_trial} CPU(s) per trial)")
    num_classes = len(check_data(settings.data))
    if before is not None:
        before()
    failures = {}
    if pending and runner == "ray":
        # Longest first (LPT): a trial costs about its MACs per image (same images, epochs
        # and batch for all), and starting the big ones first leaves the short ones to
        # fill the slots at the end, instead of one long trial running alone on one core.
        pending.sort(key=lambda t: trial_macs(settings.model, t, num_classes), reverse=True)
        failures = _run_ray(pending, settings, out, address, cpus_per_trial, gpus_per_trial, time_budget_s)
    fresh = {}
    start = time.perf_counter()
    for t in pending if runner == "local" else ():
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
        fresh[t.name] = row = run_trial(t, settings, out, cpus_per_trial)
        log(f"  {t.name}: top-1 {row['top1']}, {row['status']}, {row['seconds']:.0f} s")
        if partial is not None:
            partial(_collect(trials, settings, out, num_classes, fresh, failures))
    rows = _collect(trials, settings, out, num_classes, fresh, failures)
    trained = sum((out / "trials" / t.name / RESULT_FILE).is_file() for t in pending)
    return rows, trained


def _collect(trials: Sequence[Trial], settings: TrialSettings, out: Path, num_classes: int, fresh: dict,
             failures: dict) -> list[dict]:
    """Every trial's row: its result file, this run's row, this run's failure, or ``not run``."""
    rows = []
    for t in trials:
        row, done = _row(t, settings, num_classes), out / "trials" / t.name / RESULT_FILE
        if done.is_file():
            row.update(_read_result(done))
        elif t.name in fresh:
            row.update({k: fresh[t.name][k] for k in _MEASURED})
        else:
            row["status"] = failures.get(t.name, "not run")
        rows.append(row)
    return rows


def _train_images(data: Path) -> int:
    from .data import list_images
    from .train.loop import training_root

    return len(list_images(training_root(data)))


def epoch_seconds(trial: Trial, settings: TrialSettings, threads: Optional[int] = None) -> float:
    """Estimated seconds of one training epoch of ``trial`` on this machine: two timed SGD
    steps (forward, backward, update) of a random (batch, 3, r, r) batch after one warm-up
    step, times the steps of an epoch. Image decoding and validation are not counted, so the
    estimate is a lower bound."""
    classes = check_data(settings.data)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = create_model(settings.model, num_classes=len(classes), scaling=trial.scaling).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        x = torch.randn(settings.batch_size, 3, trial.resolution, trial.resolution)
        y = torch.randint(len(classes), (settings.batch_size,))
        times = []
        for _ in range(3):
            t = time.perf_counter()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(previous)
    steps = math.ceil(_train_images(Path(settings.data)) / settings.batch_size)
    return statistics.mean(times[1:]) * steps


def _check_budget(trials: Sequence[Trial], settings: TrialSettings, out: Path, budget_s: float, threads: int,
                  parallel: int, log: Callable[[str], None]) -> None:
    """Refuse a time budget that cannot train one epoch of the largest pending trial; say
    when it will not train them all.

    Raises:
        ValueError: one epoch of the largest trial (by MACs) is estimated over ``budget_s``.
    """
    pending = [t for t in {t.name: t for t in trials}.values() if not (out / "trials" / t.name / RESULT_FILE).is_file()]
    if not pending:
        return
    num_classes = len(check_data(settings.data))
    cost = {t.name: trial_macs(settings.model, t, num_classes) for t in pending}
    largest = max(pending, key=lambda t: cost[t.name])
    epoch = epoch_seconds(largest, settings, threads)
    if epoch > budget_s:
        raise ValueError(f"the time budget of {budget_s:.3g} s cannot finish one epoch of the largest trial "
                         f"{largest.name} ({cost[largest.name] / 1e6:.0f}M MACs): about {epoch:.3g} s per epoch "
                         f"here; raise the budget, or lower --image-size or the grid/sweep's largest point")
    total = sum(settings.epochs * epoch * cost[t.name] / cost[largest.name] for t in pending) / max(1, parallel)
    if total > budget_s:
        log(f"warning: the {len(pending)} trials need about {total / 60:.0f} min of training at "
            f"{settings.epochs} epoch(s) (estimated from {largest.name}), over the budget of {budget_s / 60:.0f} min; "
            f"trials not started in time are reported as 'not run'")


# ----------------------------------------------------------------------------- a study

def _check_study(out: Path, study: dict) -> Callable[[], None]:
    """Refuse when ``out`` holds a study asked differently; else a function that writes
    ``out/study.json`` (called by :func:`run_trials` once its checks pass, so a refused
    run leaves no study behind).

    Raises:
        ValueError: ``out`` already holds a search or sweep whose settings differ from
            ``study`` (the message names every differing setting with both values), or a
            ``study.json`` that is not a JSON object.
    """
    path = out / STUDY_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not readable JSON ({e}); use another --out, or delete the folder") from e
        if not isinstance(old, dict):
            raise ValueError(f"{path} is not an effnet study (a JSON object of settings); use another --out, or "
                             f"delete the folder")
        diff = [f"{k}: {old.get(k)!r} there, {study.get(k)!r} now" for k in sorted(set(old) | set(study))
                if old.get(k) != study.get(k)]
        if diff:
            raise ValueError(f"{out} holds another {old.get('kind', 'study')}'s results, asked differently ("
                             + "; ".join(diff) + "); use another --out, or the same settings to continue it")
        return lambda: None

    def write() -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(study, indent=1).encode())
    return write


def objective_scores(rows: Sequence[dict], objective: str = "top1", w: float = -0.07) -> list[Optional[float]]:
    """Each finished row's score (None for the others).

    ``top1``: val top-1 itself. ``macs`` / ``latency``: the paper's multi-objective reward
    ``ACC(m) * (FLOPS(m) / T) ** w`` (Section 4, from MnasNet; ``w = -0.07``) with FLOPS
    replaced by the row's MACs or latency (ms) and ``T`` the median of that quantity over the
    finished rows, so that a trial at the median is scored by its accuracy alone.

    Raises:
        ValueError: an unknown objective.
    """
    if objective not in ("top1", "macs", "latency"):
        raise ValueError(f"objective must be top1, macs or latency, got {objective!r}")
    done = [r for r in rows if r.get("status") == "done"]
    key = {"macs": "macs", "latency": "latency_ms"}.get(objective)
    target = statistics.median(float(r[key]) for r in done) if key and done else None
    return [None if r.get("status") != "done" else
            float(r["top1"]) * ((float(r[key]) / target) ** w if key else 1.0) for r in rows]


def write_trials_csv(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """``rows`` as CSV with :data:`TRIAL_COLUMNS` (plus ``score`` when present), atomically."""
    buf = io.StringIO()
    columns = TRIAL_COLUMNS + (["score"] if any("score" in r for r in rows) else [])
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return atomic_write(path, buf.getvalue().encode())


def _settings(model: str, data, epochs: int, image_size: Optional[int], batch_size: int, recipe: str, seed: int,
              lr: Optional[float], workers: int) -> TrialSettings:
    """Validated :class:`TrialSettings` (the data folder checked now, before any trial).

    Raises:
        KeyError: an unknown model or recipe. ValueError: bad numbers, or data that cannot
        train a classifier (one class, an empty class folder...). FileNotFoundError: no data.
    """
    cfg = get_config(model)
    get_recipe(recipe)
    stride = cfg.network.stride
    if image_size is not None and check_int("image_size", image_size, 1) < stride:
        raise ValueError(f"--image-size {image_size} px is below {model}'s total stride of {stride} px (its last "
                         f"stage would see less than one pixel): use at least {stride}, e.g. 32-128 for a small proxy")
    data = Path(data).resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}")
    check_data(data)
    return TrialSettings(model=model, data=str(data), epochs=check_int("epochs", epochs, 1),
                         image_size=check_int("image_size", image_size or cfg.input_size, 8),
                         batch_size=check_int("batch_size", batch_size, 1), recipe=recipe,
                         seed=check_int("seed", seed, 0), lr=None if lr is None else check_float("lr", lr, 0.0,
                                                                                                   low_open=True),
                         workers=check_int("workers", workers, 0))


def _partial_csv(out: Path, objective: str, ranked: bool) -> Callable[[list[dict]], None]:
    """Rewrite ``out/trials.csv`` with the rows so far (ranked as at the end)."""
    return lambda rows: _finish([dict(r) for r in rows], 0, out, ranked, objective)


def _finish(rows: list, trained: int, out: Path, ranked: bool, objective: str = "top1") -> StudyResult:
    if ranked:
        for r, s in zip(rows, objective_scores(rows, objective)):
            r["score"] = None if s is None else round(s, 4)
        rows = sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0.0)))
    path = write_trials_csv(rows, out / "trials.csv")
    done = [r for r in rows if r.get("status") == "done"]
    winner = (rows[0] if ranked else max(done, key=lambda r: float(r["top1"]))) if done else None
    return StudyResult(rows, winner, path, trained)


def search(model: str, data, out, epochs: int = 10, image_size: Optional[int] = None, batch_size: int = 32,
           alpha=GRID_ALPHA, beta=GRID_BETA, gamma=GRID_GAMMA, target: float = 2.0, tolerance: float = 0.1,
           max_trials: Optional[int] = None, objective: str = "top1", recipe: str = "paper", seed: int = 0,
           lr: Optional[float] = None, workers: int = 0, **runner) -> StudyResult:
    """The grid search of paper Section 3.3, step 1, trained on a proxy task.

    Every (alpha, beta, gamma) of the grid with ``alpha * beta**2 * gamma**2`` within
    ``tolerance`` of ``target`` (:func:`effnet.scaling.candidate_grid`) becomes a trial: the
    baseline ``model`` at ``phi = 1`` (depth x alpha, width x beta, resolution ``image_size``
    x gamma), trained from scratch for ``epochs`` on ``data``. Rows are ranked by
    :func:`objective_scores`; ``out/trials.csv`` holds them.

    Args:
        image_size: the baseline's resolution in pixels (default the model's own; small
            proxies use 64-128).
        alpha, beta, gamma: grid ranges as ``(start, stop, step)``, stop included.
        runner: :func:`run_trials` keywords (``runner``, ``address``, ``cpus_per_trial``,
            ``gpus_per_trial``, ``trials_per_node``, ``time_budget_s``, ``log``).

    Raises:
        ValueError: no candidate in the tolerance (the closest product is named), data with
            fewer than 2 classes, an ``out`` holding a study with other settings (named), bad
            numbers. KeyError: an unknown model or recipe.
    """
    settings = _settings(model, data, epochs, image_size, batch_size, recipe, seed, lr, workers)
    trials = search_trials(settings.image_size, alpha, beta, gamma, target, tolerance, max_trials)
    objective_scores([], objective)
    num_classes = len(check_data(settings.data))
    base = baseline_macs(model, settings.image_size, num_classes)
    real = [trial_macs(model, t, num_classes) / base for t in trials]
    if min(real) < target - tolerance or max(real) > target + tolerance:
        runner.get("log", print)(
            f"note: Eq. 3's alpha * beta^2 * gamma^2 = {target:g} +/- {tolerance:g} is nominal; in whole repeats "
            f"(ceil, the official round_repeats), channels and pixels in multiples of 8 at {settings.image_size} px, "
            f"the {len(trials)} candidates build {len({t.name for t in trials})} networks costing {min(real):.2f}-"
            f"{max(real):.2f}x the baseline's MACs (trials.csv: macs_factor)")
    out = Path(out)
    record = _check_study(out, {"kind": "search", **dataclasses.asdict(settings),
                                "grid": {"alpha": list(alpha), "beta": list(beta), "gamma": list(gamma)},
                                "target": target, "tolerance": tolerance})
    rows, trained = run_trials(trials, settings, out, before=record, partial=_partial_csv(out, objective, True),
                               **runner)
    return _finish(rows, trained, out, ranked=True, objective=objective)


def sweep(model: str, data, out, dims: Sequence[str] = ("width", "depth", "resolution", "compound"),
          values: Optional[dict] = None, width_at: Sequence[tuple[float, float]] = (),
          max_macs: Optional[float] = None, epochs: int = 10, image_size: Optional[int] = None, batch_size: int = 32,
          recipe: str = "paper", seed: int = 0, lr: Optional[float] = None, workers: int = 0,
          **runner) -> StudyResult:
    """Scale the baseline one dimension at a time (paper Fig. 3), along ``phi`` (Fig. 8) and
    in width at other depths and resolutions (Fig. 4); each point trained as in
    :func:`search`. See :func:`sweep_trials` for ``dims``, ``values``, ``width_at`` and
    ``max_macs``; rows keep the sweep's order, ``winner`` is the best top-1.

    Raises:
        ValueError / KeyError: as :func:`search` and :func:`sweep_trials`.
    """
    settings = _settings(model, data, epochs, image_size, batch_size, recipe, seed, lr, workers)
    trials = sweep_trials(model, settings.image_size, dims, values, width_at, max_macs,
                          len(check_data(settings.data)))
    out = Path(out)
    record = _check_study(out, {"kind": "sweep", **dataclasses.asdict(settings), "dims": list(dims),
                                "values": {k: list(v) for k, v in sorted((values or {}).items())},
                                "width_at": [list(p) for p in width_at]})
    rows, trained = run_trials(trials, settings, out, before=record, partial=_partial_csv(out, "top1", False),
                               **runner)
    return _finish(rows, trained, out, ranked=False)
