"""Ray set-up shared by the search (Ray Tune) and batch inference (Ray Data): which runner, and a session."""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator, Optional

__all__ = ["available", "resolve_runner", "session"]


def available(module: str) -> bool:
    """Whether ``ray`` and its ``module`` (``ray.tune``, ``ray.data``) are installed."""
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec(module) is not None


def resolve_runner(runner: str, module: str, what: str, extra: str) -> str:
    """``ray`` or ``local`` for a ``runner`` of ``ray``, ``local`` or ``auto`` (``ray`` when ``module`` is installed).

    Args:
        module: the Ray library the caller needs (``ray.tune``, ``ray.data``), named ``what``
            in messages (``Ray Tune``); ``extra``: the effnet extra that installs it.

    Raises:
        ValueError: an unknown runner, or ``ray`` asked for without ``module`` (the message
            names ``pip install 'effnet[extra]'``).
    """
    if runner == "auto":
        runner = "ray" if available(module) else "local"
    if runner not in ("ray", "local"):
        raise ValueError(f"runner must be ray, local or auto, got {runner!r}")
    if runner == "ray" and not available(module):
        raise ValueError(f"runner 'ray' needs {what}: pip install 'effnet[{extra}]' (or use runner 'local')")
    return runner


@contextlib.contextmanager
def session(address: Optional[str]) -> Iterator[None]:
    """Ray for the block: a new local instance (``address`` None) or the cluster at ``address``.

    A Ray already initialised by the caller is used as it is and left running; one started
    here is shut down on the way out, error or not.

    Security: a local instance's services (GCS, raylet, workers) listen on every interface
    while it runs, as Ray's gRPC servers do (seen with ``ss -ltn`` on Ray 2.60;
    ``_node_ip_address="127.0.0.1"`` does not change it). Ray 2.60 turns on its token
    authentication for a new local instance by default (a token in ``~/.ray/auth_token``,
    unless ``RAY_AUTH_MODE=disabled``); older Ray accepts any client. On an untrusted network
    with an older Ray, use the in-process runner (``--runner local``).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
