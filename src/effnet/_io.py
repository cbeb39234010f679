"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is then
    renamed over ``path``. If ``write`` raises, the temporary file is removed and ``path`` is
    left as it was (absent, or its previous complete content).

    Args:
        path: the destination file; its folder must exist.
        write: called with the temporary file's path (str).
        suffix: the temporary file's suffix (for writers that look at it).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
