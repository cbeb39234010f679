"""Reading weight files, with the format told from the content, never the file name.

Supported: safetensors, torch pickles (zip and legacy, always ``weights_only=True``: a
weight file can never run code), TensorFlow Lite flatbuffers, and ``.tar.gz`` archives
holding a ``.tflite`` file (the official EfficientNet-Lite releases).

Every reader checks sizes against the file before trusting them, so a cut or hostile
file fails with a message that names it instead of exhausting memory:

* a safetensors header length must fit in the file and its tensors' data offsets must
  end inside it (else "truncated");
* a TFLite flatbuffer's tables and buffers must lie inside the file (else "truncated");
* an archive member is read only if its size *declared in the tar header* is at most
  :data:`MAX_ARCHIVE_MEMBER_BYTES`, and then with a bounded read, so a small ``.tar.gz``
  that expands to gigabytes is refused before anything is decompressed into memory.

A file inside the download cache (:func:`effnet.weights.hub.cache_dir`) that fails to
read is removed from it, and the message says so: the next fetch downloads it again.
"""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

__all__ = ["WeightFileError", "read_weight_file", "check_weight_file", "unwrap_state_dict", "read_json",
           "MAX_ARCHIVE_MEMBER_BYTES", "MAX_SAFETENSORS_HEADER_BYTES"]

# The largest .tflite member of the official EfficientNet-Lite archives is
# efficientnet-lite4-fp32.tflite, about 52 MB (13.0 M float32 parameters, tensorflow/tpu
# models/official/efficientnet/lite/README.md). A member is read into memory whole, so its
# declared size is capped: 128 MiB, about 2.5 times that, refuses archive bombs and leaves
# room for fine-tuned Lite4 graphs with larger heads.
MAX_ARCHIVE_MEMBER_BYTES = 128 * 1024 * 1024
# The safetensors library refuses headers over 100 MB (safetensors/src/tensor.rs
# MAX_HEADER_SIZE); a B7 header is about 60 kB.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000


class WeightFileError(ValueError):
    """A weight file is empty, corrupt, truncated or of an unknown format."""


def _truncated(path: Any, detail: str) -> WeightFileError:
    return WeightFileError(f"{path} is truncated: {detail}; the download or copy was cut short, fetch it again")


def _check_safetensors(path: Path, head: bytes, size: int) -> None:
    """Header length and tensor offsets against the file size (before safetensors reads it)."""
    n = struct.unpack("<Q", head[:8])[0]
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise WeightFileError(f"{path}: safetensors header length {n} bytes exceeds the "
                              f"{MAX_SAFETENSORS_HEADER_BYTES}-byte limit; the file is corrupt")
    if n > size - 8:
        raise _truncated(path, f"its safetensors header claims {n} bytes but the file has {size} bytes in all")
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = int(info["data_offsets"][1])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise WeightFileError(f"{path}: safetensors entry {key!r} has no valid data_offsets; "
                                  f"the file is corrupt") from e
        if end > data:
            raise _truncated(path, f"tensor {key!r} ends at data byte {end} but the file holds {data} data bytes")


def _check_tflite(buf: bytes, path: Any) -> None:
    """Every table, vector and buffer the loader reads lies inside ``buf``.

    Raises:
        WeightFileError: "truncated" when data points past the end, else "corrupt".
    """
    import tflite

    n = len(buf)
    if n < 8 or struct.unpack_from("<I", buf, 0)[0] + 4 > n:
        raise _truncated(path, f"the TFLite root table lies past the end of the file ({n} bytes)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        nbuf = model.BuffersLength()
        for i in range(nbuf):
            b = model.Buffers(i)
            o = b._tab.Offset(4)
            if o:
                end = b._tab.Vector(o) + b._tab.VectorLen(o)
                if end > n:
                    raise _truncated(path, f"TFLite buffer {i} ends at byte {end} past the end of the file ({n} bytes)")
            off, length = b.Offset(), b.Size()
            if off > 1 and off + length > n:        # buffers stored after the flatbuffer (models over 2 GB)
                raise _truncated(path, f"TFLite buffer {i} ends at byte {off + length} past the end of the file "
                                       f"({n} bytes)")
        for s in range(model.SubgraphsLength()):
            g = model.Subgraphs(s)
            for t in range(g.TensorsLength()):
                tensor = g.Tensors(t)
                tensor.ShapeAsNumpy()
                tensor.Name()
                if tensor.Buffer() >= nbuf:
                    raise WeightFileError(f"{path}: TFLite tensor {t} names buffer {tensor.Buffer()} of {nbuf}; "
                                          f"the file is corrupt")
            for k in range(g.OperatorsLength()):
                op = g.Operators(k)
                op.InputsAsNumpy()
                op.OutputsAsNumpy()
                if op.OpcodeIndex() >= model.OperatorCodesLength():
                    raise WeightFileError(f"{path}: TFLite operator {k} has no operator code; the file is corrupt")
    except WeightFileError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, AttributeError) as e:
        raise _truncated(path, f"the TFLite flatbuffer ({n} bytes) points past its end or is corrupt "
                               f"({type(e).__name__}: {e})") from e


def _read_tflite_from_tar(path: Path) -> bytes:
    """The float (else the first) ``.tflite`` member of a ``.tar.gz``, read with a bounded read.

    Member sizes are taken from the tar headers and checked against
    :data:`MAX_ARCHIVE_MEMBER_BYTES` as each header is seen, before any member data is
    decompressed. Other members are skipped (streamed past, never held in memory).
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            members, names = [], []
            for m in tar:                            # one header at a time, sizes checked as they come
                names.append(m.name)
                if m.isfile() and m.name.endswith(".tflite"):
                    if m.size > MAX_ARCHIVE_MEMBER_BYTES:
                        raise WeightFileError(
                            f"{path}: archive member {m.name} declares {m.size} bytes, over the "
                            f"{MAX_ARCHIVE_MEMBER_BYTES}-byte cap (the largest official EfficientNet-Lite "
                            f"graph is about 52 MB); refused without reading it")
                    members.append(m)
            if not members:
                raise WeightFileError(f"{path}: the archive holds no .tflite file (members: {names[:10]})")
            # Prefer the float model of an official Lite archive, which is exact.
            members.sort(key=lambda m: ("fp32" not in m.name, m.name))
            member = members[0]
            f = tar.extractfile(member)
            data = f.read(min(member.size, MAX_ARCHIVE_MEMBER_BYTES) + 1) if f is not None else b""
    except WeightFileError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        msg = str(e)
        if isinstance(e, EOFError) or "unexpected end" in msg or "Compressed file ended" in msg:
            raise _truncated(path, f"the .tar.gz archive ends early ({type(e).__name__}: {e})") from e
        raise WeightFileError(f"{path}: corrupt .tar.gz archive: {e}") from e
    if len(data) != member.size:
        raise _truncated(path, f"archive member {member.name} declares {member.size} bytes but {len(data)} were read")
    _check_tflite(data, f"{path} (member {member.name})")
    return data


def _is_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<?xml", b"<body"))


def _in_cache(path: Path) -> bool:
    from .hub import cache_dir

    try:
        return path.resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        return False


def read_weight_file(path: Path) -> Tuple[str, Any]:
    """Read a weight file and say what it is.

    Returns:
        ``("state_dict", dict[str, Tensor])`` for safetensors and torch pickles, or
        ``("tflite", bytes)`` for a TFLite flatbuffer (from a file or a .tar.gz archive).

    Raises:
        FileNotFoundError: no such file.
        WeightFileError: empty, truncated (the message says "truncated") or corrupt file,
            an HTML page, a pickle holding no tensors, an archive member over
            :data:`MAX_ARCHIVE_MEMBER_BYTES`, or an unrecognised format; the message names
            the file. A file in the download cache that fails is removed from it first.
    """
    path = Path(path)
    try:
        return _read_weight_file(path)
    except WeightFileError as e:
        if _in_cache(path) and path.is_file() and not path.name.endswith(".part"):
            path.unlink(missing_ok=True)
            raise WeightFileError(f"{e} [removed {path} from the effnet cache; the next fetch downloads it again]"
                                  ) from e
        raise


def _read_weight_file(path: Path) -> Tuple[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path} is empty (0 bytes); the download or copy failed, fetch it again")
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        if head[4:8] == b"TFL3":
            buf = path.read_bytes()
            _check_tflite(buf, path)
            return "tflite", buf
        if head[:2] == b"\x1f\x8b":
            return "tflite", _read_tflite_from_tar(path)
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            return "state_dict", unwrap_state_dict(obj, path)
        if len(head) >= 9 and head[8:9] == b"{":
            _check_safetensors(path, head, size)
            from safetensors.torch import load_file
            return "state_dict", load_file(str(path))
        if head[:4] == b"\x89HDF":
            raise WeightFileError(f"{path} is an HDF5 (Keras) file; Keras weights are not supported yet, "
                                  f"convert them to a timm or EfficientNet-PyTorch checkpoint")
        if _is_html(head):
            raise WeightFileError(f"{path} ({size} bytes) is an HTML page, not a weight file (an error or "
                                  f"login page saved in place of the download); fetch it again")
    except WeightFileError:
        raise
    except Exception as e:  # torch.load / safetensors raise many types on corrupt input
        raise WeightFileError(f"{path} ({size} bytes) could not be read: {type(e).__name__}: {e}. "
                              f"The file is truncated or corrupt; fetch it again") from e
    raise WeightFileError(f"{path} ({size} bytes) is not a recognised weight file (first bytes {head[:8]!r}); "
                          f"expected safetensors, a torch checkpoint (.pth/.pt), TFLite or a .tar.gz of TFLite")


def check_weight_file(path: Path) -> None:
    """Raise unless ``path`` is a complete, readable weight file of a known format.

    The check the download cache applies before a file without a published hash enters
    it: the file is read whole (:func:`read_weight_file`) and the result discarded.

    Raises:
        WeightFileError: as :func:`read_weight_file`.
    """
    _read_weight_file(Path(path))


def unwrap_state_dict(obj: Any, path: Any = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: plain, or under ``state_dict``/``model``/``model_state``/``state_dict_ema``.

    A ``module.`` prefix (DistributedDataParallel) is stripped.

    Raises:
        WeightFileError: no tensor dict found.
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, dict) else []
        raise WeightFileError(f"{path} holds no state dict of tensors (found {kind} {keys})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_json(path: Path) -> dict:
    """A JSON file as a dict, with a clear error on bad JSON.

    Raises:
        WeightFileError: unreadable file, invalid JSON, or JSON that is not an object.
    """
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj
