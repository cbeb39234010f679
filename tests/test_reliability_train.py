"""Reliability of the training loop: hostile or damaged run folders, bad data, divergence.

Every case builds its bad input on the fly and checks the exact outcome: the error class and
message, that nothing was lost (the previous run byte-identical), that nothing ran.
"""

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_subset

from effnet.train import RECIPES, CheckpointError, NonFiniteLossError, fit, load_checkpoint

EFFNET = [sys.executable, "-m", "effnet.cli"]
FAST = dict(batch_size=4, image_size=32, recipe="paper", workers=0, progress=False)


def _make_set(root: Path, data: Path) -> Path:
    return copy_subset(data / "finetune" / "hymenoptera_data", root, ("ants", "bees"), {"train": 4, "val": 2})


def _digest(folder: Path) -> dict:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def tiny_set(tmp_path, data):
    """4 train and 2 val ants/bees photos per class."""
    return _make_set(tmp_path / "set", data)


@pytest.fixture(scope="module")
def _template_run(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("template")
    fit("efficientnet_b0", _make_set(root / "set", data), epochs=1, out=root / "run", **FAST)
    return root / "run"


@pytest.fixture()
def finished_run(_template_run, tmp_path):
    """A completed 1-epoch run folder on ``tiny_set``'s photos (a fresh copy per test)."""
    return Path(shutil.copytree(_template_run, tmp_path / "run"))


# ---- hostile and damaged checkpoints --------------------------------------------------------

class _Marker:
    """Unpickling this touches a marker file: proof that pickled code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resume_never_runs_a_pickle_hidden_in_last_pt(finished_run, tiny_set, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = torch.load(finished_run / "last.pt", weights_only=True)
    ckpt["payload"] = _Marker(marker)
    torch.save(ckpt, finished_run / "last.pt")
    with pytest.raises(CheckpointError, match=r"cannot resume from .*last\.pt: it holds objects other than "
                                              r"tensors.*best weights so far are in") as e:
        fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, **FAST)
    assert not marker.exists()
    assert "weights_only" not in str(e.value)          # never advice to load it unsafely


def test_checkpoint_is_plain_tensors_and_resume_works(finished_run, tiny_set):
    ckpt = torch.load(finished_run / "last.pt", weights_only=True)     # no allowlist needed
    assert ckpt["epoch"] == 0 and isinstance(ckpt["rng"][0]["numpy"]["keys"], torch.Tensor)
    r = fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, **FAST)
    assert [h["epoch"] for h in r.history] == [1, 2]


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "not-a-checkpoint"])
def test_damaged_last_pt_is_one_clear_error(finished_run, tiny_set, damage):
    ckpt = finished_run / "last.pt"
    raw = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif damage == "random":
        ckpt.write_bytes(os.urandom(4096))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    msg = str(e.value)
    assert str(ckpt) in msg and str(finished_run / "best") in msg and "\n" not in msg
    with pytest.raises(CheckpointError):
        fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, **FAST)


def test_resume_with_other_classes_is_refused(finished_run, tiny_set):
    (tiny_set / "train" / "wasps").mkdir()
    (tiny_set / "val" / "wasps").mkdir()
    for split in ("train", "val"):
        f = next((tiny_set / split / "ants").iterdir())
        shutil.copy(f, tiny_set / split / "wasps" / f.name)
    with pytest.raises(CheckpointError, match=r"trained on classes \['ants', 'bees'\]"):
        fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, **FAST)


def test_resume_needs_a_run_folder(tiny_set):
    with pytest.raises(ValueError, match="resume needs the run folder"):
        fit("efficientnet_b0", tiny_set, epochs=1, resume=True, **FAST)


def test_resume_without_checkpoint_says_so(tiny_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint .*last.pt"):
        fit("efficientnet_b0", tiny_set, epochs=1, out=tmp_path / "empty", resume=True, **FAST)


# ---- never replace a run silently ------------------------------------------------------------

def test_existing_run_is_refused_and_left_byte_identical(finished_run, tiny_set):
    before = _digest(finished_run)
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume.*--overwrite"):
        fit("efficientnet_b0", tiny_set, epochs=1, out=finished_run, **FAST)
    assert _digest(finished_run) == before


def test_overwrite_replaces_the_run_on_request(finished_run, tiny_set):
    (finished_run / "notes.txt").write_text("mine")
    old = (finished_run / "last.pt").read_bytes()
    fit("efficientnet_b0", tiny_set, epochs=1, out=finished_run, overwrite=True, seed=5, **FAST)
    assert (finished_run / "last.pt").read_bytes() != old
    assert (finished_run / "notes.txt").read_text() == "mine"          # not effnet's: kept


def test_resume_and_overwrite_together_are_refused(finished_run, tiny_set):
    with pytest.raises(ValueError, match="not both"):
        fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, overwrite=True, **FAST)


def test_stale_temporaries_of_a_killed_write_are_cleaned(finished_run, tiny_set):
    stale = [finished_run / ".last.pt.k3j2h1.tmp", finished_run / ".last.pt.x8y7.effnet-tmp",
             finished_run / "best" / ".model.safetensors.ab12.effnet-tmp"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    keep = finished_run / "notes.tmp"
    keep.write_text("a user's file")
    fit("efficientnet_b0", tiny_set, epochs=2, out=finished_run, resume=True, **FAST)
    assert not any(f.exists() for f in stale) and keep.exists()


# ---- data a classifier cannot learn from ------------------------------------------------------

def test_one_class_is_refused(tiny_set, tmp_path):
    for split in ("train", "val"):
        shutil.rmtree(tiny_set / split / "bees")
    with pytest.raises(ValueError, match=r"1 class folder\(s\) \['ants'\]; a classifier needs at least 2"):
        fit("efficientnet_b0", tiny_set, epochs=1, out=tmp_path / "r", **FAST)
    assert not (tmp_path / "r").exists()


def test_val_class_missing_from_train_is_refused_by_name(tiny_set):
    (tiny_set / "val" / "wasps").mkdir()
    shutil.copy(next((tiny_set / "val" / "ants").iterdir()), tiny_set / "val" / "wasps" / "w.jpg")
    with pytest.raises(ValueError, match=r"only in val/ \['wasps'\], only in train/ \[\]"):
        fit("efficientnet_b0", tiny_set, epochs=1, **FAST)


def test_class_folder_without_images_is_refused_by_name(tiny_set):
    (tiny_set / "train" / "wasps").mkdir()
    (tiny_set / "val" / "wasps").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) with no images .*\['wasps'\]"):
        fit("efficientnet_b0", tiny_set, epochs=1, **FAST)


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        fit("efficientnet_b0", tmp_path / "nowhere", epochs=1, **FAST)


# ---- divergence --------------------------------------------------------------------------------

def test_nan_loss_stops_at_once_and_writes_nothing_non_finite(tiny_set, tmp_path):
    out = tmp_path / "nan"
    no_warmup = RECIPES["paper"].replace(optimizer="sgd", warmup_epochs=0)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step \d+ \(learning rate 1e\+06\).*Lower the learning"):
        fit("efficientnet_b0", tiny_set, epochs=2, out=out, lr=1e6, **dict(FAST, recipe=no_warmup, batch_size=2))
    assert not (out / "last.pt").exists() and not (out / "best").exists() and not (out / "metrics.csv").exists()


def test_nan_loss_without_a_run_folder(tiny_set):
    no_warmup = RECIPES["paper"].replace(optimizer="sgd", warmup_epochs=0)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step"):
        fit("efficientnet_b0", tiny_set, epochs=2, lr=1e6, **dict(FAST, recipe=no_warmup, batch_size=2))


# ---- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(epochs="3"), TypeError, "epochs must be an integer"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(image_size=-32), ValueError, "image_size must be >= 1"),
    (dict(lr=-0.1), ValueError, r"lr must be in \(0, inf\)"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
    (dict(workers=-1), ValueError, "workers must be >= 0"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps must be >= 1"),
    (dict(val_split=1.0), ValueError, r"val_split must be in \(0, 1\)"),
])
def test_fit_arguments_are_validated(tiny_set, kwargs, error, match):
    args = dict(epochs=1, **FAST)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fit("efficientnet_b0", tiny_set, **args)


# ---- writes: full disk, permissions ----------------------------------------------------------

@pytest.fixture()
def full_disk(tmp_path, monkeypatch):
    """A folder on a 256 KiB tmpfs (root can mount one), or one whose writes raise ENOSPC."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    if not mounted:
        import effnet._io as io_mod

        real = io_mod.os.fdopen

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, k):
                return getattr(self.f, k)

        monkeypatch.setattr(io_mod.os, "fdopen", lambda fd, *a, **k: Full(real(fd, *a, **k)))
    yield mnt
    if mounted:
        subprocess.run(["umount", str(mnt)], check=True)


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(full_disk):
    from effnet.train.loop import save_checkpoint

    ckpt = full_disk / "last.pt"
    small = {"model": {"w": torch.zeros(10)}, "epoch": 0}
    try:
        save_checkpoint(ckpt, small)
    except OSError:                                   # the monkeypatched disk is full from the start
        ckpt.write_bytes(b"previous")
    before = ckpt.read_bytes()
    with pytest.raises(OSError, match=r"no space left on device while writing .*last\.pt; the previous file") as e:
        save_checkpoint(ckpt, {"model": {"w": torch.zeros(1 << 20)}, "epoch": 1})     # 4 MiB
    assert e.value.errno == errno.ENOSPC
    assert ckpt.read_bytes() == before
    assert [p.name for p in full_disk.iterdir()] == ["last.pt"]          # no temporary left


def test_torchscript_export_on_a_full_disk_raises_oserror_and_keeps_the_file(full_disk):
    import effnet
    from effnet import deploy

    target = full_disk / "model.pt"
    target.write_bytes(b"the previous export")
    model = effnet.create_model("efficientnet_b0", num_classes=10).eval()     # ~21 MB scripted
    with pytest.raises(OSError, match=r"no space left on device while writing .*model\.pt"):
        deploy.export_torchscript(model, target)
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in full_disk.iterdir()] == ["model.pt"]


def test_run_outputs_follow_the_umask(tiny_set, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        fit("efficientnet_b0", tiny_set, epochs=1, out=out, **FAST)
    finally:
        os.umask(old)
    for name in ("last.pt", "metrics.csv", "curves.png", "best/model.safetensors", "best/config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_cli_train_refuses_existing_run_and_resume_without_out(finished_run, tiny_set):
    args = ["train", "--model", "efficientnet_b0", "--data", str(tiny_set), "--epochs", "1", "--batch-size", "4",
            "--image-size", "32", "--workers", "0"]
    r = subprocess.run(EFFNET + args + ["--out", str(finished_run)], capture_output=True, text=True)
    assert r.returncode == 1 and "already holds a run" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(EFFNET + args + ["--resume"], capture_output=True, text=True)
    assert r.returncode != 0 and "--resume needs --out" in r.stderr


def test_cli_train_nan_is_one_line_and_exit_1(tiny_set, tmp_path):
    r = subprocess.run(EFFNET + ["train", "--model", "efficientnet_b0", "--data", str(tiny_set), "--epochs", "2",
                                 "--batch-size", "2", "--image-size", "32", "--workers", "0", "--lr", "1e30",
                                 "--out", str(tmp_path / "nan")], capture_output=True, text=True)
    assert r.returncode == 1 and "error: training stopped" in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "nan" / "last.pt").exists() and not (tmp_path / "nan" / "best").exists()
