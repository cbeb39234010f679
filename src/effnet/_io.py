"""File writing that never leaves a half-written file behind.

Every file effnet writes (checkpoints, effnet folders, ONNX, TorchScript, metrics, plots)
goes through :func:`atomic_write`: the content is serialised to memory (or by a writer
function into a temporary file beside the target), then renamed over the target with
``os.replace``, so a crash, a kill or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

__all__ = ["atomic_write", "make_parent", "file_in_path", "WriteError", "clean_stale_temporaries", "TMP_MARK", "current_umask",
           "explain_write_error"]

# Every temporary file atomic_write makes has this in its name, so that leftovers of a killed
# process can be recognised (and removed) without touching anything else in the folder.
TMP_MARK = ".effnet-tmp"

# The outputs effnet 0.1's atomic writer named ``.<name>.<random>.tmp`` while writing them.
LEGACY_OUTPUTS = ("last.pt", "metrics.csv", "model.safetensors", "config.json")

_umask_lock = threading.Lock()


class WriteError(OSError):
    """A file could not be written (no space left, read-only file system, bad folder...).

    An ``OSError`` with ``errno`` and ``filename`` set to the destination; the message names
    the destination, the cause and that the previous file (if any) is kept.
    """

    def __str__(self) -> str:          # the message alone, not "[Errno 28] ...: 'path'"
        return str(self.strerror)


def current_umask() -> int:
    """The process's umask (read by setting it and back, under a lock)."""
    with _umask_lock:          # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_in_path(folder: Union[str, os.PathLike]) -> Optional[Path]:
    """The nearest existing component of ``folder`` (itself or a parent) when it is not a
    folder, else None: a folder cannot be made (or written into) below a file."""
    folder = Path(folder)
    for p in [folder, *folder.parents]:
        if p.exists():
            return None if p.is_dir() else p
    return None


def _refuse_file_in_path(path: Path) -> None:
    blocker = file_in_path(path.parent)
    if blocker is not None:
        raise WriteError(errno.ENOTDIR, f"cannot write {path}: {blocker} is a file, not a folder; "
                                        f"choose another output path", str(path))


def _check_parent(path: Path) -> None:
    _refuse_file_in_path(path)
    parent = path.parent
    if not parent.is_dir():
        raise WriteError(errno.ENOENT, f"cannot write {path}: its folder {parent} does not exist; "
                                       f"create it first or choose another output path", str(path))


def make_parent(path: Union[str, os.PathLike]) -> Path:
    """Create the folder of output file ``path`` (and its parents) when missing.

    Raises:
        WriteError: a component of the folder path is a file, or the folder cannot be made.
    """
    path = Path(path)
    _refuse_file_in_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno or errno.EIO, f"cannot create the folder {path.parent} for {path}: "
                                               f"{e.strerror or e}", str(path)) from e
    return path


def explain_write_error(path: Path, e: BaseException) -> WriteError:
    """The :class:`WriteError` for a failed write of ``path`` (ENOSPC, EROFS, EACCES... named)."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code == errno.ENOSPC or "No space left" in text or "enforce fail" in text and "write" in text:
        return WriteError(errno.ENOSPC, f"no space left on device while writing {path}; the previous "
                                        f"file (if any) is kept. Free some space and run again", str(path))
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return WriteError(code, f"cannot write {path}: {os.strerror(code)}; the previous file (if any) is kept. "
                                f"Choose a writable output path", str(path))
    return WriteError(code or errno.EIO, f"cannot write {path}: {type(e).__name__}: {text}; "
                                         f"the previous file (if any) is kept", str(path))


def atomic_write(path: Union[str, os.PathLike], content: Union[bytes, Callable[[str], None]],
                 suffix: str = "") -> Path:
    """Create or replace ``path`` atomically.

    ``content`` is either the file's bytes, or a function ``write(tmp)`` that fills a
    temporary file beside ``path``. The temporary file is flushed to disk and renamed over
    ``path``; it gets the usual permissions under the user's umask (``0o666 & ~umask``, not
    the 0600 of ``tempfile``). If anything fails, the temporary file is removed and
    ``path`` is left as it was (absent, or its previous complete content).

    Args:
        path: the destination file; its folder must exist.
        content: bytes, or a writer function called with the temporary file's path (str).
            Serialise to bytes where the serialiser is a C++ writer that aborts on a full
            disk (``torch.save``, ``torch.jit.save``): Python's own writes raise ``OSError``.
        suffix: extension of the temporary file, for writers that look at it (``.onnx``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        WriteError (an ``OSError``): the folder is missing or is a file, the disk is full
            (``errno.ENOSPC``: "no space left on device while writing PATH"), the file
            system is read-only or not writable, or the writer failed with an I/O error;
            the message names the destination and says the previous file is kept.
        Any other exception of a writer function (e.g. a ``ValueError`` about the data)
            passes through unchanged, after the temporary file is removed.
    """
    path = Path(path)
    _check_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK + suffix)
    except OSError as e:
        raise explain_write_error(path, e) from e
    try:
        try:
            if isinstance(content, (bytes, bytearray, memoryview)):
                with os.fdopen(fd, "wb") as f:
                    fd = -1
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.close(fd)
                fd = -1
                content(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise explain_write_error(path, e) from e
        except Exception as e:          # C++/Rust writers (torch, safetensors) raise their own types
            text = str(e)
            if any(m in text for m in ("No space left", "os error 28", "I/O error", "Read-only file system")) or \
                    (isinstance(e, RuntimeError) and "write" in text.lower()):
                raise explain_write_error(path, e) from e
            raise
    finally:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
    return path


def clean_stale_temporaries(folder: Union[str, os.PathLike], min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporary files that a killed :func:`atomic_write` left in ``folder``.

    Only files named by :func:`atomic_write` (``.<name>.<random><TMP_MARK>...``) and the
    ``.<name>.<random>.tmp`` files that effnet 0.1 wrote for its own outputs
    (:data:`LEGACY_OUTPUTS`) are removed, never anything else.

    Args:
        folder: the folder to clean (not recursive); a missing folder is fine.
        min_age_s: only files last modified at least this many seconds ago (0: all).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for f in folder.iterdir():
        name = f.name
        legacy = name.endswith(".tmp") and any(name.startswith(f".{out}.") for out in LEGACY_OUTPUTS)
        ours = name.startswith(".") and (TMP_MARK in name or legacy)
        if not ours or not f.is_file():
            continue
        try:
            if now - f.stat().st_mtime >= min_age_s:
                f.unlink()
                removed.append(f)
        except FileNotFoundError:
            pass
    return removed
