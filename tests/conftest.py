"""Shared fixtures. Real data comes from $EFFNET_DATA (default ../shared/data); CI has it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import effnet
from effnet.data import data_dir


@pytest.fixture(scope="session")
def data() -> Path:
    d = data_dir()
    if not (d / "SOURCES.md").is_file():
        pytest.fail(f"shared data not found at {d.resolve()}; set EFFNET_DATA to the shared/data folder")
    return d


def copy_subset(src: Path, dst: Path, classes: tuple, per_split: dict) -> Path:
    """Copy the first ``per_split[split]`` photos (sorted by name) of each class of the
    ``src/<split>/<class>/`` folders into ``dst/<split>/<class>/``; returns ``dst``."""
    for split, n in per_split.items():
        for cls in classes:
            (dst / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(f, dst / split / cls / f.name)
    return dst


def csv_rows(path: Path) -> list:
    """The rows of a CSV with a header (metrics.csv, trials.csv, labels.csv) as dicts."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    Freshly initialised BN is the identity map in eval (mean 0, var 1, weight 1, bias 0),
    which hides eps and folding mistakes; this makes every BN do real work.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


@pytest.fixture()
def tiny_fs(tmp_path):
    """A folder on its own 256 KiB tmpfs, so that writes really fail with ENOSPC (root mounts
    it, as in CI); skipped where the test cannot mount a file system."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the monkeypatched ENOSPC tests cover the writer")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def realistic_model(name: str, **kwargs) -> torch.nn.Module:
    """``name`` in eval mode with BatchNorm doing real work, for export and folding checks.

    EfficientNetV2 loads the shared oracle weights (timm's tf_efficientnetv2_b0 with BatchNorm
    statistics of real photos): at the official init with random BatchNorm its deep residual
    stages grow the logits into the thousands, where float32 rounding alone exceeds 1e-4.
    Other models get :func:`randomize_bn`.
    """
    import warnings

    if "efficientnetv2_b0" in name:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # TF-trained file in a symmetric model
            return effnet.create_model(name, weights=data_dir() / "reference-scaling" /
                                       "timm_tf_efficientnetv2_b0.safetensors", **kwargs).eval()
    return randomize_bn(effnet.create_model(name, **kwargs)).eval()


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    """``effnet.create_model`` on the meta device: shapes, parameters and MACs, no memory."""
    with torch.device("meta"):
        return effnet.create_model(name, **kwargs)


def kill_after_first_checkpoint(cmd: list, ckpt: Path, env: dict) -> int:
    """Start a training command and SIGKILL it as soon as it has written ``ckpt`` (its
    first ``last.pt``), so it dies in the middle of a later epoch; returns its exit code
    (``-SIGKILL`` when the kill, not the end of the run, stopped it)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``effnet <command> ... --port P`` in a subprocess bound to 127.0.0.1, stopped by its own handle.

    ``with ServerProcess(["serve", "--model", ...]) as url:`` waits until ``/health`` answers
    (failing with the server's stderr if it exits or takes over ``timeout`` seconds) and on exit
    sends SIGTERM, then SIGKILL after 15 s.
    """

    def __init__(self, args: list, timeout: float = 180.0) -> None:
        self.args, self.timeout, self.port = args, timeout, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        import sys
        import tempfile
        import urllib.request

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "effnet.cli", *self.args, "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.__exit__(None, None, None)
                pytest.fail(f"effnet {' '.join(self.args)} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.25)
        self.__exit__(None, None, None)
        pytest.fail(f"effnet {' '.join(self.args)} did not answer /health in {self.timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prometheus_sum(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples over all label sets, in ``/metrics`` text."""
    import re

    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))
