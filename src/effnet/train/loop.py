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
import math
import os
import random
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

from .._io import atomic_write
from ..data import ImageDataset, collate_skip, eval_transform
from ..evaluation import evaluate
from ..registry import PreprocessConfig, create_model
from .augment import TrainAugment, train_decode
from .optim import build_optimizer, lr_factor
from .recipe import Recipe, get_recipe

__all__ = ["fit", "FitResult", "make_datasets", "tf_ema"]

CHECKPOINT = "last.pt"
METRICS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "images_per_s", "seconds", "skipped"]


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


def make_datasets(data: Union[str, Path], size: int, preprocess: PreprocessConfig, val_split: float = 0.2,
                  seed: int = 0):
    """Train and val datasets from ``data/train`` + ``data/val``, or one folder split with ``seed``.

    Returns:
        ``(train, val, classes)``: train items are uint8 squares for :class:`TrainAugment`;
        val items go through the eval transform of ``preprocess`` at ``size``.
    """
    data = Path(data)
    val_pre = PreprocessConfig(size, preprocess.crop_pct, preprocess.interpolation, preprocess.mean, preprocess.std)
    if (data / "train").is_dir() and (data / "val").is_dir():
        train = ImageDataset.from_folder(data / "train", train_decode(size, preprocess.interpolation))
        val = ImageDataset.from_folder(data / "val", eval_transform(val_pre), classes=train.classes)
        return train, val, train.classes
    full = ImageDataset.from_folder(data, train_decode(size, preprocess.interpolation))
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(full) * val_split)))
    train = Subset(full, order[n_val:])
    val_full = ImageDataset(full.samples, eval_transform(val_pre), full.classes)
    return train, Subset(val_full, order[:n_val]), full.classes


def _rng_state() -> Dict[str, Any]:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics(history: List[Dict[str, float]], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k) for k in METRICS})
    atomic_write(path, write)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _set_phase(model: nn.Module, head_only: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(not head_only or name.startswith("classifier."))


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def fit(model: Union[str, nn.Module], data: Union[str, Path], epochs: int, batch_size: int = 32,
        recipe: Union[str, Recipe] = "paper", out: Optional[Union[str, Path]] = None, resume: bool = False,
        pretrained: Union[bool, str] = False, weights: Optional[str] = None, image_size: Optional[int] = None,
        lr: Optional[float] = None, workers: int = 2, seed: int = 0, device: Optional[str] = None,
        amp: Optional[bool] = None, channels_last: bool = False, grad_checkpointing: bool = False,
        accumulation_steps: int = 1, sync_bn: bool = False, val_split: float = 0.2,
        progress: bool = True) -> FitResult:
    """Train (or fine-tune) an EfficientNet on an image folder.

    Args:
        model: a registered name (built here with the dataset's classes) or a model.
        data: folder with ``train/`` and ``val/`` class subfolders, or one folder of class
            subfolders split ``val_split`` for validation with ``seed``.
        epochs: total epochs (with ``resume``, the run continues up to this many).
        batch_size: images per step per process.
        recipe: a :class:`Recipe` or preset name (``paper``, ``finetune``).
        out: run folder for checkpoints and metrics (None: nothing is written).
        resume: continue from ``out/last.pt`` exactly where it stopped.
        pretrained, weights: as :func:`effnet.create_model` (ignored for a model instance).
        image_size: training/eval resolution in pixels (default: the model's).
        lr: peak learning rate (default ``recipe.lr_per_256 * global_batch / 256``).
        workers: DataLoader processes decoding images.
        seed: seeds data order, augmentation, dropout, and the val split.
        device: ``cpu``/``cuda``; default cuda when available (``cuda:LOCAL_RANK`` under torchrun).
        amp: bf16 autocast (fp16 with gradient scaling on GPUs without bf16); default on for
            CUDA, off on CPU.
        channels_last: NHWC memory format. grad_checkpointing: recompute activations.
        accumulation_steps: micro-batches per optimizer step.
        sync_bn: SyncBatchNorm across processes (with ``freeze_bn`` recipes it has no effect).
        progress: tqdm bars (rank 0).

    Returns:
        :class:`FitResult`.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint in ``out``, or missing data.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if device is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = device.type == "cuda" if amp is None else amp
    amp_dtype = torch.bfloat16
    if use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    main = rank == 0
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT if run_dir is not None else None
    if resume and (ckpt_path is None or not ckpt_path.is_file()):
        raise FileNotFoundError(f"cannot resume: no checkpoint {ckpt_path}; run without --resume to start")

    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)

    # ---- model and data ----
    if isinstance(model, str):
        overrides = dict(drop_path_rate=recipe.drop_path_rate)
        if recipe.dropout is not None:
            overrides["drop_rate"] = recipe.dropout
        # The weights' own classifier size for now; replaced below if the data has other classes.
        net = create_model(model, pretrained=pretrained, weights=weights, num_classes=None, **overrides)
    else:
        net = model
    preprocess = net.config.preprocess
    size = image_size or preprocess.input_size
    train_set, val_set, classes = make_datasets(data, size, preprocess, val_split, seed)
    if net.num_classes != len(classes):
        net.reset_classifier(len(classes))
    net.class_names = list(classes)
    # The run's weights are evaluated (and later predict) at the training resolution.
    net.config = dataclasses.replace(net.config, preprocess=dataclasses.replace(preprocess, input_size=size))
    if recipe.zero_init_head and net.num_classes:
        with torch.no_grad():
            net.classifier.weight.zero_()
            net.classifier.bias.zero_()
    net.set_grad_checkpointing(grad_checkpointing)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    if distributed and sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    augment = TrainAugment(size, preprocess.mean, preprocess.std, recipe.augment, recipe.crop_scale).to(device)

    global_batch = batch_size * world * accumulation_steps
    peak_lr = lr if lr is not None else recipe.lr_per_256 * global_batch / 256
    optimizer = build_optimizer(net, recipe, peak_lr)
    n_train = len(train_set)
    drop_last = n_train >= batch_size * world * 2
    steps_per_epoch = max(1, (n_train // (batch_size * world) if drop_last
                              else math.ceil(n_train / (batch_size * world))) // accumulation_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, recipe.warmup_epochs, recipe.decay_rate, recipe.decay_epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ema = AveragedModel(net, multi_avg_fn=tf_ema(recipe.ema_decay), use_buffers=True) if recipe.ema_decay else None
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    start_epoch, history, best_top1, skipped_total = 0, [], -1.0, 0
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        start_epoch, history, best_top1 = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_top1"]
        skipped_total = ckpt.get("skipped", 0)
        states = ckpt["rng"]
        if len(states) == world:
            _set_rng_state(states[rank])
        if main:
            print(f"resumed from {ckpt_path} after epoch {ckpt['epoch'] + 1}", flush=True)

    writer = None
    if main and run_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            warnings.warn("tensorboard is not installed; metrics go to metrics.csv only")

    for epoch in range(start_epoch, epochs):
        head_only = epoch < recipe.head_only_epochs
        _set_phase(net, head_only)
        _train_mode(net, recipe.freeze_bn)
        module = (nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
                  if distributed else net)
        if distributed:
            sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                         drop_last=drop_last)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                            collate_fn=collate_skip, drop_last=drop_last,
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * rank),
                            persistent_workers=False, pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        skipped: List[str] = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}" + (" (head only)" if head_only else ""),
                   unit="batch", disable=not (progress and main), dynamic_ncols=True)
        optimizer.zero_grad(set_to_none=True)
        micro = 0
        for x, y, bad in bar:
            skipped += bad
            if x is None:
                continue
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.no_grad():
                x = augment(x).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = module(x)
                loss = criterion(logits.float(), y)
            scaler.scale(loss / accumulation_steps).backward()
            micro += 1
            if micro % accumulation_steps == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(net)
            n = y.shape[0]
            seen += n
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", top1=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen * world / (time.perf_counter() - t0):.1f}")
        bar.close()
        for path in skipped:
            warnings.warn(f"skipped unreadable training image {path}")
        seconds = time.perf_counter() - t0
        stats = torch.tensor([loss_sum, correct, seen, len(skipped)], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(stats)
        loss_sum, correct, seen, n_skipped = stats.tolist()
        skipped_total += int(n_skipped)

        row: Dict[str, float] = dict(epoch=epoch + 1, lr=max(g["lr"] for g in optimizer.param_groups),
                                     train_loss=loss_sum / max(seen, 1), train_top1=100 * correct / max(seen, 1),
                                     images_per_s=seen / seconds, seconds=seconds, skipped=int(n_skipped))
        eval_model = ema.module if ema is not None else net
        if main:
            val_loader = DataLoader(val_set, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                                    generator=torch.Generator().manual_seed(seed))   # leaves the global RNG alone
            r = evaluate(eval_model, val_loader, progress=False, device=device)
            row.update(val_top1=r["top1"], val_top5=r["top5"])
        rng = _rng_state()     # after everything that draws random numbers this epoch
        states = [None] * world
        if distributed:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        history.append(row)
        if main:
            print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}, train top-1 {row['train_top1']:.1f}%, "
                  f"val top-1 {row['val_top1']:.2f}%, {row['images_per_s']:.1f} images/s, {seconds:.0f} s"
                  + (f", {int(n_skipped)} unreadable images skipped" if n_skipped else ""), flush=True)
            if run_dir is not None:
                if row["val_top1"] > best_top1:
                    eval_model.save_pretrained(run_dir / "best", class_names=list(classes))
                best_top1 = max(best_top1, row["val_top1"])
                _write_metrics(history, run_dir / "metrics.csv")
                if writer is not None:
                    for k in ("lr", "train_loss", "train_top1", "val_top1", "val_top5", "images_per_s"):
                        writer.add_scalar(k, row[k], epoch + 1)
                    writer.flush()
                checkpoint = dict(model=net.state_dict(), ema=ema.state_dict() if ema is not None else None,
                                  optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                  scaler=scaler.state_dict(), rng=states, epoch=epoch, history=history,
                                  best_top1=best_top1, skipped=skipped_total, recipe=asdict(recipe),
                                  classes=list(classes), model_name=net.config.name)
                atomic_write(ckpt_path, lambda tmp: torch.save(checkpoint, tmp))
            else:
                best_top1 = max(best_top1, row["val_top1"])
        if distributed:
            dist.barrier()
    if main and run_dir is not None and history:
        _plot(history, run_dir / "curves.png")
    if writer is not None:
        writer.close()
    if distributed:
        best = torch.tensor([best_top1], device=device)
        dist.broadcast(best, 0)
        best_top1 = best.item()
    final = ema.module if ema is not None else net
    return FitResult(best_top1=best_top1, history=history, run_dir=run_dir, model=final, skipped=skipped_total)
