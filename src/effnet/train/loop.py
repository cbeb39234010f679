"""The training loop: one CPU, one GPU, or many processes/machines through torchrun.

``fit`` trains a registered model on an image folder with a :class:`Recipe`, validating
every epoch, and writes into its run folder:

- ``last.pt``: everything needed to continue exactly (model, EMA, optimizer, LR schedule,
  grad scaler, every rank's RNG states, epoch, history), written atomically each epoch;
- ``best/``: the best weights by val top-1 in effnet's own format (``effnet predict --weights``);
- ``metrics.csv``, TensorBoard events under ``tb/``, and ``curves.png`` at the end.

A run killed at any point and restarted with ``resume=True`` ends with the same weights as
an uninterrupted run (bitwise on CPU): data order is seeded per epoch, and the global RNG
(augmentation, dropout, drop path) is restored from the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import itertools
import math
import os
import pickle
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from .._io import WriteError, atomic_write, clean_stale_temporaries, file_in_path
from .._validate import check_float, check_int
from ..data import ImageDataset, collate_skip, eval_transform
from ..evaluation import evaluate
from ..registry import PreprocessConfig, create_model
from ..weights.load import non_finite_keys
from .augment import TrainAugment, train_decode
from .distill import (DistillError, Distillation, IndexedDataset, LogitCache, PseudoLabels, Teacher, Unlabeled,
                      build_teacher, dataset_samples, kd_term, load_teacher, soft_cross_entropy, teacher_fingerprint)
from .progressive import MixBatch, Progressive, StageValues, progressive_preset
from .optim import build_optimizer, lr_factor
from .recipe import Recipe, get_recipe

__all__ = ["fit", "FitResult", "Distillation", "Unlabeled", "make_datasets", "tf_ema", "CheckpointError", "NonFiniteLossError", "load_checkpoint",
           "save_checkpoint", "RUN_OUTPUTS"]

CHECKPOINT = "last.pt"
METRICS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "images_per_s", "seconds", "skipped",
           "image_size", "magnitude", "mixup", "cutmix", "dropout"]


@dataclass
class FitResult:
    """What a run produced: ``best_top1`` (val, %), per-epoch ``history``, the ``run_dir``,
    the trained ``model`` (the EMA weights when the recipe keeps an EMA) and ``skipped``
    (unreadable training images, counted over the whole run)."""

    best_top1: float
    history: List[Dict[str, float]]
    run_dir: Optional[Path]
    model: nn.Module
    skipped: int = 0


def tf_ema(decay: float):
    """``multi_avg_fn`` for AveragedModel: TF's ExponentialMovingAverage(decay, num_updates).

    The official code's EMA uses ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates,
    so early averages are not dominated by the random initialisation.
    """
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - d)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():      # BatchNorm's num_batches_tracked: copied
                e.copy_(p)
    return update


def _class_folders(root: Path) -> Dict[str, int]:
    """Class folder name -> number of image files under it (any depth)."""
    from ..data import IMAGE_EXTENSIONS

    return {d.name: sum(1 for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            for d in sorted(root.iterdir()) if d.is_dir()}


def _check_classes(data: Path) -> None:
    """Refuse data that cannot train a classifier: fewer than 2 classes, a class folder with
    no images, or ``train/`` and ``val/`` with different class folders (all listed)."""
    split = (data / "train").is_dir() and (data / "val").is_dir()
    train = _class_folders(data / "train" if split else data)
    where = data / "train" if split else data
    empty = [c for c, n in train.items() if n == 0]
    if empty:
        raise ValueError(f"class folder(s) with no images in {where}: {empty}; add images or remove the folder(s)")
    if len(train) < 2:
        raise ValueError(f"{where} has {len(train)} class folder(s) {list(train)}; a classifier needs at least "
                         f"2 classes (expected {where}/<class>/<image> for 2 or more classes)")
    if split:
        val = _class_folders(data / "val")
        only_val = sorted(set(val) - set(train))
        only_train = sorted(set(train) - set(val))
        if only_val or only_train:
            raise ValueError(f"train/ and val/ of {data} have different class folders: only in val/ {only_val}, "
                             f"only in train/ {only_train}; give both the same classes")


def check_data(data: Union[str, Path]) -> List[str]:
    """The class names of an image folder that can train a classifier (``data/train`` +
    ``data/val``, or ``data/<class>/``), checked before any training starts.

    Raises:
        FileNotFoundError: ``data`` is not a folder.
        ValueError: fewer than 2 classes, an empty class folder, or train/val class folders
            that differ (all listed).
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}; expected {data}/train/<class>/<image> and "
                                f"{data}/val/<class>/<image>, or {data}/<class>/<image>")
    _check_classes(data)
    return list(_class_folders(training_root(data)))


def training_root(data: Union[str, Path]) -> Path:
    """The folder a run trains from: ``data/train`` when ``data`` has ``train/`` and ``val/``,
    else ``data`` itself (split for validation by ``fit``)."""
    data = Path(data)
    return data / "train" if (data / "train").is_dir() and (data / "val").is_dir() else data


def make_datasets(data: Union[str, Path], size: int, preprocess: PreprocessConfig, val_split: float = 0.2,
                  seed: int = 0, val_preprocess: Optional[PreprocessConfig] = None):
    """Train and val datasets from ``data/train`` + ``data/val``, or one folder split with ``seed``.

    Returns:
        ``(train, val, classes)``: train items are uint8 squares of about ``size / 0.875``
        pixels for :class:`TrainAugment`; val items go through the eval transform of
        ``val_preprocess`` (default: ``preprocess`` at ``size``).

    Raises:
        FileNotFoundError: ``data`` is missing or holds no images.
        ValueError: fewer than 2 classes, a class folder without images, train/ and val/
            with different class folders, or a split that leaves a side empty.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}; expected {data}/train/<class>/<image> and "
                                f"{data}/val/<class>/<image>, or {data}/<class>/<image>")
    _check_classes(data)
    val_pre = val_preprocess or dataclasses.replace(preprocess, input_size=size)
    if (data / "train").is_dir() and (data / "val").is_dir():
        train = ImageDataset.from_folder(data / "train", train_decode(size, preprocess.interpolation))
        val = ImageDataset.from_folder(data / "val", eval_transform(val_pre), classes=train.classes)
        return train, val, train.classes
    full = ImageDataset.from_folder(data, train_decode(size, preprocess.interpolation))
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(full) * val_split)))
    if n_val >= len(full):
        raise ValueError(f"{data} has {len(full)} images: too few to split {val_split:g} of them off for "
                         f"validation and keep some for training; add images or give train/ and val/ folders")
    train = Subset(full, order[n_val:])
    val_full = ImageDataset(full.samples, eval_transform(val_pre), full.classes)
    return train, Subset(val_full, order[:n_val]), full.classes


# ---- checkpoints: plain types and tensors only, loaded with weights_only=True --------------------

class CheckpointError(ValueError):
    """A run folder's ``last.pt`` cannot be used to resume (truncated, not a checkpoint, another run)."""


def _rng_state() -> Dict[str, Any]:
    """Every RNG this process draws from, as tensors and plain types (no numpy objects),
    so that the checkpoint loads with ``torch.load(weights_only=True)``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = dict(torch=torch.get_rng_state(),
                 numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss),
                            gauss=float(gauss)),
                 python=dict(version=int(version), state=torch.tensor(mt, dtype=torch.int64),
                             gauss_next=gauss_next))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "history", "best_top1")


def save_checkpoint(path: Path, checkpoint: Dict[str, Any]) -> None:
    """Write a checkpoint atomically: serialised to memory first, then written and renamed,
    so that a full disk raises ``OSError`` ("no space left on device while writing PATH")
    and the previous ``last.pt`` is kept."""
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write(path, buf.getbuffer())


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a run's ``last.pt`` safely: ``torch.load(weights_only=True)``, so no pickled code
    runs, then check it has every entry a resume needs.

    Raises:
        CheckpointError: truncated, random or hostile content, or entries missing; the
            message names the file and where the run's best weights are.
    """
    best = path.parent / "best"
    hint = (f"the best weights so far are in {best}; " if best.is_dir() else "") + \
        f"delete {path} or pass --overwrite to start the run again"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False: never for a file from outside.
        raise CheckpointError(f"cannot resume from {path}: it holds objects other than tensors and plain "
                              f"values (a hostile or foreign file; nothing in it was run); {hint}") from None
    except Exception as e:        # RuntimeError (zip), EOFError, ValueError...: truncated or not a checkpoint
        raise CheckpointError(f"cannot resume from {path}: it is truncated, corrupt or not a torch checkpoint "
                              f"({type(e).__name__}); {hint}") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not an effnet training checkpoint (missing {missing}); "
                              f"{hint}")
    return ckpt


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before anything non-finite is written."""


def _write_metrics(history: List[Dict[str, float]], path: Path) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=METRICS)
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k) for k in METRICS})
    atomic_write(path, text.getvalue().encode())


def _plot(history: List[Dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [h["train_top1"] for h in history], marker="o", label="train")
    ax2.plot(epochs, [h["val_top1"] for h in history], marker="o", label="val")
    ax2.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getbuffer())


def _set_phase(model: nn.Module, head_only: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(not head_only or name.startswith("classifier."))


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# ---- set-up -------------------------------------------------------------------------------------

# What a run writes into its folder; a folder holding any of these is a run, never replaced silently.
RUN_OUTPUTS = (CHECKPOINT, "best", "metrics.csv", "curves.png", "tb")


@dataclass
class _Env:
    """Where a run executes: process rank and count, device, mixed precision."""

    distributed: bool
    rank: int
    world: int
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype

    @property
    def main(self) -> bool:
        return self.rank == 0


def _make_env(device: Optional[str], amp: Optional[bool]) -> _Env:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if device is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    amp_dtype = torch.bfloat16
    if use_amp and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    return _Env(distributed, rank, world, dev, use_amp, amp_dtype)


def _check_run_dir(run_dir: Optional[Path], resume: bool, overwrite: bool) -> Optional[Path]:
    """Check the run folder against ``resume``/``overwrite`` (changing nothing) and return the
    checkpoint path (None without a folder).

    Raises:
        ValueError: ``resume`` without a run folder, or with ``overwrite``.
        FileExistsError: the folder already holds a run and neither ``resume`` nor ``overwrite``
            was given (nothing in it is touched).
        FileNotFoundError: ``resume`` and the folder has no ``last.pt``.
    """
    if run_dir is None:
        if resume:
            raise ValueError("resume needs the run folder that holds last.pt: give out=... (--out)")
        return None
    if resume and overwrite:
        raise ValueError("give resume (continue the run) or overwrite (start it again), not both")
    blocker = file_in_path(run_dir)
    if blocker is not None:
        raise WriteError(errno.ENOTDIR, f"cannot use {run_dir} as the run folder: {blocker} is a file, "
                                        f"not a folder; choose another --out", str(run_dir))
    existing = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    ckpt = run_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint {ckpt}; run without --resume to start")
    if existing and not resume and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(existing)}); pass --resume to continue "
                              f"it, --overwrite to replace it, or choose another --out")
    return ckpt


def _open_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder, delete the old run on ``overwrite``, and remove the temporary
    files a killed write left (rank 0, once the set-up has succeeded)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for folder in (run_dir, run_dir / "best"):
        clean_stale_temporaries(folder)


def _validate_fit_args(epochs: Any, batch_size: Any, image_size: Any, lr: Any, workers: Any, accumulation_steps: Any,
                       val_split: Any, seed: Any) -> None:
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if image_size is not None:
        check_int("image_size", image_size, 1)
    if lr is not None:
        check_float("lr", lr, 0.0, low_open=True)
    check_int("workers", workers, 0)
    check_int("accumulation_steps", accumulation_steps, 1)
    check_float("val_split", val_split, 0.0, 1.0, low_open=True, high_open=True)
    check_int("seed", seed, 0)


@dataclass
class _State:
    """Everything that changes while a run trains (and goes into ``last.pt``)."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: Optional[AveragedModel]
    criterion: nn.Module
    augment: TrainAugment
    train_set: Any
    val_set: Any
    classes: List[str]
    memory_format: torch.memory_format
    drop_last: bool
    preprocess: Optional[PreprocessConfig] = None
    progressive: Optional[Progressive] = None
    mix: Optional[MixBatch] = None
    values: Optional[StageValues] = None
    train_labels: Optional[torch.Tensor] = None      # label of each training item, by index
    distill: Optional[Distillation] = None
    teacher: Optional[Teacher] = None                # run online on the student's batch...
    cached_logits: Optional[torch.Tensor] = None     # ...or read per training item (N, K)
    unlabeled_set: Any = None                        # Noisy Student: pseudo-labeled photos
    unlabeled_probs: Optional[torch.Tensor] = None   # (M, K) soft labels
    unlabeled_batch: int = 0
    run_inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)   # what a resume must match
    start_epoch: int = 0
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    best_top1: float = -1.0
    skipped: int = 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net


def _scaled_size(size: int, scale: float) -> int:
    """``size`` (pixels) itself for ``scale`` 1, else ``size * scale`` rounded to a multiple of 8."""
    return size if scale == 1 else max(8, int(round(size * scale / 8)) * 8)


def _resolve_progressive(progressive: Union[None, str, Progressive], name: Optional[str],
                         size: int) -> Optional[Progressive]:
    """The run's schedule: a :class:`Progressive` as given, or a variant name (``paper``,
    ``automl``) made into the model's Table 6 row ending at the training ``size``."""
    if progressive is None or isinstance(progressive, Progressive):
        return progressive
    if progressive not in ("paper", "automl"):
        raise ValueError(f"progressive must be 'paper', 'automl', an effnet.train.Progressive or None, "
                         f"got {progressive!r}")
    return progressive_preset(name, progressive, max_size=size)


def _build(model: Union[str, nn.Module], data: Union[str, Path], recipe: Recipe, env: _Env, batch_size: int,
           pretrained: Union[bool, str], weights: Optional[str], image_size: Optional[int], lr: Optional[float],
           channels_last: bool, grad_checkpointing: bool, accumulation_steps: int, sync_bn: bool,
           val_split: float, seed: int, progressive: Union[None, str, Progressive] = None) -> _State:
    """Model, data, optimizer, schedule, scaler and EMA of a new run."""
    if isinstance(model, str):
        overrides = dict(drop_path_rate=recipe.drop_path_rate)
        if recipe.dropout is not None:
            overrides["drop_rate"] = recipe.dropout
        # The weights' own classifier size for now; replaced below if the data has other classes.
        net = create_model(model, pretrained=pretrained, weights=weights, num_classes=None, **overrides)
    else:
        net = model
    preprocess = net.config.preprocess
    # EfficientNetV2 trains below its eval size (ModelConfig.train_size: 192 for V2-B0, 224
    # eval); without an image_size it trains at that size and validates at the eval size.
    train_size = getattr(net.config, "train_size", None)
    size = image_size or _scaled_size(train_size or preprocess.input_size, recipe.train_size_scale)
    native_val = image_size is None and train_size and recipe.train_size_scale == recipe.eval_size_scale == 1
    # The run's weights are validated (and later predict) with this: the training resolution
    # times the recipe's eval_size_scale, and the recipe's crop or the weights' own.
    val_pre = dataclasses.replace(preprocess, input_size=preprocess.input_size if native_val
                                  else _scaled_size(size, recipe.eval_size_scale),
                                  crop_pct=recipe.eval_crop_pct or preprocess.crop_pct)
    schedule = _resolve_progressive(progressive if progressive is not None else recipe.progressive,
                                    net.config.name, size)
    train_set, val_set, classes = make_datasets(data, size, preprocess, val_split, seed, val_pre)
    if net.num_classes != len(classes):
        net.reset_classifier(len(classes))
    net.class_names = list(classes)
    net.config = dataclasses.replace(net.config, preprocess=val_pre)
    if recipe.zero_init_head and net.num_classes:
        with torch.no_grad():
            net.classifier.weight.zero_()
            net.classifier.bias.zero_()
    net.set_grad_checkpointing(grad_checkpointing)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(env.device, memory_format=memory_format)
    if env.distributed and sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    augment = TrainAugment(size, preprocess.mean, preprocess.std, recipe.augment, recipe.crop_scale,
                           magnitude=recipe.magnitude).to(env.device)
    # Items carry their index; labels (and cached teacher logits, pseudo-labels) are looked up by it.
    train_labels = torch.tensor([y for _, y in dataset_samples(train_set)], dtype=torch.long)
    train_set = IndexedDataset(train_set)

    global_batch = batch_size * env.world * accumulation_steps
    peak_lr = lr if lr is not None else recipe.lr_per_256 * global_batch / 256
    optimizer = build_optimizer(net, recipe, peak_lr)
    n_train = len(train_set)
    drop_last = n_train >= batch_size * env.world * 2
    steps_per_epoch = max(1, (n_train // (batch_size * env.world) if drop_last
                              else math.ceil(n_train / (batch_size * env.world))) // accumulation_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, recipe.warmup_epochs, recipe.decay_rate, recipe.decay_epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=env.use_amp and env.amp_dtype == torch.float16)
    ema = AveragedModel(net, multi_avg_fn=tf_ema(recipe.ema_decay), use_buffers=True) if recipe.ema_decay else None
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    return _State(net, optimizer, scheduler, scaler, ema, criterion, augment, train_set, val_set, list(classes),
                  memory_format, drop_last, preprocess=preprocess, progressive=schedule, train_labels=train_labels)


def _attach_teachers(state: _State, env: _Env, data: Path, batch_size: int, distill: Optional[Distillation],
                     unlabeled: Optional[Unlabeled]) -> None:
    """Set up distillation (an online teacher, or cached logits per training item) and
    Noisy Student's pseudo-labeled set, checking every file against the run's classes and
    teacher.

    Raises:
        DistillError: a teacher or cache with other classes (and no map), a cache or label
            file of another teacher or data, a cache with mixup/CutMix.
    """
    pre = state.preprocess
    fingerprint, teacher_name = None, ""
    if distill is not None:
        state.distill = distill
        teacher = None
        if distill.teacher is not None:
            teacher = build_teacher(distill.teacher, distill.teacher_weights, state.classes, pre.mean, pre.std,
                                    distill.class_map)
            fingerprint, teacher_name = teacher.fingerprint, teacher.name
        if distill.cache is not None:
            cache = LogitCache(distill.cache)
            if teacher is not None and cache.fingerprint != teacher.fingerprint:
                raise DistillError(f"teacher logit cache {cache.path} was written by teacher {cache.teacher} (weights "
                                   f"{cache.fingerprint}), not by {teacher.name} (weights {teacher.fingerprint}); "
                                   f"write it again with effnet distill-cache --teacher {teacher.name}")
            if state.progressive is not None and state.progressive.max_mixup > 0:
                raise DistillError("cached teacher logits belong to whole photos, not to mixup/CutMix blends; "
                                   "distill with the teacher online (no --kd-cache) or turn mixup off")
            state.cached_logits = cache.for_dataset(state.train_set, training_root(data), state.classes)
            fingerprint, teacher_name = fingerprint or cache.fingerprint, teacher_name or cache.teacher
        else:
            state.teacher = teacher.to(env.device)
        state.run_inputs["distill"] = dict(teacher=fingerprint, alpha=float(distill.alpha),
                                           temperature=float(distill.temperature), kind=distill.kind,
                                           cached=distill.cache is not None)
    if unlabeled is not None:
        from ..data import ImageDataset

        labels = PseudoLabels(unlabeled.labels)
        same = distill is not None and (unlabeled.teacher, unlabeled.teacher_weights) == (distill.teacher,
                                                                                         distill.teacher_weights)
        if unlabeled.teacher is not None and not same:      # else checked against the teacher loaded above
            model, teacher_name = load_teacher(unlabeled.teacher, unlabeled.teacher_weights)
            fingerprint = teacher_fingerprint(model)
        labels.check(state.classes, fingerprint, teacher_name)
        size = state.augment.size
        state.unlabeled_set = IndexedDataset(ImageDataset([(Path(p), 0) for p in labels.paths],
                                                          train_decode(size, pre.interpolation), state.classes))
        state.unlabeled_probs = labels.probs
        state.unlabeled_batch = max(1, int(round(unlabeled.ratio * batch_size)))
        state.run_inputs["unlabeled"] = dict(labels=labels.sha256, ratio=float(unlabeled.ratio))


def _apply_stage(state: _State, env: _Env, recipe: Recipe, epoch: int, epochs: int) -> Dict[str, Any]:
    """Set this epoch's image size, augmentation magnitude, mixup/CutMix and dropout (a
    progressive run's stage values; the run's fixed ones otherwise) and return them for the
    metrics row. Rebuilding draws no random numbers, so a resumed run repeats an unbroken one."""
    net = state.net                        # DistributedDataParallel wraps it per epoch, in _train_epoch
    if state.progressive is None:
        return dict(image_size=state.augment.size, magnitude=None, mixup=0.0, cutmix=0.0, dropout=net.dropout.p)
    v = state.progressive.at_epoch(epoch, epochs)
    old = state.values
    if old is None or (v.image_size, v.magnitude) != (old.image_size, old.magnitude):
        pre = state.preprocess
        for dataset in (state.train_set, state.unlabeled_set):
            while isinstance(dataset, (Subset, IndexedDataset)):
                dataset = dataset.dataset
            if dataset is not None:
                dataset.transform = train_decode(v.image_size, pre.interpolation)
        state.augment = TrainAugment(v.image_size, pre.mean, pre.std, recipe.augment, recipe.crop_scale,
                                     magnitude=v.magnitude).to(env.device)
    net.dropout.p = v.dropout
    if state.ema is not None:              # the model a run returns and saves: the same rate
        state.ema.module.dropout.p = v.dropout
    state.mix = MixBatch(v.mixup, v.cutmix) if (v.mixup > 0 or v.cutmix > 0) else None
    state.values = v
    return dict(image_size=v.image_size, magnitude=round(v.magnitude, 4), mixup=round(v.mixup, 4),
                cutmix=round(v.cutmix, 4), dropout=round(v.dropout, 4))


def _resume(state: _State, ckpt_path: Path, env: _Env) -> None:
    """Restore a run from its checkpoint (read with ``weights_only=True``).

    Raises:
        CheckpointError: unusable file, or a checkpoint of another model or other classes.
    """
    ckpt = load_checkpoint(ckpt_path)
    for key, now in (("distill", state.run_inputs.get("distill")), ("unlabeled", state.run_inputs.get("unlabeled"))):
        before = ckpt.get(key)
        if before != now:
            raise CheckpointError(f"cannot resume from {ckpt_path}: it was trained with {key} {before}, this run asks "
                                  f"for {now}; resume with the same teacher, settings and files, or choose another "
                                  f"--out")
    if ckpt.get("classes") is not None and list(ckpt["classes"]) != state.classes:
        raise CheckpointError(f"cannot resume from {ckpt_path}: it was trained on classes {ckpt['classes']}, "
                              f"the data has {state.classes}; use the same data, or another --out")
    try:
        state.net.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        state.scaler.load_state_dict(ckpt["scaler"])
        if state.ema is not None and ckpt.get("ema") is not None:
            state.ema.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"cannot resume from {ckpt_path}: it does not fit this model or recipe ({first}); "
                              f"resume with the same --model and --recipe, or choose another --out") from None
    state.start_epoch, state.history, state.best_top1 = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_top1"]
    state.skipped = ckpt.get("skipped", 0)
    if len(ckpt["rng"]) == env.world:
        _set_rng_state(ckpt["rng"][env.rank])
    if env.main:
        print(f"resumed from {ckpt_path} after epoch {ckpt['epoch'] + 1}", flush=True)


# ---- one epoch ----------------------------------------------------------------------------------

def _loader(state: _State, env: _Env, epoch: int, batch_size: int, workers: int, seed: int) -> DataLoader:
    if env.distributed:
        sampler = DistributedSampler(state.train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed,
                                     drop_last=state.drop_last)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(state.train_set, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return DataLoader(state.train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skip, drop_last=state.drop_last,
                      generator=torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * env.rank),
                      persistent_workers=False, pin_memory=env.device.type == "cuda")


def _unlabeled_batches(state: _State, env: _Env, epoch: int, workers: int, seed: int):
    """Endless pseudo-labeled batches for one epoch: the set is reshuffled (seeded by seed,
    epoch and pass) each time it runs out, so a resumed run draws the same batches."""
    for rnd in itertools.count():
        if env.distributed:
            sampler = DistributedSampler(state.unlabeled_set, num_replicas=env.world, rank=env.rank, shuffle=True,
                                         seed=seed + 104729 * (rnd + 1))
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(state.unlabeled_set,
                                    generator=torch.Generator().manual_seed((seed * 1000 + epoch) * 1009 + rnd + 1))
        loader = DataLoader(state.unlabeled_set, batch_size=state.unlabeled_batch, sampler=sampler,
                            num_workers=workers, collate_fn=collate_skip,
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * env.rank + rnd + 1),
                            persistent_workers=False, pin_memory=env.device.type == "cuda")
        yield from loader


def _check_loss(loss: float, env: _Env, epoch: int, step: int, optimizer: torch.optim.Optimizer,
                run_dir: Optional[Path]) -> None:
    """Stop at the first non-finite loss (on any process), before its gradients are applied.

    Raises:
        NonFiniteLossError: with the epoch, the step, the learning rate and what to try.
    """
    bad = not math.isfinite(loss)
    if env.distributed:
        flag = torch.tensor([float(bad)], device=env.device)
        dist.all_reduce(flag)
        bad = flag.item() > 0
    if bad:
        lr = max(g["lr"] for g in optimizer.param_groups)
        kept = (f"; {run_dir / CHECKPOINT} holds the last good epoch"
                if run_dir is not None and (run_dir / CHECKPOINT).is_file() else "")
        raise NonFiniteLossError(
            f"training stopped: the loss is {loss} at epoch {epoch + 1}, step {step + 1} (learning rate {lr:.3g}); "
            f"nothing non-finite was written{kept}. Lower the learning rate (--lr), check the images and labels, "
            f"or train without --amp")


def _step_loss(state: _State, recipe: Recipe, logits: torch.Tensor, y: torch.Tensor, target: Any,
               teacher_logits: Optional[torch.Tensor], logits_u: Optional[torch.Tensor],
               probs_u: Optional[torch.Tensor]) -> torch.Tensor:
    """The step's loss: label CE (or the mixup/CutMix target's), blended with the teacher's
    term as ``(1 - alpha) * CE + alpha * kd`` (:func:`~effnet.train.distill.kd_loss`), and
    with pseudo-labeled images averaged in by count (soft-target CE, Noisy Student)."""
    loss = (state.criterion(logits, y) if target is None
            else MixBatch.loss(logits, target, recipe.label_smoothing))
    if teacher_logits is not None:
        d = state.distill
        loss = (1.0 - d.alpha) * loss + d.alpha * kd_term(logits, teacher_logits, d.temperature, d.kind)
    if logits_u is not None:
        n_l, n_u = logits.shape[0], logits_u.shape[0]
        loss = (n_l * loss + n_u * soft_cross_entropy(logits_u, probs_u)) / (n_l + n_u)
    return loss


def _train_epoch(state: _State, env: _Env, recipe: Recipe, epoch: int, epochs: int, loader: DataLoader,
                 accumulation_steps: int, progress: bool, run_dir: Optional[Path],
                 unlabeled: Any = None) -> Dict[str, float]:
    """One pass over the training data (with a pseudo-labeled batch per step when
    ``unlabeled`` yields them); returns the epoch's metrics row (without val)."""
    head_only = epoch < recipe.head_only_epochs
    _set_phase(state.net, head_only)
    _train_mode(state.net, recipe.freeze_bn)
    module = (nn.parallel.DistributedDataParallel(state.net, device_ids=[env.device.index]
                                                  if env.device.type == "cuda" else None)
              if env.distributed else state.net)
    t0 = time.perf_counter()
    seen = correct = 0
    loss_sum = 0.0
    skipped: List[str] = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}" + (" (head only)" if head_only else ""),
               unit="batch", disable=not (progress and env.main), dynamic_ncols=True)
    state.optimizer.zero_grad(set_to_none=True)
    micro = 0
    for step, (x, idx, bad) in enumerate(bar):
        skipped += bad
        if x is None:
            continue
        x_u = probs_u = None
        if unlabeled is not None:
            x_u, idx_u, bad_u = next(unlabeled)
            skipped += bad_u
            if x_u is not None:
                probs_u = state.unlabeled_probs[idx_u].to(env.device)
                x_u = x_u.to(env.device, non_blocking=True)
        x = x.to(env.device, non_blocking=True)
        y = state.train_labels[idx].to(env.device)
        with torch.no_grad():
            x = state.augment(x)
            target = None
            if state.mix is not None:
                x, target = state.mix(x, y)
            teacher_logits = None
            if state.cached_logits is not None:
                teacher_logits = state.cached_logits[idx].to(env.device)
            elif state.teacher is not None:
                with torch.autocast(env.device.type, dtype=env.amp_dtype, enabled=env.use_amp):
                    teacher_logits = state.teacher(x)
            if x_u is not None:                # the same noise (augmentation) as the labeled images
                x = torch.cat([x, state.augment(x_u)])
            x = x.contiguous(memory_format=state.memory_format)
        with torch.autocast(env.device.type, dtype=env.amp_dtype, enabled=env.use_amp):
            out = module(x).float()
            logits = out[:y.shape[0]]
            loss = _step_loss(state, recipe, logits, y, target, teacher_logits,
                              out[y.shape[0]:] if x_u is not None else None, probs_u)
        loss_value = loss.item()
        _check_loss(loss_value, env, epoch, step, state.optimizer, run_dir)
        state.scaler.scale(loss / accumulation_steps).backward()
        micro += 1
        if micro % accumulation_steps == 0:
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
            state.scheduler.step()
            if state.ema is not None:
                state.ema.update_parameters(state.net)
        n = y.shape[0]
        seen += n
        loss_sum += loss_value * n
        correct += (logits.argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", top1=f"{100 * correct / seen:.1f}",
                        img_s=f"{seen * env.world / (time.perf_counter() - t0):.1f}")
    bar.close()
    for reason in skipped:
        warnings.warn(f"skipped training image: {reason}")
    seconds = time.perf_counter() - t0
    stats = torch.tensor([loss_sum, correct, seen, len(skipped)], dtype=torch.float64, device=env.device)
    if env.distributed:
        dist.all_reduce(stats)
    loss_sum, correct, seen, n_skipped = stats.tolist()
    if seen == 0:
        raise ValueError(f"no training image of epoch {epoch + 1} could be read ({int(n_skipped)} skipped); "
                         f"check the data folder")
    state.skipped += int(n_skipped)
    return dict(epoch=epoch + 1, lr=max(g["lr"] for g in state.optimizer.param_groups),
                train_loss=loss_sum / seen, train_top1=100 * correct / seen, images_per_s=seen / seconds,
                seconds=seconds, skipped=int(n_skipped))


def _validate(state: _State, env: _Env, batch_size: int, workers: int, seed: int) -> Dict[str, float]:
    """Val top-1/top-5 of the model a run keeps (the EMA when there is one)."""
    val_loader = DataLoader(state.val_set, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                            generator=torch.Generator().manual_seed(seed))   # leaves the global RNG alone
    r = evaluate(state.eval_model, val_loader, progress=False, device=env.device)
    if r["images"] == 0:
        raise ValueError(f"no validation image could be read ({r['skipped']} skipped); check the val images")
    return dict(val_top1=r["top1"], val_top5=r["top5"])


def _save_epoch(state: _State, run_dir: Path, ckpt_path: Path, rng_states: List[Any], epoch: int, row: Dict[str, float],
                recipe: Recipe, writer: Any) -> None:
    """Write the epoch's outputs: ``best/`` when val top-1 improved, metrics, TensorBoard and
    ``last.pt``, refusing to write weights that hold NaN or infinity.

    Raises:
        NonFiniteLossError: the weights became non-finite (nothing is written).
        OSError: a write failed (no space...); the previous files are kept.
    """
    bad = non_finite_keys(state.net.state_dict()) + non_finite_keys(state.eval_model.state_dict())
    if bad:
        kept = f", {ckpt_path} keeps the last good epoch" if ckpt_path.is_file() else ""
        raise NonFiniteLossError(f"training stopped after epoch {epoch + 1}: the weights hold NaN or infinity "
                                 f"({', '.join(bad[:5])}); nothing was written{kept}. Lower the learning rate (--lr)")
    if row["val_top1"] > state.best_top1:
        state.eval_model.save_pretrained(run_dir / "best", class_names=state.classes)
    state.best_top1 = max(state.best_top1, row["val_top1"])
    _write_metrics(state.history, run_dir / "metrics.csv")
    if writer is not None:
        for k in ("lr", "train_loss", "train_top1", "val_top1", "val_top5", "images_per_s"):
            writer.add_scalar(k, row[k], epoch + 1)
        writer.flush()
    checkpoint = dict(format="effnet-checkpoint", version=2, model=state.net.state_dict(),
                      ema=state.ema.state_dict() if state.ema is not None else None,
                      optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
                      scaler=state.scaler.state_dict(), rng=rng_states, epoch=epoch, history=state.history,
                      best_top1=state.best_top1, skipped=state.skipped, recipe=asdict(recipe),
                      classes=list(state.classes), model_name=state.net.config.name,
                      distill=state.run_inputs.get("distill"), unlabeled=state.run_inputs.get("unlabeled"))
    save_checkpoint(ckpt_path, checkpoint)


def fit(model: Union[str, nn.Module], data: Union[str, Path], epochs: int, batch_size: int = 32,
        recipe: Union[str, Recipe] = "paper", out: Optional[Union[str, Path]] = None, resume: bool = False,
        pretrained: Union[bool, str] = False, weights: Optional[str] = None, image_size: Optional[int] = None,
        lr: Optional[float] = None, workers: int = 2, seed: int = 0, device: Optional[str] = None,
        amp: Optional[bool] = None, channels_last: bool = False, grad_checkpointing: bool = False,
        accumulation_steps: int = 1, sync_bn: bool = False, val_split: float = 0.2,
        progress: bool = True, overwrite: bool = False,
        progressive: Union[None, str, Progressive] = None, distill: Optional[Distillation] = None,
        unlabeled: Optional[Unlabeled] = None) -> FitResult:
    """Train (or fine-tune) an EfficientNet on an image folder.

    The steps: set-up (run folder, model, data, optimizer; :func:`_build`), resume
    (:func:`_resume`), then per epoch :func:`_train_epoch`, :func:`_validate` and
    :func:`_save_epoch`.

    Args:
        model: a registered name (built here with the dataset's classes) or a model.
        data: folder with ``train/`` and ``val/`` class subfolders (the same classes in both),
            or one folder of class subfolders split ``val_split`` for validation with ``seed``.
        epochs: total epochs (with ``resume``, the run continues up to this many); >= 1.
        batch_size: images per step per process; >= 1.
        recipe: a :class:`Recipe` or preset name (``paper``, ``finetune``, ``v2``,
            ``noisy-student``).
        out: run folder for checkpoints and metrics (None: nothing is written). A folder that
            already holds a run is refused unless ``resume`` or ``overwrite`` is given.
        resume: continue from ``out/last.pt`` exactly where it stopped.
        overwrite: delete the run already in ``out`` (``last.pt``, ``best/``, ``metrics.csv``,
            ``curves.png``, ``tb/``) and start again.
        pretrained, weights: as :func:`effnet.create_model` (ignored for a model instance).
        image_size: training resolution in pixels (default: the model's times the recipe's
            ``train_size_scale``). Validation, and the run's saved preprocessing, use
            ``image_size * recipe.eval_size_scale`` and the recipe's ``eval_crop_pct``.
        lr: peak learning rate (default ``recipe.lr_per_256 * global_batch / 256``); > 0.
        workers: DataLoader processes decoding images (0: in this process).
        seed: seeds data order, augmentation, dropout, and the val split.
        device: ``cpu``/``cuda``; default cuda when available (``cuda:LOCAL_RANK`` under torchrun).
        amp: bf16 autocast (fp16 with gradient scaling on GPUs without bf16); default on for
            CUDA, off on CPU.
        channels_last: NHWC memory format. grad_checkpointing: recompute activations.
        accumulation_steps: micro-batches per optimizer step.
        sync_bn: SyncBatchNorm across processes (with ``freeze_bn`` recipes it has no effect).
        val_split: fraction of a single folder kept for validation, in (0, 1).
        progress: tqdm bars (rank 0).
        progressive: progressive learning (V2 paper Sec. 4.2): ``paper`` or ``automl`` for
            the model's Table 6 schedule ending at the training size, or a
            :class:`~effnet.train.progressive.Progressive` with every value set; None:
            the recipe's (``v2``: paper). Each epoch's image size, RandAugment magnitude,
            mixup/CutMix alpha and dropout go into ``metrics.csv``.
        distill: knowledge distillation from a teacher
            (:class:`~effnet.train.distill.Distillation`): the labeled loss becomes
            ``(1 - alpha) * CE + alpha * T^2 * KL`` (or CE on the teacher's argmax), the
            teacher run frozen on the student's augmented batch (its own size, mean and std;
            one copy per process under torchrun) or read from a logit cache.
        unlabeled: Noisy Student (:class:`~effnet.train.distill.Unlabeled`): each step adds
            ``ratio * batch_size`` pseudo-labeled photos, with the same noise (augmentation,
            dropout, drop path), trained on their soft labels; the loss averages over all
            images of the step. Checked against the data's classes and, with a teacher,
            against the teacher that made the labels.

    Returns:
        :class:`FitResult`.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range; fewer than 2
            classes, class folders without images, train/ and val/ with different classes,
            no readable image in an epoch; ``resume`` without ``out``; a progressive
            schedule with more stages than epochs or a minimum above its maximum.
        DistillError: a teacher whose classes differ from the data's without a class map;
            a logit cache or pseudo-label file of another teacher, other classes or other
            photos; an unlabeled file with no rows.
        FileExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is given.
        FileNotFoundError: ``resume`` without a checkpoint in ``out``, or missing data.
        CheckpointError: ``out/last.pt`` is truncated, hostile or of another run.
        NonFiniteLossError: the loss (or the weights) became NaN/infinite; the message gives
            the epoch and step. Nothing non-finite is written.
        OSError: a file could not be written (no space...); the previous checkpoint is kept.
    """
    _validate_fit_args(epochs, batch_size, image_size, lr, workers, accumulation_steps, val_split, seed)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    env = _make_env(device, amp)
    run_dir = Path(out) if out is not None else None
    ckpt_path = _check_run_dir(run_dir, resume, overwrite)

    torch.manual_seed(seed + env.rank)
    np.random.seed(seed + env.rank)
    random.seed(seed + env.rank)
    state = _build(model, data, recipe, env, batch_size, pretrained, weights, image_size, lr, channels_last,
                   grad_checkpointing, accumulation_steps, sync_bn, val_split, seed, progressive)
    if distill is not None or unlabeled is not None:
        _attach_teachers(state, env, Path(data), batch_size, distill, unlabeled)
    if state.progressive is not None:
        state.progressive.check_epochs(epochs)
    if resume:
        _resume(state, ckpt_path, env)
    if env.main and run_dir is not None:
        _open_run_dir(run_dir, overwrite)

    writer = None
    if env.main and run_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            warnings.warn("tensorboard is not installed; metrics go to metrics.csv only")
    try:
        for epoch in range(state.start_epoch, epochs):
            stage = _apply_stage(state, env, recipe, epoch, epochs)
            loader = _loader(state, env, epoch, batch_size, workers, seed)
            pseudo = (_unlabeled_batches(state, env, epoch, workers, seed) if state.unlabeled_set is not None
                      else None)
            row = _train_epoch(state, env, recipe, epoch, epochs, loader, accumulation_steps, progress, run_dir,
                               pseudo)
            row.update(stage)
            if env.main:
                row.update(_validate(state, env, batch_size, workers, seed))
            rng = _rng_state()     # after everything that draws random numbers this epoch
            states: List[Any] = [None] * env.world
            if env.distributed:
                dist.all_gather_object(states, rng)
            else:
                states = [rng]
            state.history.append(row)
            if env.main:
                print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.1f}%, "
                      f"val top-1 {row['val_top1']:.2f}%, {row['images_per_s']:.1f} images/s, {row['seconds']:.0f} s"
                      + (f", {row['skipped']} unreadable images skipped" if row["skipped"] else ""), flush=True)
                if run_dir is not None:
                    _save_epoch(state, run_dir, ckpt_path, states, epoch, row, recipe, writer)
                else:
                    state.best_top1 = max(state.best_top1, row["val_top1"])
            if env.distributed:
                dist.barrier()
        if env.main and run_dir is not None and state.history:
            _plot(state.history, run_dir / "curves.png")
    finally:
        if writer is not None:
            writer.close()
    best_top1 = state.best_top1
    if env.distributed:
        best = torch.tensor([best_top1], device=env.device)
        dist.broadcast(best, 0)
        best_top1 = best.item()
    return FitResult(best_top1=best_top1, history=state.history, run_dir=run_dir, model=state.eval_model,
                     skipped=state.skipped)
