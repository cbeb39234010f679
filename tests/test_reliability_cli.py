"""Reliability at the edges: command-line exits and numbers, model inputs, scaling arguments,
and the one atomic writer (missing folders, permissions, temporaries)."""

import errno
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import effnet
from effnet._io import WriteError, atomic_write, clean_stale_temporaries, make_parent
from effnet.cli import main
from effnet.data import ImageDataset, eval_transform
from effnet.evaluation import evaluate
from effnet.scaling import Scaling, compound

EFFNET = [sys.executable, "-m", "effnet.cli"]


def _exit_message(argv) -> str:
    """Run the CLI in-process; it must exit with an ``error: ...`` message (exit status 1)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error:"), e.value.code
    assert "\n" not in e.value.code
    return e.value.code


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A 2-class effnet folder (random weights) with class names ants, bees."""
    d = tmp_path_factory.mktemp("m") / "ants-bees"
    model = effnet.create_model("efficientnet_lite0", num_classes=2)
    model.save_pretrained(d, class_names=["ants", "bees"])
    return d


# ---- predict and evaluate: nothing to do is an error ------------------------------------------

def test_predict_on_a_folder_without_images_exits_1(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    msg = _exit_message(["predict", str(tmp_path), "--model", "efficientnet_b0"])
    assert f"no images found in {tmp_path}" in msg and ".jpg" in msg


def test_predict_whose_images_are_all_unreadable_exits_1(tmp_path, saved_model, capsys):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (tmp_path / "b.png").write_text("<html>not an image</html>")
    assert main(["predict", str(tmp_path), "--weights", str(saved_model)]) == 1
    err = capsys.readouterr().err
    assert "none of the 2 images could be read" in err and "a.jpg" in err and "b.png" in err


def test_evaluate_whose_files_are_all_missing_exits_1(tmp_path, saved_model):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_index\nmissing1.jpg,0\nmissing2.jpg,1\n")
    msg = _exit_message(["evaluate", "--weights", str(saved_model), "--data", str(csv), "--workers", "0"])
    assert "none of the 2 images listed by" in msg and "missing1.jpg" in msg


def test_evaluate_label_outside_the_models_classes_names_the_row(tmp_path, saved_model, data):
    photo = next((data / "finetune" / "hymenoptera_data" / "val" / "ants").iterdir())
    shutil.copy(photo, tmp_path / "a.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_index\na.jpg,0\na.jpg,7\n")
    msg = _exit_message(["evaluate", "--weights", str(saved_model), "--data", str(csv), "--workers", "0"])
    assert "row 3: class_index 7" in msg and "2 classes (0..1)" in msg


def test_evaluate_folder_with_a_class_the_model_lacks(tmp_path, saved_model, data):
    photo = next((data / "finetune" / "hymenoptera_data" / "val" / "ants").iterdir())
    for cls in ("ants", "wasps"):
        (tmp_path / cls).mkdir()
        shutil.copy(photo, tmp_path / cls / "x.jpg")
    msg = _exit_message(["evaluate", "--weights", str(saved_model), "--data", str(tmp_path), "--workers", "0"])
    assert "['wasps']" in msg and "not classes of the model" in msg


def test_evaluate_folder_is_scored_by_the_models_class_names(tmp_path, saved_model, data, capsys):
    # A folder holding only bees: folder index 0 must map to the model's index 1, not 0.
    (tmp_path / "set" / "bees").mkdir(parents=True)
    for f in sorted((data / "finetune" / "hymenoptera_data" / "val" / "bees").iterdir())[:2]:
        shutil.copy(f, tmp_path / "set" / "bees" / f.name)
    model = effnet.from_pretrained(saved_model)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0]))        # always says "bees"
    model.save_pretrained(tmp_path / "always-bees", class_names=["ants", "bees"])
    assert main(["evaluate", "--weights", str(tmp_path / "always-bees"), "--data", str(tmp_path / "set"),
                 "--workers", "0", "--json"]) == 0
    assert '"top1": 100.0' in capsys.readouterr().out


def test_evaluate_missing_data_path(tmp_path, saved_model):
    msg = _exit_message(["evaluate", "--weights", str(saved_model), "--data", str(tmp_path / "nope")])
    assert "does not exist" in msg


# ---- command-line numbers: positive means positive ---------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["predict", "x.jpg", "--topk", "0"], "--topk: must be >= 1, got 0"),
    (["predict", "x.jpg", "--batch-size", "-1"], "--batch-size: must be >= 1, got -1"),
    (["predict", "x.jpg", "--topk", "five"], "--topk: 'five' is not an integer"),
    (["evaluate", "--data", "d", "--workers", "-1"], "--workers: must be >= 0"),
    (["train", "--data", "d", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["train", "--data", "d", "--epochs", "2", "--image-size", "0"], "--image-size: must be >= 1"),
    (["train", "--data", "d", "--epochs", "2", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", "--data", "d", "--epochs", "2", "--lr", "-1"], "--lr: must be in (0, inf)"),
    (["train", "--data", "d", "--epochs", "2", "--lr", "nan"], "--lr: must be in (0, inf)"),
    (["train", "--data", "d", "--epochs", "2", "--val-split", "1.5"], "--val-split: must be in (0, 1)"),
    (["train", "--data", "d", "--epochs", "2", "--accum-steps", "0"], "--accum-steps: must be >= 1"),
    (["train", "--data", "d", "--epochs", "2", "--kd-alpha", "1.5"], "--kd-alpha: must be in [0, 1], got 1.5"),
    (["train", "--data", "d", "--epochs", "2", "--kd-temperature", "0"], "--kd-temperature: must be in (0, inf)"),
    (["train", "--data", "d", "--epochs", "2", "--dropout", "1"], "--dropout: must be in [0, 1), got 1"),
    (["train", "--data", "d", "--epochs", "2", "--unlabeled-ratio", "-1"], "--unlabeled-ratio: must be in (0, inf)"),
    (["pseudo-label", "u", "--teacher", "t", "--out", "o", "--threshold", "1"], "--threshold: must be in [0, 1)"),
    (["export", "--model", "efficientnet_b0", "--out", "x.onnx", "--resolution", "0"], "--resolution: must be >= 1"),
    (["bench", "--model", "efficientnet_b0", "--iters", "0"], "--iters: must be >= 1"),
    (["bench", "--model", "efficientnet_b0", "--resolution", "-5"], "--resolution: must be >= 1"),
])
def test_cli_numbers_are_checked(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_bench_batch_sizes_must_be_positive():
    msg = _exit_message(["bench", "--model", "efficientnet_b0", "--batch-sizes", "0,4"])
    assert "--batch-sizes" in msg


def test_train_resume_without_out_is_one_line():
    assert "--resume needs --out" in _exit_message(["train", "--model", "efficientnet_b0", "--data", "d",
                                                    "--epochs", "1", "--resume"])


# ---- model inputs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def b0():
    return effnet.create_model("efficientnet_b0").eval()


@pytest.mark.parametrize("x, error, needle", [
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "eval_transform"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), TypeError, "x.float()"),
    (torch.zeros(1, 3, 0, 0), ValueError, "0 pixels"),
    (torch.zeros(0, 3, 64, 64), ValueError, "0 images"),
    (torch.zeros(1, 1, 64, 64), ValueError, "in_chans=3"),
    (torch.zeros(3, 64, 64), ValueError, "expected input of shape (N, 3, H, W)"),
])
def test_bad_model_inputs_get_one_clear_error(b0, x, error, needle):
    for f in (b0, b0.forward_features, b0.forward_feature_maps):
        with pytest.raises(error) as e:
            f(x)
        assert needle in str(e.value)


def test_float64_model_takes_float64_and_autocast_takes_float32(b0):
    assert b0(torch.zeros(1, 3, 32, 32)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert b0(torch.zeros(1, 3, 32, 32)).dtype == torch.bfloat16
    double = effnet.create_model("efficientnet_b0", num_classes=3).double().eval()
    assert double(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


# ---- scaling arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, needle", [
    (lambda: compound(float("nan")), ValueError, "phi must be a finite number"),
    (lambda: compound(float("inf")), ValueError, "phi must be a finite number"),
    (lambda: compound(1e6), ValueError, "use a smaller |phi|"),
    (lambda: compound(-1e6), ValueError, "use a smaller |phi|"),
    (lambda: compound("1"), TypeError, "phi must be a number"),
    (lambda: compound(1, alpha=0), ValueError, "alpha must be in (0, inf)"),
    (lambda: compound(1, base_resolution=0), ValueError, "base_resolution must be >= 1"),
    (lambda: Scaling(float("nan"), 1.0, 224, 0.2), ValueError, "Scaling.width must be a finite number"),
    (lambda: Scaling(1.0, -1.0, 224, 0.2), ValueError, "Scaling.depth must be in (0, inf)"),
    (lambda: Scaling(1.0, 1.0, 0, 0.2), ValueError, "Scaling.resolution must be >= 1"),
    (lambda: Scaling(1.0, 1.0, 224.5, 0.2), ValueError, "give pixels as an int"),
    (lambda: Scaling(1.0, 1.0, "224", 0.2), TypeError, "Scaling.resolution must be pixels (int), a multiplier"),
    (lambda: Scaling(1.0, 1.0, 224, 1.0), ValueError, "Scaling.dropout must be in [0, 1)"),
])
def test_scaling_arguments_are_validated(call, error, needle):
    with pytest.raises(error) as e:
        call()
    assert needle in str(e.value)


def test_compound_still_follows_eq3():
    s = compound(2.0)
    assert (s.width, s.depth, s.resolution) == (pytest.approx(1.1 ** 2), pytest.approx(1.2 ** 2), 296)
    assert math.isclose(compound(0).width, 1.0)


# ---- the one atomic writer ---------------------------------------------------------------------

def test_atomic_write_into_a_missing_folder(tmp_path):
    with pytest.raises(WriteError, match=r"its folder .*nope does not exist") as e:
        atomic_write(tmp_path / "nope" / "f.bin", b"x")
    assert e.value.errno == errno.ENOENT and not (tmp_path / "nope").exists()


def test_atomic_write_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    for call in (lambda: atomic_write(tmp_path / "afile" / "f.bin", b"x"),
                 lambda: make_parent(tmp_path / "afile" / "sub" / "f.bin")):
        with pytest.raises(WriteError, match=r"afile is a file, not a folder") as e:
            call()
        assert e.value.errno == errno.ENOTDIR


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")

    def write(tmp):
        Path(tmp).write_text("half")
        raise ValueError("the data was bad")

    with pytest.raises(ValueError, match="the data was bad"):
        atomic_write(target, write)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", b"x")
        atomic_write(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"y"))
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.bin", "b.bin")] == [mode, mode]


def test_clean_stale_temporaries_removes_only_ours(tmp_path):
    ours = [tmp_path / ".last.pt.abc123.effnet-tmp", tmp_path / ".m.onnx.x1.effnet-tmp.onnx",
            tmp_path / ".last.pt.q9w8e7.tmp"]
    theirs = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "last.pt"]
    for f in ours + theirs:
        f.write_text("x")
    theirs.append(tmp_path / ".my.notes.tmp")                  # a user's dotfile, not an effnet output
    theirs[-1].write_text("x")
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted(ours)
    assert all(f.exists() for f in theirs)


def test_export_under_a_file_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = subprocess.run(EFFNET + ["export", "--model", "efficientnet_b0", "--format", "torchscript",
                                 "--out", str(tmp_path / "afile" / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 1 and "afile is a file, not a folder" in r.stderr and "Traceback" not in r.stderr


def test_onnx_int8_export_keeps_no_intermediate_file(tmp_path, data):
    calib = tmp_path / "calib"
    calib.mkdir()
    for f in sorted((data / "finetune" / "hymenoptera_data" / "val" / "ants").iterdir())[:2]:
        shutil.copy(f, calib / f.name)
    out = tmp_path / "out" / "m-int8.onnx"
    old = os.umask(0o022)
    try:
        assert main(["export", "--model", "efficientnet_lite0", "--format", "onnx-int8", "--resolution", "64",
                     "--calibration", str(calib), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert [p.name for p in out.parent.iterdir()] == ["m-int8.onnx"]
    assert out.stat().st_mode & 0o777 == 0o644


# ---- review findings: CSV bytes, skip reasons, flags, signals, devices ---------------------------

def test_a_csv_that_is_not_text_is_named(tmp_path):
    png = tmp_path / "labels.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"labels\.csv is not a UTF-8 text file"):
        ImageDataset.from_csv(png, eval_transform(effnet.get_config("efficientnet_b0")))
    huge = tmp_path / "huge.csv"
    huge.write_text("file,class_index\n" + "x" * 200_000 + ",1\n")
    with pytest.raises(ValueError, match=r"huge\.csv is not a readable CSV"):
        ImageDataset.from_csv(huge, eval_transform(effnet.get_config("efficientnet_b0")))


def test_evaluate_says_why_each_image_was_skipped(tmp_path, saved_model, data):
    photo = next((data / "finetune" / "hymenoptera_data" / "val" / "ants").iterdir())
    (tmp_path / "ants").mkdir()
    shutil.copy(photo, tmp_path / "ants" / "ok.jpg")
    (tmp_path / "ants" / "cut.jpg").write_bytes(photo.read_bytes()[:300])
    model = effnet.from_pretrained(saved_model)
    ds = ImageDataset.from_folder(tmp_path, eval_transform(model.config))
    with pytest.warns(UserWarning, match=r"skipped: cannot decode image .*cut\.jpg: .*truncated"):
        r = evaluate(model, ds, workers=0, progress=False)
    assert (r["images"], r["skipped"]) == (1, 1)


def test_weights_and_pretrained_together_are_refused():
    assert "not both" in _exit_message(["predict", "x.jpg", "--model", "tf_efficientnet_lite0", "--pretrained",
                                        "--weights", "w.pth"])


@pytest.mark.parametrize("device, needle", [("bogus", "is not a device"), ("cuda", "no CUDA GPU is available")])
def test_train_device_is_checked(device, needle, data):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from effnet.train import fit

    with pytest.raises(ValueError, match=needle):
        fit("efficientnet_b0", data / "finetune" / "hymenoptera_data", epochs=1, device=device, progress=False)


def test_sigterm_during_export_leaves_no_temporary(tmp_path):
    import signal
    import time

    out = tmp_path / "exp" / "m.onnx"
    proc = subprocess.Popen(EFFNET + ["export", "--model", "efficientnet_b0", "--format", "onnx", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out.parent.exists() and any(out.parent.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []                # the temporary file went with the command


def test_train_out_under_a_file_fails_before_any_work(tmp_path, data):
    (tmp_path / "afile").write_text("x")
    from effnet.train import fit

    with pytest.raises(OSError, match=r"afile is a file, not a folder; choose another --out") as e:
        fit("efficientnet_b0", data / "finetune" / "hymenoptera_data", epochs=1, out=tmp_path / "afile" / "run",
            progress=False)
    assert "Errno" not in str(e.value)
