"""Reading weight files, with the format told from the content, never the file name.

Supported: safetensors, torch pickles (zip and legacy, always ``weights_only=True``: a
weight file can never run code), TensorFlow Lite flatbuffers, and ``.tar.gz`` archives
holding a ``.tflite`` file (the official EfficientNet-Lite releases).
"""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

__all__ = ["WeightFileError", "read_weight_file", "unwrap_state_dict", "read_json"]


class WeightFileError(ValueError):
    """A weight file is empty, corrupt, truncated or of an unknown format."""


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _read_tflite_from_tar(path: Path) -> bytes:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".tflite")]
            if not members:
                raise WeightFileError(f"{path}: the archive holds no .tflite file "
                                      f"(members: {[m.name for m in tar.getmembers()][:10]})")
            # Prefer the float model of an official Lite archive, which is exact.
            members.sort(key=lambda m: ("fp32" not in m.name, m.name))
            return tar.extractfile(members[0]).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightFileError(f"{path}: corrupt or truncated .tar.gz archive: {e}") from e


def read_weight_file(path: Path) -> Tuple[str, Any]:
    """Read a weight file and say what it is.

    Returns:
        ``("state_dict", dict[str, Tensor])`` for safetensors and torch pickles, or
        ``("tflite", bytes)`` for a TFLite flatbuffer (from a file or a .tar.gz archive).

    Raises:
        FileNotFoundError: no such file.
        WeightFileError: empty, truncated or corrupt file, a pickle holding no tensors, or
            an unrecognised format (the message names the file and what was found).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path} is empty (0 bytes); the download or copy failed, fetch it again")
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        if head[4:8] == b"TFL3":
            return "tflite", path.read_bytes()
        if head[:2] == b"\x1f\x8b":
            return "tflite", _read_tflite_from_tar(path)
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            return "state_dict", unwrap_state_dict(obj, path)
        if _is_safetensors(head, size):
            from safetensors.torch import load_file
            return "state_dict", load_file(str(path))
        if head[:4] == b"\x89HDF":
            raise WeightFileError(f"{path} is an HDF5 (Keras) file; Keras weights are not supported yet, "
                                  f"convert them to a timm or EfficientNet-PyTorch checkpoint")
    except WeightFileError:
        raise
    except Exception as e:  # torch.load / safetensors raise many types on corrupt input
        raise WeightFileError(f"{path} ({size} bytes) could not be read: {type(e).__name__}: {e}. "
                              f"The file is truncated or corrupt; fetch it again") from e
    raise WeightFileError(f"{path} ({size} bytes) is not a recognised weight file (first bytes {head[:8]!r}); "
                          f"expected safetensors, a torch checkpoint (.pth/.pt), TFLite or a .tar.gz of TFLite")


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
    """A JSON file as a dict, with a clear error on bad JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: cannot read JSON: {e}") from e
