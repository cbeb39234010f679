"""Downloading weight files: cache, hash check, atomic writes, offline mode.

Files land in ``$EFFNET_HOME/weights`` (default ``~/.cache/effnet/weights``). A download
is written to a temporary file beside its final name, hashed while it streams, and only
renamed into place once complete and verified, so an interrupted or corrupt download never
leaves a file in the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from tqdm import tqdm

__all__ = ["DownloadError", "HashMismatchError", "cache_dir", "is_url", "fetch", "file_sha256",
           "hash_prefix_from_name"]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A weight file could not be obtained (network error, HTTP error, truncated, offline)."""


class HashMismatchError(DownloadError):
    """A downloaded or local file's sha256 does not match the published one."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$EFFNET_HOME/weights``, default ``~/.cache/effnet/weights``."""
    return Path(os.environ.get("EFFNET_HOME", "~/.cache/effnet")).expanduser() / "weights"


def is_url(source: str) -> bool:
    """True for http(s) and file URLs."""
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file")


def hash_prefix_from_name(name: str) -> Optional[str]:
    """The sha256 prefix torch.hub puts in file names (``name-<hex>.pth``), or None.

    >>> hash_prefix_from_name("efficientnet_b0_rwightman-7f5810bc.pth")
    '7f5810bc'
    """
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9.]+$", name)
    return m.group(1) if m else None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(actual: str, sha256: Optional[str], prefix: Optional[str], what: str) -> None:
    if sha256 and actual != sha256.lower():
        raise HashMismatchError(f"{what}: sha256 {actual} does not match the published {sha256.lower()}; "
                                f"the file is corrupt or not the published one")
    if prefix and not actual.startswith(prefix.lower()):
        raise HashMismatchError(f"{what}: sha256 {actual} does not start with {prefix.lower()} "
                                f"(the hash prefix in its name); the file is corrupt or not the published one")


def fetch(url: str, sha256: Optional[str] = None, filename: Optional[str] = None, progress: bool = True,
          timeout: float = 30.0) -> Path:
    """Return a local path for ``url``, downloading it into the cache if needed.

    Args:
        url: http(s) or file URL.
        sha256: the full published hash; when None, the hash prefix in the file name
            (torch.hub convention) is checked if there is one.
        filename: cache file name (default: the URL's last path component).
        progress: show a tqdm progress bar (bytes).
        timeout: socket timeout in seconds.

    Returns:
        Path of the verified file in the cache (a file URL's own path for ``file://``).

    Raises:
        DownloadError: offline (``EFFNET_OFFLINE=1``) with the file not cached, network or
            HTTP error (404...), or a download shorter than its Content-Length; the message
            names the file, the URL and where to put a manually downloaded copy.
        HashMismatchError: the bytes do not match the published hash.
    """
    parsed = urllib.parse.urlparse(url)
    name = filename or Path(urllib.parse.unquote(parsed.path)).name
    prefix = None if sha256 else hash_prefix_from_name(name)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise DownloadError(f"weight file {path} does not exist")
        _check_hash(file_sha256(path), sha256, prefix, str(path))
        return path

    target = cache_dir() / name
    if target.is_file():
        # Downloads are verified before they are renamed into place; a file put there by
        # hand is checked here, whenever a hash is known.
        _check_hash(file_sha256(target), sha256, prefix, f"cached {target} (delete it to download again)")
        return target
    where = f"download it from {url} and save it as {target}"
    if os.environ.get("EFFNET_OFFLINE", "") not in ("", "0"):
        raise DownloadError(f"EFFNET_OFFLINE is set and {name} is not in the cache; {where}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total else None
                    done = 0
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                              disable=not progress, leave=False) as bar:
                        while True:
                            chunk = resp.read(_CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            h.update(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise DownloadError(f"cannot download {name}: HTTP {e.code} {e.reason} from {url}; "
                                    f"check the URL, or {where}") from e
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:   # resets, IncompleteRead, timeouts
                reason = getattr(e, "reason", e)
                raise DownloadError(f"cannot download {name} from {url}: {reason}; {where}") from e
            if total is not None and done != total:
                raise DownloadError(f"download of {name} from {url} was cut off: got {done} of {total} bytes; "
                                    f"try again, or {where}")
        _check_hash(h.hexdigest(), sha256, prefix, f"download of {name} from {url}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
