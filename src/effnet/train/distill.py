"""Knowledge distillation (Hinton et al. 2015) and Noisy Student self-training (Xie et al. 2020).

- :func:`kd_loss`: ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``
  (batchmean), or with ``kind="hard"`` CE on the teacher's argmax in place of the KL term.
- :class:`Teacher`: a trained model frozen in eval mode that takes the *student's* batch,
  undoes the student's normalisation, resizes to its own resolution and applies its own mean
  and std, and returns logits over the student's classes (a class map may pick them).
- :func:`write_logit_cache` / :class:`LogitCache`: the teacher's logits on every training
  photo, computed once (``effnet distill-cache``) so that each epoch does not pay the teacher.
- :func:`pseudo_label` / :class:`PseudoLabels`: the teacher's soft labels for a folder of
  unlabeled photos, in Parquet (``effnet pseudo-label``), for ``fit(unlabeled=...)``.

Every file here records the teacher that made it by a fingerprint of its weights, so a file
made by one teacher is never used with another one silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distillation", "Unlabeled", "kd_loss", "kd_term", "Teacher", "load_teacher", "teacher_fingerprint",
           "class_index", "read_class_map", "write_logit_cache", "LogitCache", "pseudo_label", "PseudoLabels",
           "DistillError", "IndexedDataset"]

CACHE_FORMAT = "effnet-teacher-logits"
LABELS_FORMAT = "effnet-pseudo-labels"
# A cache or label file larger than this is refused before it is read (1000 classes x 1M
# photos of float32 logits is 4 GB; a file beyond 8 GiB is not one effnet wrote for a
# dataset this loop can train on).
MAX_FILE_BYTES = 8 * 2 ** 30


class DistillError(ValueError):
    """A teacher, class map, logit cache or pseudo-label file that cannot be used (the
    message names the file or teacher, what is wrong and how to fix it)."""


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation settings for :func:`effnet.train.fit`.

    Attributes:
        teacher: a registered name (its registered ImageNet weights, or ``teacher_weights``),
            an effnet folder (``save_pretrained``, e.g. a run's ``best/``) or a model. May be
            None when ``cache`` is given (the cache then names its teacher).
        teacher_weights: weight file or folder for a teacher given by name.
        temperature: T of Hinton et al. (2015); the KL term is scaled by T^2 so that its
            gradients keep their size as T changes (their Sec. 2). Default 4.
        alpha: weight of the distillation term; ``1 - alpha`` weighs the label CE. 0 trains
            exactly as without a teacher.
        kind: ``soft`` (KL between softened distributions) or ``hard`` (CE on the teacher's
            argmax).
        cache: logit cache from :func:`write_logit_cache` (``effnet distill-cache``): the
            teacher's logits on each training photo (its own eval preprocessing), read
            instead of running the teacher each step. Not with mixup/CutMix.
        class_map: student class name -> teacher class (name or index), when their class
            lists differ (e.g. an ImageNet teacher: ``{"ants": "ant", "bees": 309}``).
    """

    teacher: Any = None
    teacher_weights: Optional[str] = None
    temperature: float = 4.0
    alpha: float = 0.5
    kind: str = "soft"
    cache: Optional[Union[str, Path]] = None
    class_map: Optional[Mapping[str, Union[str, int]]] = None

    def __post_init__(self) -> None:
        if self.kind not in ("soft", "hard"):
            raise ValueError(f"kind must be 'soft' or 'hard', got {self.kind!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.teacher is None and self.cache is None:
            raise ValueError("distillation needs a teacher (a name, an effnet folder or a model) or a logit cache")


@dataclass(frozen=True)
class Unlabeled:
    """Noisy Student's pseudo-labeled photos for :func:`effnet.train.fit`.

    Attributes:
        labels: a Parquet file from :func:`pseudo_label` (``effnet pseudo-label``).
        ratio: pseudo-labeled images per labeled image in each step (Noisy Student used
            batches of unlabeled images several times larger than the labeled ones;
            Xie et al. 2020 Sec. 3). ``round(ratio * batch_size)`` per step, at least 1.
        teacher: when given, the file must have been made by this teacher (a name, folder
            or model, with ``teacher_weights``), else :class:`DistillError` names both.
    """

    labels: Union[str, Path]
    ratio: float = 1.0
    teacher: Any = None
    teacher_weights: Optional[str] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and self.ratio > 0):
            raise ValueError(f"unlabeled ratio must be a finite number > 0, got {self.ratio!r}")


# ---- the loss ------------------------------------------------------------------------------------

def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            kind: str = "soft") -> torch.Tensor:
    """The distillation term alone (a scalar).

    ``soft``: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged
    over the batch (``batchmean``, the true KL per example). ``hard``: cross-entropy of the
    student on the teacher's argmax (``T`` unused).

    Args:
        student_logits, teacher_logits: (N, K) float logits over the same K classes.
    """
    if kind == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(1))
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.5, kind: str = "soft",
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss, a scalar:
    ``(1 - alpha) * CE(student, labels) + alpha * kd_term(student, teacher)``.

    Args:
        student_logits: (N, K) float, with gradient.
        teacher_logits: (N, K) float; detached here (the teacher gets no gradient).
        labels: (N,) int64 class indices.
        temperature: T (> 0); the soft term is multiplied by T^2 (Hinton et al. Sec. 2).
        alpha: in [0, 1]; 0 gives the plain CE exactly.
        kind: ``soft`` or ``hard`` (see :func:`kd_term`).
        label_smoothing: of the label CE only.
    """
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return (1.0 - alpha) * ce + alpha * kd_term(student_logits, teacher_logits, temperature, kind)


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets, averaged over the batch: ``mean_i -sum_c p_ic log q_ic``.

    Args:
        logits: (N, K) float. probs: (N, K) float, rows summing to 1.
    """
    return -(probs * F.log_softmax(logits, dim=1)).sum(1).mean()


# ---- the teacher ---------------------------------------------------------------------------------

def teacher_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex, first 16 digits) of a model's state dict: every key and tensor, in key
    order, so the same weights loaded from any file give the same fingerprint."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = value.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_teacher(teacher: Any, weights: Optional[str] = None) -> Tuple[nn.Module, str]:
    """The teacher model (eval mode) and the name it is shown by.

    Args:
        teacher: an ``nn.Module``; an effnet folder (``save_pretrained``, e.g. a run's
            ``best/``); or a registered name, loaded with ``weights`` when given, else with
            its registered ImageNet weights.

    Raises:
        DistillError: ``weights`` with a folder or a model; a name that is not registered.
        Errors of :func:`effnet.create_model` / :func:`effnet.from_pretrained` otherwise
            (missing weights package, unreadable file...).
    """
    from ..registry import create_model, from_pretrained, list_models
    from ..weights import CONFIG_NAME

    if isinstance(teacher, nn.Module):
        if weights is not None:
            raise DistillError("teacher_weights is for a teacher given by name; this teacher is already a model")
        return teacher.eval(), type(teacher).__name__
    path = Path(str(teacher))
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise DistillError(f"teacher folder {path} has no {CONFIG_NAME}: give an effnet folder (a run's best/, "
                               f"or one written by save_pretrained) or a model name")
        if weights is not None:
            raise DistillError(f"--teacher-weights is for a teacher given by name; {path} is a folder with its own "
                               f"weights")
        return from_pretrained(path).eval(), str(path)
    if str(teacher) not in list_models():
        raise DistillError(f"teacher {teacher!r} is neither an effnet folder nor a registered model name "
                           f"(effnet models lists them)")
    if weights is not None:
        model = create_model(str(teacher), weights=weights, num_classes=None)
    else:
        model = create_model(str(teacher), pretrained=True)
    return model.eval(), str(teacher)


def read_class_map(value: Union[None, str, Path, Mapping[str, Union[str, int]]]) -> Optional[Dict[str, Union[str, int]]]:
    """A class map from a mapping or a JSON file ``{"student class": "teacher class" or index}``.

    Raises:
        DistillError: the file is missing, not JSON, or not an object of names to names/indices.
    """
    if value is None or isinstance(value, Mapping):
        return dict(value) if value is not None else None
    path = Path(value)
    try:
        if path.stat().st_size > 16 * 2 ** 20:
            raise DistillError(f"class map {path} is over 16 MiB; it should be a small JSON object")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistillError(f"class map file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistillError(f"class map {path} is not JSON ({e}); write an object such as "
                           f'{{"ants": "ant", "bees": 309}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                             for v in data.values()):
        raise DistillError(f"class map {path} must be a JSON object of student class -> teacher class name or index")
    return data


def _match_teacher_class(wanted: Union[str, int], teacher_classes: Sequence[str], student: str) -> int:
    if isinstance(wanted, int):
        if not 0 <= wanted < len(teacher_classes):
            raise DistillError(f"class map: {student!r} -> index {wanted}, but the teacher has "
                               f"{len(teacher_classes)} classes (0..{len(teacher_classes) - 1})")
        return wanted
    exact = [i for i, c in enumerate(teacher_classes) if c == wanted]
    if not exact:      # ImageNet names list synonyms: "ant, emmet, pismire" matches "ant"
        exact = [i for i, c in enumerate(teacher_classes) if wanted in [s.strip() for s in c.split(",")]]
    if len(exact) != 1:
        close = [c for c in teacher_classes if wanted.lower() in c.lower()][:5]
        raise DistillError(f"class map: {student!r} -> {wanted!r} matches {len(exact)} teacher classes"
                           + (f"; close: {close}" if close else "") + "; give the teacher's class name or index")
    return exact[0]


def class_index(teacher_classes: Sequence[str], student_classes: Sequence[str],
                class_map: Optional[Mapping[str, Union[str, int]]] = None) -> Optional[torch.Tensor]:
    """Which teacher logit serves each student class: None when the class lists are equal
    (the identity), else an int64 (K_student,) index into the teacher's classes.

    Raises:
        DistillError: the lists differ and no map is given (the message lists the classes
            only the student has and only the teacher has), or the map misses a student class
            or names a teacher class that does not exist.
    """
    teacher_classes, student_classes = list(teacher_classes), list(student_classes)
    if class_map is None:
        if teacher_classes == student_classes:
            return None
        only_s = [c for c in student_classes if c not in teacher_classes]
        only_t = [c for c in teacher_classes if c not in student_classes]
        detail = (f"only the data has {only_s[:10]}" + ("..." if len(only_s) > 10 else "")
                  + f", only the teacher has {only_t[:10]}" + ("..." if len(only_t) > 10 else "")
                  if only_s or only_t else "the same names in another order")
        raise DistillError(f"the teacher's {len(teacher_classes)} classes differ from the data's "
                           f"{len(student_classes)} ({detail}); train the teacher on the same classes, or give a "
                           f"class map (--kd-class-map FILE: JSON of data class -> teacher class)")
    missing = [c for c in student_classes if c not in class_map]
    if missing:
        raise DistillError(f"class map: no teacher class for data class(es) {missing}; map every class of the data")
    return torch.tensor([_match_teacher_class(class_map[c], teacher_classes, c) for c in student_classes],
                        dtype=torch.long)


class Teacher(nn.Module):
    """A frozen teacher that reads the student's batch.

    The student's batch (normalised with the student's mean/std, at the student's size) is
    brought back to [0, 1], resized to the teacher's own input size when it differs (the
    teacher's interpolation), normalised with the teacher's mean/std, and run in eval mode
    under ``no_grad``. ``train()`` leaves it in eval mode, and its parameters never require
    gradients.

    Args:
        model: the teacher (its ``config.preprocess`` gives size, mean, std, interpolation).
        student_mean, student_std: the student's input normalisation, RGB.
        index: (K_student,) teacher logit per student class (:func:`class_index`), or None.
        name: how messages name the teacher.

    Shapes: float (N, 3, H, W) -> float32 (N, K_student) logits.
    """

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float],
                 index: Optional[torch.Tensor] = None, name: str = "teacher") -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        pre = model.config.preprocess
        self.size = int(pre.input_size)
        self.interpolation = pre.interpolation if pre.interpolation in ("bilinear", "bicubic") else "bilinear"
        self.name = name
        self.fingerprint = teacher_fingerprint(model)
        self.register_buffer("scale", (torch.tensor(student_std) / torch.tensor(pre.std)).view(1, -1, 1, 1).float())
        self.register_buffer("shift", ((torch.tensor(student_mean) - torch.tensor(pre.mean))
                                       / torch.tensor(pre.std)).view(1, -1, 1, 1).float())
        self.register_buffer("index", index if index is not None else torch.empty(0, dtype=torch.long))

    def train(self, mode: bool = True) -> "Teacher":       # always eval: BN statistics and dropout stay fixed
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch as the teacher's input: (x*s_std + s_mean - t_mean) / t_std, resized."""
        x = x.float() * self.scale + self.shift
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, align_corners=False,
                              antialias=True)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.preprocess(x)).float()
        return logits[:, self.index] if self.index.numel() else logits


def load_teacher_for(teacher: Any, weights: Optional[str], classes: Optional[Sequence[str]],
                     class_map: Any = None) -> Tuple[nn.Module, str, Optional[torch.Tensor], List[str]]:
    """Load a teacher (:func:`load_teacher`) and match its classes to ``classes`` (None: the
    teacher's own) through :func:`class_index`.

    Returns:
        ``(model, name, index or None, classes)``.

    Raises:
        DistillError: as :func:`load_teacher`, :func:`read_class_map` and :func:`class_index`.
    """
    from ..data import model_class_names

    model, name = load_teacher(teacher, weights)
    teacher_classes = model_class_names(model)
    classes = list(classes) if classes is not None else teacher_classes
    return model, name, class_index(teacher_classes, classes, read_class_map(class_map)), classes


def build_teacher(teacher: Any, weights: Optional[str], student_classes: Sequence[str], student_mean: Sequence[float],
                  student_std: Sequence[float], class_map: Any = None) -> Teacher:
    """A :class:`Teacher` for the student's classes (:func:`load_teacher_for`). Raises
    :class:`DistillError` as that does."""
    model, name, index, _ = load_teacher_for(teacher, weights, student_classes, class_map)
    return Teacher(model, student_mean, student_std, index, name)


class IndexedDataset(torch.utils.data.Dataset):
    """A dataset whose items carry their own index in place of the label:
    ``(x, i, path_or_reason)``, so a loop can look up per-item targets (labels, cached
    teacher logits, pseudo-labels) by index after :func:`effnet.data.collate_skip`."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, _, path = self.dataset[i]
        return x, i, path


def dataset_samples(dataset: Any) -> List[Tuple[Path, int]]:
    """(path, label) of each item of an :class:`~effnet.data.ImageDataset`, or of a (nested)
    ``Subset`` / :class:`IndexedDataset` of one, in the dataset's own order."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = dataset_samples(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, IndexedDataset):
        return dataset_samples(dataset.dataset)
    return list(dataset.samples)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _capped_size(path: Path, what: str) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DistillError(f"{what} not found: {path}") from None
    if size > MAX_FILE_BYTES:
        raise DistillError(f"{what} {path} is {size / 2 ** 30:.1f} GiB, over the {MAX_FILE_BYTES // 2 ** 30} GiB "
                           f"effnet reads; it is not a file effnet wrote for this data")
    return size


def _teacher_outputs(teacher: nn.Module, files: Sequence[Path], index: Optional[torch.Tensor], batch_size: int,
                     workers: int, device: Union[str, torch.device], progress: bool, desc: str
                     ) -> Tuple[torch.Tensor, List[int], List[str]]:
    """The teacher's logits on each file with its own eval preprocessing.

    Returns ``(logits (M, K) float32, kept positions into files, unreadable reasons)``.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data import ImageDataset, collate_skip, eval_transform

    dataset = IndexedDataset(ImageDataset([(f, 0) for f in files], eval_transform(teacher.config)))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip)
    teacher = teacher.to(device).eval()
    outs: List[torch.Tensor] = []
    kept: List[int] = []
    skipped: List[str] = []
    with torch.no_grad():
        for x, i, bad in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            skipped += bad
            if x is None:
                continue
            logits = teacher(x.to(device)).float().cpu()
            outs.append(logits[:, index] if index is not None else logits)
            kept += i.tolist()
    k = len(index) if index is not None else teacher.num_classes
    return (torch.cat(outs) if outs else torch.empty(0, k)), kept, skipped


# ---- the logit cache -----------------------------------------------------------------------------

def _training_files(data: Path) -> Tuple[Path, List[Path], List[str]]:
    """(root, every training image under it, classes): ``data/train`` when ``data`` has
    train/ and val/, else all of ``data`` (a split run draws its train part from it)."""
    from ..data import list_images
    from .loop import check_data, training_root

    classes = check_data(data)
    root = training_root(data)
    return root, [f for c in classes for f in list_images(root / c)], classes


def write_logit_cache(teacher: Any, data: Union[str, Path], out: Union[str, Path], teacher_weights: Optional[str] = None,
                      class_map: Any = None, batch_size: int = 32, workers: int = 2,
                      device: Union[str, torch.device] = "cpu", progress: bool = True) -> Dict[str, Any]:
    """Run the teacher once over every training photo of ``data`` and write its logits.

    The teacher sees each photo through its own eval preprocessing (its size, crop, mean,
    std), not the student's augmented view: a cache trades that consistency for not running
    the teacher every step.

    Args:
        teacher, teacher_weights: as :func:`load_teacher`.
        data: the training data folder, as given to ``fit``.
        out: a ``.safetensors`` file: ``logits`` float32 (N, K student classes); its metadata
            holds the format, the teacher's name and fingerprint, the classes and each photo's
            path relative to the training folder with its size in bytes.
        class_map: as :func:`class_index`, when the teacher's classes differ from the data's.

    Returns:
        ``{"images", "skipped", "teacher", "fingerprint", "path"}``.

    Raises:
        DistillError: as :func:`build_teacher`; no photo could be read.
        FileNotFoundError, ValueError: ``data`` cannot train a classifier (see ``fit``).
        OSError: the file could not be written (the previous one is kept).
    """
    from safetensors.torch import save

    from .._io import atomic_write

    data = Path(data)
    root, files, classes = _training_files(data)
    model, name, index, _ = load_teacher_for(teacher, teacher_weights, classes, class_map)
    logits, kept, skipped = _teacher_outputs(model, files, index, batch_size, workers, device, progress,
                                             "teacher logits")
    if not kept:
        raise DistillError(f"none of the {len(files)} training photos under {root} could be read; nothing written")
    for reason in skipped:
        warnings.warn(f"not cached (unreadable): {reason}")
    fingerprint = teacher_fingerprint(model)
    meta = dict(format=CACHE_FORMAT, version=1, teacher=name, fingerprint=fingerprint, classes=list(classes),
                files=[str(files[i].relative_to(root)) for i in kept],
                sizes=[files[i].stat().st_size for i in kept])
    atomic_write(out, save({"logits": logits.contiguous()}, metadata={"effnet": json.dumps(meta)}))
    return dict(images=len(kept), skipped=len(skipped), teacher=name, fingerprint=fingerprint, path=str(out))


class LogitCache:
    """A logit cache read back safely (safetensors: no code runs; size capped first).

    Attributes: ``logits`` float32 (N, K); ``teacher``, ``fingerprint``, ``classes``;
    ``lookup``: path relative to the training folder -> (row, size in bytes).

    Raises:
        DistillError: missing, oversized, unreadable or foreign file; a cache whose classes
            differ from the data's.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        _capped_size(self.path, "teacher logit cache")
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("effnet", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, json.JSONDecodeError, OSError, ValueError, RuntimeError) as e:
            raise DistillError(f"teacher logit cache {self.path} is unreadable ({str(e)[:200]}); write it again with "
                               f"effnet distill-cache") from None
        if meta.get("format") != CACHE_FORMAT or "logits" not in tensors:
            raise DistillError(f"{self.path} is not an effnet teacher logit cache (no {CACHE_FORMAT} metadata); write "
                               f"one with effnet distill-cache")
        self.logits = tensors["logits"].float()
        files, sizes = meta.get("files", []), meta.get("sizes", [])
        if self.logits.ndim != 2 or len(files) != self.logits.shape[0] or len(sizes) != len(files):
            raise DistillError(f"teacher logit cache {self.path} is inconsistent ({len(files)} files, logits "
                               f"{tuple(self.logits.shape)}); write it again with effnet distill-cache")
        if not torch.isfinite(self.logits).all():
            raise DistillError(f"teacher logit cache {self.path} holds NaN or infinite logits; write it again")
        self.teacher, self.fingerprint = str(meta.get("teacher")), str(meta.get("fingerprint"))
        self.classes = [str(c) for c in meta.get("classes", [])]
        self.lookup = {f: (i, int(s)) for i, (f, s) in enumerate(zip(files, sizes))}

    def for_dataset(self, dataset: Any, root: Path, classes: Sequence[str]) -> torch.Tensor:
        """The cached logits of each item of a training dataset, in its order: (N, K).

        Raises:
            DistillError: other classes than the data's; a training photo that is not in the
                cache or changed size since (the message counts them and names the first).
        """
        if list(classes) != self.classes:
            raise DistillError(f"teacher logit cache {self.path} was made for classes {self.classes}, the data has "
                               f"{list(classes)}; write it again for this data with effnet distill-cache")
        rows, missing, changed = [], [], []
        for path, _ in dataset_samples(dataset):
            rel = str(Path(path).relative_to(root))
            hit = self.lookup.get(rel)
            if hit is None:
                missing.append(rel)
                rows.append(0)
                continue
            if Path(path).stat().st_size != hit[1]:
                changed.append(rel)
            rows.append(hit[0])
        if missing or changed:
            what = (f"{len(missing)} training photo(s) are not in it (first: {missing[0]})" if missing
                    else f"{len(changed)} training photo(s) changed since it was written (first: {changed[0]})")
            raise DistillError(f"teacher logit cache {self.path}: {what}; write it again for this data with "
                               f"effnet distill-cache")
        return self.logits[torch.tensor(rows, dtype=torch.long)]


# ---- Noisy Student: pseudo-labels ----------------------------------------------------------------

def _unlabeled_files(folder: Path) -> List[Path]:
    from ..data import IMAGE_EXTENSIONS, list_images

    if not folder.is_dir():
        raise DistillError(f"unlabeled folder not found: {folder}")
    files = [f for f in list_images(folder) if f.is_file()]
    if not files:
        raise DistillError(f"unlabeled folder {folder} holds no images (looked for "
                           f"{', '.join(IMAGE_EXTENSIONS)}, recursively); put the unlabeled photos there")
    return files


def _balance(label: torch.Tensor, confidence: torch.Tensor, k: int) -> Tuple[List[int], List[int]]:
    """Rows (into the kept photos) and their copy number, each class duplicated up to the
    largest class's count, most confident photos first (Xie et al. 2020 Sec. 3)."""
    by_class = [sorted((i for i in range(len(label)) if label[i] == c), key=lambda i: -float(confidence[i]))
                for c in range(k)]
    target = max((len(rows) for rows in by_class), default=0)
    rows: List[int] = []
    copies: List[int] = []
    for members in by_class:
        rows += members
        copies += [0] * len(members)
        for j in range(target - len(members) if members else 0):
            rows.append(members[j % len(members)])
            copies.append(1 + j // len(members))
    return rows, copies


def pseudo_label(teacher: Any, unlabeled: Union[str, Path], out: Union[str, Path], classes: Optional[Sequence[str]] = None,
                 teacher_weights: Optional[str] = None, class_map: Any = None, temperature: float = 1.0,
                 threshold: float = 0.0, balance: bool = True, batch_size: int = 32, workers: int = 2,
                 device: Union[str, torch.device] = "cpu", progress: bool = True) -> Dict[str, Any]:
    """Label a folder of unlabeled photos with a teacher (Noisy Student, Xie et al. 2020).

    The teacher is not noised: eval mode, its own eval preprocessing. Soft labels are
    ``softmax(logits / temperature)`` (the paper's soft pseudo-labels at T=1); photos whose
    top probability is below ``threshold`` are dropped (the paper keeps confidence > 0.3 on
    ImageNet); with ``balance`` each class is filled up to the largest one by duplicating
    its most confident photos (the paper's per-class balancing).

    Args:
        teacher, teacher_weights: as :func:`load_teacher`.
        unlabeled: a folder of photos, searched recursively.
        out: Parquet file; one row per kept photo and per duplicate: ``path`` (absolute),
            ``label`` (int, argmax), ``confidence`` (float), ``probs`` (list of float, the
            classes' order) and ``copy`` (0 for the photo itself, n for its n-th
            duplicate). Its schema metadata ``effnet`` holds the teacher's name and
            fingerprint, the classes, temperature, threshold and counts.
        classes: the student's classes (default: the teacher's); with ``class_map`` when
            they differ from the teacher's.

    Returns:
        ``{"images", "kept", "rows", "skipped", "per_class", "teacher", "fingerprint"}``.

    Raises:
        DistillError: no images in ``unlabeled``, none readable, a bad teacher or map, a
            threshold outside [0, 1) or temperature <= 0.
        OSError: the file could not be written (the previous one is kept).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._io import atomic_write

    if not (0 <= threshold < 1):
        raise DistillError(f"threshold must be in [0, 1), got {threshold}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise DistillError(f"temperature must be > 0, got {temperature}")
    files = _unlabeled_files(Path(unlabeled))
    model, name, index, classes = load_teacher_for(teacher, teacher_weights, classes, class_map)
    logits, kept, skipped = _teacher_outputs(model, files, index, batch_size, workers, device, progress,
                                             "pseudo-labels")
    for reason in skipped:
        warnings.warn(f"not labeled (unreadable): {reason}")
    if not kept:
        raise DistillError(f"none of the {len(files)} photos in {unlabeled} could be read; nothing written")
    probs = F.softmax(logits / float(temperature), dim=1)
    confidence, label = probs.max(1)
    keep = [j for j in range(len(kept)) if float(confidence[j]) >= threshold]
    probs, confidence, label = probs[keep], confidence[keep], label[keep]
    paths = [str(files[kept[j]].resolve()) for j in keep]
    rows, copies = _balance(label, confidence, len(classes)) if balance else (list(range(len(keep))), [0] * len(keep))
    per_class = {c: int((label == i).sum()) for i, c in enumerate(classes)}
    if balance and any(n == 0 for n in per_class.values()):
        warnings.warn(f"no photo was labeled as {[c for c, n in per_class.items() if n == 0]}: those classes cannot be "
                      f"balanced by duplication")
    fingerprint = teacher_fingerprint(model)
    meta = dict(format=LABELS_FORMAT, version=1, teacher=name, fingerprint=fingerprint, classes=classes,
                temperature=float(temperature), threshold=float(threshold), balance=bool(balance),
                images=len(files), kept=len(keep), skipped=len(skipped), per_class=per_class)
    table = pa.table({
        "path": pa.array([paths[r] for r in rows], pa.string()),
        "label": pa.array([int(label[r]) for r in rows], pa.int32()),
        "confidence": pa.array([float(confidence[r]) for r in rows], pa.float32()),
        "probs": pa.array([probs[r].tolist() for r in rows], pa.list_(pa.float32())),
        "copy": pa.array(copies, pa.int32()),
    }).replace_schema_metadata({"effnet": json.dumps(meta)})
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    return dict(images=len(files), kept=len(keep), rows=len(rows), skipped=len(skipped), per_class=per_class,
                teacher=name, fingerprint=fingerprint)


class PseudoLabels:
    """A pseudo-label file read back and checked (size capped before reading, every column
    and value validated).

    Attributes: ``paths`` (list of str), ``probs`` float32 (M, K), ``teacher``,
    ``fingerprint``, ``classes``, ``sha256`` (of the file, for resuming).

    Raises:
        DistillError: missing, oversized or unreadable file; not an effnet pseudo-label file;
            probabilities that are not finite, negative, or do not sum to 1.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        _capped_size(self.path, "pseudo-label file")
        try:
            table = pq.read_table(self.path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DistillError(f"pseudo-label file {self.path} is not readable Parquet ({str(e)[:200]}); make it "
                               f"with effnet pseudo-label") from None
        raw = (table.schema.metadata or {}).get(b"effnet")
        try:
            meta = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            meta = {}
        if meta.get("format") != LABELS_FORMAT or not {"path", "probs"} <= set(table.column_names):
            raise DistillError(f"{self.path} is not an effnet pseudo-label file (no {LABELS_FORMAT} metadata or no "
                               f"path/probs columns); make it with effnet pseudo-label")
        self.teacher, self.fingerprint = str(meta.get("teacher")), str(meta.get("fingerprint"))
        self.classes = [str(c) for c in meta.get("classes", [])]
        self.paths = [str(p) for p in table.column("path").to_pylist()]
        probs = table.column("probs").to_pylist()
        if not self.paths:
            raise DistillError(f"pseudo-label file {self.path} has no rows (every photo was below the threshold?); "
                               f"lower --threshold")
        if any(p is None or len(p) != len(self.classes) for p in probs):
            raise DistillError(f"pseudo-label file {self.path}: a row's probs do not have one value per class "
                               f"({len(self.classes)}); make it again with effnet pseudo-label")
        self.probs = torch.tensor(probs, dtype=torch.float32)
        if (not torch.isfinite(self.probs).all() or (self.probs < 0).any()
                or not torch.allclose(self.probs.sum(1), torch.ones(len(self.probs)), atol=1e-3)):
            raise DistillError(f"pseudo-label file {self.path}: probabilities must be finite, >= 0 and sum to 1 "
                               f"per row; make it again with effnet pseudo-label")
        self.sha256 = _sha256_file(self.path)

    def check(self, classes: Sequence[str], fingerprint: Optional[str] = None, teacher_name: str = "") -> None:
        """Refuse labels over other classes than the data's, or made by another teacher than
        the one with weights ``fingerprint`` (:func:`teacher_fingerprint`) when given.

        Raises:
            DistillError: naming both class lists, or both teachers with their fingerprints.
        """
        if list(classes) != self.classes:
            raise DistillError(f"pseudo-label file {self.path} labels classes {self.classes}, the data has "
                               f"{list(classes)}; label with the data's classes (effnet pseudo-label --data DATA, "
                               f"with --class-map when the teacher's differ)")
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise DistillError(f"pseudo-label file {self.path} was made by teacher {self.teacher} (weights "
                               f"{self.fingerprint}), not by {teacher_name} (weights {fingerprint}) as --teacher "
                               f"says; label again with that teacher, or give the teacher that made it")
