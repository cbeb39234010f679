"""Batch inference over folders, globs or file lists of any size: Ray Data, or in-process without Ray.

:func:`predict_batch` classifies every image and writes Parquet, one row per image:

==============  ================  ======================================================
column          type              meaning
==============  ================  ======================================================
path            string            the file as listed, made absolute (symlinks kept)
top_indices     list<int32>       the top-k class indices, most probable first
top_labels      list<string>      their class names
top_probs       list<float32>     their softmax probabilities
error           string (null)     why the image could not be classified (then the lists
                                  are empty): not found, over the size cap, not decodable
==============  ================  ======================================================

``out`` is a Parquet dataset folder (``results.parquet/part-*.parquet``, what Ray, Spark and
pandas write and read: ``pandas.read_parquet("results.parquet")``). Each part is written
atomically as results stream in, so a run stopped at any point keeps what it wrote, and a
run with the same ``out`` skips every path already in it (errors included: they are
results). Each part records the model, weights and top-k it was written with (Parquet
schema metadata, ``effnet.*`` keys): a run with another model or top-k into the same
``out`` is refused, naming the difference. The engine is not part of that: engines compute
the same function, so a run may resume on a faster one.

With Ray (``pip install 'effnet[batch]'``): a dataset of paths (``ray.data.from_items``) and
``map_batches`` over a pool of actors, each of which builds the model and its engine once and
reads, decodes and classifies its batches (:class:`_Predictor`), on a local Ray instance or
the cluster at ``address``; files must be readable at the same path on every node. (With
``read_binary_files`` the read tasks need CPUs of their own: 2 actors of 1 CPU on a 2-CPU
machine left them none and the run hung.) Without Ray: a
DataLoader's workers read and decode, the engine runs in this process. Both paths decode with
:func:`effnet.data.decode_image` on the file's bytes and run the same engine, so they write
the same rows (probabilities equal up to float rounding between batch compositions).
"""

from __future__ import annotations

import glob
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from .. import _ray
from .._io import atomic_write
from .._validate import check_float, check_int
from ..data import IMAGE_EXTENSIONS, ImageDecodeError, decode_transformed, list_images

__all__ = ["ModelSpec", "predict_batch", "list_sources", "read_results", "summarize", "MAX_FILE_MB"]

MAX_FILE_MB = 64.0
"""Default cap on one image file, MiB: a larger file gets an error row; no more than the cap (+1 byte) of it is read."""


def _schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("top_indices", pa.list_(pa.int32())),
                      ("top_labels", pa.list_(pa.string())), ("top_probs", pa.list_(pa.float32())),
                      ("error", pa.string())])


@dataclass(frozen=True)
class ModelSpec:
    """What each worker builds: picklable, so a Ray actor on another machine can build it.

    Attributes:
        model: a registered name, or None with an effnet ``weights`` folder.
        weights: a weight file or effnet folder, or None.
        pretrained: the registered weights (True or a tag), or None.
        engine: a :data:`effnet.deploy.ENGINES` name (not the INT8 ones: they need calibration).
        threads: torch / engine threads per worker (None: torch's default).
    """

    model: Optional[str] = None
    weights: Optional[str] = None
    pretrained: Union[bool, str, None] = None
    engine: str = "eager"
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        """Checked here in the driver, not first in each actor.

        Raises:
            ModelChoiceError: as :func:`effnet.registry.check_model_choice`.
        """
        from ..registry import check_model_choice

        check_model_choice(self.model, self.weights, self.pretrained)

    def build(self):
        """The :class:`~effnet.serve.classifier.Classifier` this spec names (:func:`effnet.registry.load_model`).

        Raises:
            ValueError: an unknown model or engine, unreadable weights (as :func:`effnet.registry.load_model`).
        """
        from ..registry import load_model
        from .classifier import Classifier

        if self.threads:
            torch.set_num_threads(self.threads)
        return Classifier(load_model(self.model, self.weights, self.pretrained), self.engine, name=self.model)


def _absolute(path: Union[str, os.PathLike]) -> str:
    """``path`` made absolute and normalised, symlinks kept: rows carry the names the user listed."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def list_sources(source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    """The image files a SOURCE names, absolute (symlinks kept, not resolved), sorted, without duplicates.

    Args:
        source: a folder (searched recursively for :data:`effnet.data.IMAGE_EXTENSIONS`), a
            glob (``photos/**/*.jpg``, recursive), a text file listing one path per line (``.txt``
            or ``.lst``; blank lines and ``#`` comments skipped; relative paths are relative to
            the list's folder), an image file, or a sequence of any of these.

    Raises:
        FileNotFoundError: a folder, list or file that does not exist, a folder with no image,
            a list with no path, or a glob matching nothing.
    """
    if isinstance(source, (list, tuple)):
        return sorted({p for s in source for p in list_sources(s)})
    text = os.fspath(source)
    p = Path(text).expanduser()
    if any(c in text for c in "*?["):
        found = [f for f in glob.glob(text, recursive=True) if Path(f).is_file()]
        if not found:
            raise FileNotFoundError(f"the glob {text!r} matches no file")
        return sorted({_absolute(f) for f in found})
    if p.is_dir():
        files = sorted({_absolute(f) for f in list_images(p)})
        if not files:
            raise FileNotFoundError(f"the folder {text} holds no image (searched recursively for "
                                    f"{', '.join(IMAGE_EXTENSIONS)})")
        return files
    if p.is_file() and p.suffix.lower() in (".txt", ".lst"):
        files = set()
        with open(p, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line).expanduser()
                    files.add(_absolute(q if q.is_absolute() else p.parent / q))
        if not files:
            raise FileNotFoundError(f"the list {text} names no path (one path per line; blank lines and # comments "
                                    f"are skipped)")
        return sorted(files)
    if p.is_file():
        return [_absolute(p)]
    raise FileNotFoundError(f"{text} is not a folder, an image file, a .txt list of paths or a glob that matches; "
                            f"folders are searched for {', '.join(IMAGE_EXTENSIONS)}")


def read_results(out: Union[str, os.PathLike]):
    """Every row written so far in the Parquet folder ``out``, as a pyarrow Table sorted by path.

    Raises:
        ValueError: ``out`` exists but is not a folder of this schema's part files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in _parts(Path(out))]
    if not tables:
        return _schema().empty_table()
    table = pa.concat_tables(tables)
    return table.sort_by("path")


def _parts(out: Path) -> List[Path]:
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder name (e.g. results.parquet): batch inference writes "
                         f"a Parquet dataset folder of part files so that a stopped run can resume")
    return sorted(out.glob("part-*.parquet"))


def _identity(spec: "ModelSpec", topk: int) -> dict:
    """What a run's rows depend on, as Parquet schema metadata (str -> str)."""
    weights = _absolute(spec.weights) if spec.weights else None
    return {"effnet.model": str(spec.model), "effnet.weights": str(weights),
            "effnet.pretrained": str(spec.pretrained), "effnet.topk": str(topk)}


def _done(out: Path, identity: dict) -> set:
    """The paths already in ``out``'s parts.

    Raises:
        ValueError: a part was written with another model, weights or top-k (parts of
            effnet versions before these keys are not checked).
    """
    import pyarrow.parquet as pq

    done = set()
    for f in _parts(out):
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(f).metadata or {}).items()
                if k.startswith(b"effnet.")}
        differ = [f"{k[len('effnet.'):]} {meta[k]} there, {v} here" for k, v in identity.items()
                  if k in meta and meta[k] != v]
        if differ:
            raise ValueError(f"--out {out} holds results of another run ({'; '.join(differ)}): give another --out, "
                             f"or remove it to start over")
        done.update(pq.read_table(f, columns=["path"]).column("path").to_pylist())
    return done


def _rows(classifier, paths: Sequence[str], images: Sequence, errors: Sequence[Optional[str]], topk: int) -> dict:
    """One batch's output columns; ``images[i]`` is a (3, H, W) tensor where ``errors[i]`` is None."""
    ok = [i for i, e in enumerate(errors) if e is None]
    probs = classifier(torch.stack([images[i] for i in ok])) if ok else np.zeros((0, len(classifier.names)))
    k = min(topk, len(classifier.names))
    cols = {"path": list(paths), "top_indices": [[] for _ in paths], "top_labels": [[] for _ in paths],
            "top_probs": [[] for _ in paths], "error": list(errors)}
    for i, row in zip(ok, probs):
        top = classifier.topk(row, k)
        cols["top_indices"][i] = [t["class_index"] for t in top]
        cols["top_labels"][i] = [t["label"] for t in top]
        cols["top_probs"][i] = [t["probability"] for t in top]
    return cols


def _table(cols: dict):
    import pyarrow as pa

    return pa.Table.from_pydict(cols, schema=_schema())


def _read_and_decode(transform, path: str, cap: int):
    """(tensor, None) or (None, error message) for one file: read at most ``cap + 1`` bytes, decode.

    The one place both runners read a file: the cap holds at the read itself (a file that
    grew after listing is still refused), and a file that vanished or cannot be read is an
    error row like an undecodable one.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
            if len(data) > cap:
                return None, (f"cannot decode image {path}: the file has {os.fstat(f.fileno()).st_size:,} bytes, "
                              f"over the cap of {cap:,} (--max-file-mb); raise the cap or downscale it")
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    try:
        return decode_transformed(data, transform, path), None
    except ImageDecodeError as e:
        return None, str(e)


class _Predictor:
    """A Ray Data actor: builds the model once, then maps batches of ``{path}`` to output rows.

    The actor reads each file itself (at most the cap, :func:`_read_and_decode`): no separate
    read tasks compete with the actors for the CPUs Ray hands out, and the size cap holds at
    the read, not only at listing time.
    """

    def __init__(self, spec: ModelSpec, topk: int, cap: int) -> None:
        self.classifier, self.topk, self.cap = spec.build(), topk, cap

    def __call__(self, batch: dict):
        paths = [str(p) for p in batch["path"]]
        decoded = [_read_and_decode(self.classifier.transform, p, self.cap) for p in paths]
        return _table(_rows(self.classifier, paths, [d[0] for d in decoded], [d[1] for d in decoded], self.topk))


class _Files(torch.utils.data.Dataset):
    """In-process path: item ``i`` is (path, tensor or None, error or None), read and decoded in a worker."""

    def __init__(self, paths: Sequence[str], transform, max_bytes: int) -> None:
        self.paths, self.transform, self.max_bytes = list(paths), transform, max_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        x, err = _read_and_decode(self.transform, path, self.max_bytes)
        return path, x, err


def _collate(items):
    return items


class _Writer:
    """Writes part files atomically into ``out`` and reports progress (tqdm: count and images/s)."""

    def __init__(self, out: Path, total: int, progress: bool, identity: dict) -> None:
        from tqdm import tqdm

        self.out, self.run = out, f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.identity = {k.encode(): v.encode() for k, v in identity.items()}
        self.n = self.images = self.errors = 0
        self.bar = tqdm(total=total, unit="img", disable=not progress, desc="predict-batch", dynamic_ncols=True)

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return
        table = table.cast(_schema()).replace_schema_metadata(self.identity)
        self.out.mkdir(parents=True, exist_ok=True)          # on the first rows: a failed start leaves nothing
        path = self.out / f"part-{self.run}-{self.n:05d}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
        self.n += 1
        errors = table.num_rows - table.column("error").null_count
        self.images += table.num_rows
        self.errors += errors
        self.bar.update(table.num_rows)
        self.bar.set_postfix(errors=self.errors)

    def close(self) -> None:
        self.bar.close()


def predict_batch(source, out: Union[str, os.PathLike], spec: ModelSpec, topk: int = 5, batch_size: int = 32,
                  runner: str = "auto", address: Optional[str] = None, actors: int = 1, cpus_per_actor: float = 1.0,
                  gpus_per_actor: float = 0.0, workers: int = 2, chunk: int = 1024,
                  max_file_mb: float = MAX_FILE_MB, progress: bool = True) -> dict:
    """Classify every image SOURCE names and write the Parquet folder ``out`` (module docstring).

    Args:
        source: what :func:`list_sources` takes (folder, glob, .txt list, file, or a sequence).
        out: the Parquet dataset folder; paths already in it are skipped.
        spec: the model and engine each worker builds (:class:`ModelSpec`).
        topk: classes per row.
        batch_size: images per engine call.
        runner: ``ray`` (Ray Data), ``local`` (in-process DataLoader) or ``auto`` (``ray`` when
            installed).
        address: a Ray cluster (``ray://host:10001`` or ``auto``); None starts a local instance.
        actors, cpus_per_actor, gpus_per_actor: the Ray actor pool (each actor builds the model once).
        workers: DataLoader worker processes of the in-process path.
        chunk: rows per part file.
        max_file_mb: files larger than this (MiB) get an error row; at most this much of one is read.
        progress: a tqdm bar on stderr (count, images/s, errors).

    Returns:
        ``{"images", "errors", "skipped" (already in out), "seconds", "images_per_s", "runner", "out"}``
        for this run.

    Raises:
        FileNotFoundError: SOURCE names nothing (:func:`list_sources`).
        ValueError: bad arguments; ``out`` is a file or holds another model's or top-k's
            results; ``runner="ray"`` without Ray installed; ``address`` without the Ray runner.
        TypeError: a count or size of the wrong type.
    """
    for name, value in (("topk", topk), ("batch_size", batch_size), ("actors", actors), ("chunk", chunk)):
        check_int(name, value, minimum=1)
    cap = int(check_float("max_file_mb", max_file_mb, low=0, low_open=True) * (1 << 20))
    runner = _ray.resolve_runner(runner, "ray.data", "Ray Data", "batch")
    if address is not None and runner != "ray":
        raise ValueError(f"--address {address} names a Ray cluster, but the runner is {runner!r}: use --runner ray "
                         f"(pip install 'effnet[batch]'), or drop --address")
    out = Path(out)
    files = list_sources(source)
    identity = _identity(spec, topk)
    done = _done(out, identity)
    todo = [f for f in files if f not in done]
    writer = _Writer(out, len(todo), progress, identity)
    t0 = time.perf_counter()
    try:
        if todo:
            run = _run_ray if runner == "ray" else _run_local
            run(todo, writer, spec, topk, batch_size, chunk, address=address, actors=actors,
                cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, workers=workers, cap=cap)
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    return {"images": writer.images, "errors": writer.errors, "skipped": len(files) - len(todo),
            "seconds": round(seconds, 3), "images_per_s": round(writer.images / seconds, 2) if writer.images else 0.0,
            "runner": runner, "out": str(out)}


def _run_local(paths: List[str], writer: _Writer, spec: ModelSpec, topk: int, batch_size: int, chunk: int,
               workers: int, cap: int, **_) -> None:
    if not paths:
        return
    classifier = spec.build()
    loader = torch.utils.data.DataLoader(_Files(paths, classifier.transform, cap), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate, persistent_workers=False)
    pending: List = []
    for items in loader:
        cols = _rows(classifier, [p for p, _, _ in items], [x for _, x, _ in items], [e for _, _, e in items], topk)
        pending.append(_table(cols))
        if sum(t.num_rows for t in pending) >= chunk:
            _flush(writer, pending)
    _flush(writer, pending)


def _flush(writer: _Writer, pending: list) -> None:
    import pyarrow as pa

    if pending:
        writer.write(pa.concat_tables(pending))
        pending.clear()


def _run_ray(paths: List[str], writer: _Writer, spec: ModelSpec, topk: int, batch_size: int, chunk: int,
             address: Optional[str], actors: int, cpus_per_actor: float, gpus_per_actor: float, cap: int,
             **_) -> None:
    if not paths:
        return
    import ray

    with _ray.session(address):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"path": p} for p in paths])
        ds = ds.map_batches(_Predictor, fn_constructor_kwargs={"spec": spec, "topk": topk, "cap": cap},
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                            num_gpus=gpus_per_actor)
        for table in ds.iter_batches(batch_size=chunk, batch_format="pyarrow"):
            writer.write(table)


def summarize(out: Union[str, os.PathLike], labels: Optional[Iterable] = None) -> dict:
    """Counts over the Parquet folder ``out``: rows, errors, and top-1 against ``labels``.

    Args:
        labels: ``{path: class_index}`` for the rows to score (absolute paths), or None.

    Returns:
        ``{"rows", "errors", "scored", "top1"}`` (top-1 in percent over labelled rows without errors).
    """
    table = read_results(out).to_pydict()
    rows = len(table["path"])
    errors = sum(e is not None for e in table["error"])
    scored = correct = 0
    if labels is not None:
        labels = dict(labels)
        for p, idx, e in zip(table["path"], table["top_indices"], table["error"]):
            if e is None and p in labels:
                scored += 1
                correct += int(idx[0] == labels[p])
    return {"rows": rows, "errors": errors, "scored": scored, "top1": 100.0 * correct / scored if scored else None}
