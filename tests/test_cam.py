"""Class activation maps (effnet.analysis.cam, effnet cam) and the plot commands (effnet.plots, effnet plot)."""

import csv

import pytest
import torch
from PIL import Image

import effnet
from effnet.analysis import cam
from effnet.cli import main
from effnet.plots import plot_trials, upsample_cam

PHOTOS = ["n01443537_goldfish.JPEG", "n01614925_bald_eagle.JPEG"]


def calibrated(name, x, seed=0, **kw):
    """A random-init model whose BatchNorm statistics are those of ``x`` (as after training) and
    whose classifier bias is random: logits of a few units, like a trained model's, and the bias
    term really tested. Uncalibrated, a random ResNet-50's logits are ~1e3..1e6, where float32
    itself cannot hold a logit to 1e-5."""
    torch.manual_seed(seed)
    model = effnet.create_model(name, **kw)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None                    # cumulative average over the one batch
    model.train()
    with torch.no_grad():
        model(x)
        torch.nn.init.normal_(model.classifier.bias)
    return model.eval()


@pytest.fixture(scope="module")
def b0():
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return calibrated("efficientnet_b0", x), x


@pytest.mark.parametrize("name,kw", [("efficientnet_b0", {}), ("tf_efficientnet_lite0", {}),
                                     ("resnet50", dict(phi=1))])
def test_mean_cam_plus_bias_is_the_logit(name, kw):
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    model = calibrated(name, x, **kw)
    with torch.no_grad():
        logits = model(x)
    assert 1.0 < logits.abs().max() < 100                                      # a realistic scale
    b = model.classifier.bias
    for class_index in (None, 7, torch.tensor([3, 999, 500])):
        maps = cam(model, x, class_index)
        k = logits.argmax(1) if class_index is None else torch.as_tensor(class_index).expand(3)
        assert maps.shape == (3, 3, 3) and maps.dtype == torch.float32       # 96 px / 32
        err = (maps.mean((1, 2)) + b[k] - logits.gather(1, k[:, None])[:, 0]).abs().max().item()
        print(f"{name} {kw} class_index={class_index}: max |mean CAM + b - logit| = {err:.2e}")
        assert err <= 1e-5


def test_class_index_forms_agree(b0):
    model, x = b0
    maps, logits = cam(model, x, return_logits=True)
    assert logits.shape == (3, 1000)
    f = model.forward_features(x).detach()
    w = model.classifier.weight.detach()
    top = logits.argmax(1)
    assert torch.allclose(maps, torch.einsum("nchw,nc->nhw", f, w[top]), atol=1e-6)
    assert torch.equal(cam(model, x, top), maps)                               # None == each image's top class
    five = cam(model, x, 5)
    assert torch.equal(cam(model, x, torch.tensor(5)), five)                   # 0-dim tensor broadcasts
    assert torch.equal(cam(model, x, torch.full((3,), 5, dtype=torch.int32)), five)
    assert torch.equal(cam(model, x, [5, 5, 5]), five)
    per_image = cam(model, x, torch.tensor([5, 0, 999]))
    assert torch.equal(per_image[0], five[0]) and not torch.equal(per_image[1], five[1])


def test_cam_restores_training_mode_and_needs_no_grad(b0):
    model, x = b0
    model.train()
    try:
        maps = cam(model, x)
        assert model.training and not maps.requires_grad
        assert torch.equal(maps, cam(model.eval(), x))                        # computed in eval mode
    finally:
        model.eval()


def test_bad_class_index_is_refused(b0):
    model, x = b0
    with pytest.raises(ValueError, match=r"class_index 1000 is outside the model's 1000 classes \(0..999\)"):
        cam(model, x, 1000)
    with pytest.raises(ValueError, match="class_index -1 is outside"):
        cam(model, x, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\), one class per image, got shape \(2,\)"):
        cam(model, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"got shape \(3, 1\)"):
        cam(model, x, torch.tensor([[1], [2], [3]]))
    with pytest.raises(TypeError, match="integers"):
        cam(model, x, torch.tensor([1.0, 2.0, 3.0]))
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError, match="class_index must be an int"):
            cam(model, x, bad)


def test_models_without_pooled_linear_classifier_are_refused(b0):
    model, x = b0
    headless = effnet.create_model("efficientnet_b0", num_classes=0).eval()
    with pytest.raises(ValueError, match=r"linear classifier on the pooled features.*num_classes=0"):
        cam(headless, x)
    with pytest.raises(ValueError, match="forward_features"):
        cam(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)), x)

    class MaxPoolHead(type(model)):
        def forward_head(self, f, pre_logits=False):
            return self.classifier(f.amax((2, 3)))

    maxpool = calibrated("efficientnet_b0", x)
    maxpool.__class__ = MaxPoolHead
    with pytest.raises(ValueError, match="not global average pool"):
        cam(maxpool, x)
    with pytest.raises(ValueError, match="expected input of shape"):
        cam(model, x[:, :2])


def test_upsample_cam_is_in_unit_range():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    up = upsample_cam(maps, 8)
    assert up.shape == (2, 8, 8) and up.dtype == torch.float32
    assert up[0].min() == 0 and up[0].max() == 1 and torch.equal(up[1], torch.zeros(8, 8))


# ---- effnet cam ---------------------------------------------------------------------------------------

def _opens(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_cli_cam_pretrained_lite0_on_real_photos(data, tmp_path, capsys):
    images = [str(data / "imagenet-samples" / "images" / p) for p in PHOTOS]
    assert main(["cam", *images, "--model", "tf_efficientnet_lite0", "--pretrained", "--out", str(tmp_path / "cam")]) == 0
    out = capsys.readouterr().out
    assert "goldfish.JPEG: tf_efficientnet_lite0: goldfish" in out and "bald_eagle.JPEG: tf_efficientnet_lite0: bald eagle" in out
    for name in ("n01443537_goldfish.png", "n01614925_bald_eagle.png", "cam_grid.png"):
        w, h = _opens(tmp_path / "cam" / name)
        assert w > 200 and h > 200


def test_cli_cam_several_models_one_grid(data, tmp_path, capsys):
    folder = tmp_path / "trained"
    effnet.create_model("efficientnet_lite0", num_classes=3).save_pretrained(str(folder), ["a", "b", "c"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    image = data / "imagenet-samples" / "images" / PHOTOS[0]
    argv = ["cam", str(image), str(broken), "--models", f"mobilenetv2_100,{folder}", "--out", str(tmp_path / "o"),
            "--figure", str(tmp_path / "fig7.png"), "--topk", "3", "--labels", "baseline,fine-tuned"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "goldfish.JPEG: baseline:" in captured.out and "goldfish.JPEG: fine-tuned:" in captured.out
    assert "random weights" in captured.err and "skipped: cannot decode image" in captured.err
    assert _opens(tmp_path / "o" / "n01443537_goldfish.png")
    w, h = _opens(tmp_path / "fig7.png")
    assert w > h                                              # photo + 2 model columns, one row
    assert not (tmp_path / "o" / "broken.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--model", "efficientnet_b0", "--models", "efficientnet_b0,resnet50"], "not both"),
    (["--models", "efficientnet_b0", "--weights", "w.pth"], "--weights names one model's file"),
    (["--models", " , "], "comma list"),
    (["--models", "efficientnet_b0,resnet50", "--labels", "baseline"], "1 name(s) for 2 model(s)"),
    (["--models", "efficientnet_b0", "--labels", " "], "non-empty"),
    (["--model", "efficientnet_b0", "--labels", "baseline"], "titles the --models columns"),
])
def test_cli_cam_bad_model_arguments(data, tmp_path, args, message):
    image = data / "imagenet-samples" / "images" / PHOTOS[0]
    with pytest.raises(SystemExit) as e:
        main(["cam", str(image), "--out", str(tmp_path), *args])
    assert message in str(e.value.code)


def test_cli_cam_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cam", str(tmp_path), "--model", "efficientnet_b0", "--out", str(tmp_path / "o")])
    assert "no images found" in str(e.value.code)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["cam", str(tmp_path / "bad.png"), "--model", "efficientnet_b0", "--out", str(tmp_path / "o")]) == 1
    assert "none of the 1 images could be read" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["cam", str(tmp_path / "bad.png"), "--model", "efficientnet_b0", "--out", str(tmp_path / "file")])
    assert "is a file" in str(e.value.code)
    assert main(["cam", str(tmp_path / "bad.png"), "--model", "efficientnet_b99", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model" in capsys.readouterr().err
    headless = tmp_path / "headless"
    effnet.create_model("efficientnet_lite0", num_classes=0).save_pretrained(str(headless))
    png = tmp_path / "ok.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(png)
    assert main(["cam", str(png), "--weights", str(headless), "--out", str(tmp_path / "o")]) == 1
    assert "num_classes=0" in capsys.readouterr().err


# ---- effnet plot ------------------------------------------------------------------------------------

def test_plot_family(tmp_path, capsys):
    out = tmp_path / "sub" / "family.png"
    assert main(["plot", "family", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    w, h = _opens(out)
    assert w > 2 * h > 600


def test_plot_run_training_folder(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,lr,train_loss,train_top1,val_top1,val_top5,images_per_s,seconds,skipped\n"
        "1,0.1,2.3,10,12,40,100,3,0\n2,0.05,2.0,20,25,55,100,3,0\n3,0.01,1.8,30,,,100,3,0\n")
    assert main(["plot", "run", str(tmp_path)]) == 0
    assert _opens(tmp_path / "curves.png")


def _trials(path, rows, fields=("alpha", "beta", "gamma", "macs", "top1", "status")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)


def test_plot_run_search_and_sweep_folders(tmp_path):
    _trials(tmp_path / "trials.csv", [(1.2, 1.1, 1.15, 7.0e8, 41.5, "done"), (1.4, 1.0, 1.1, 6.7e8, 38.0, "done"),
                                      (1.0, 1.2, 1.0, "", "", "failed")])
    assert main(["plot", "run", str(tmp_path), "--out", str(tmp_path / "s.png")]) == 0
    assert _opens(tmp_path / "s.png")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _trials(sweep / "trials.csv", [("width", 2.0e8, 30), ("width", 4.0e8, 35), ("depth", 3.0e8, 33)],
            fields=("dim", "macs", "top1"))
    assert plot_trials(sweep / "trials.csv", sweep / "sweep.png") == sweep / "sweep.png"
    assert _opens(sweep / "sweep.png")
    assert main(["plot", "run", str(sweep)]) == 0 and _opens(sweep / "trials.png")


def test_plot_run_bad_folders(tmp_path, capsys):
    assert main(["plot", "run", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", "run", str(tmp_path)]) == 1
    assert "neither trials.csv" in capsys.readouterr().err
    _trials(tmp_path / "trials.csv", [(1.2, 41.5)], fields=("alpha", "top1"))
    assert main(["plot", "run", str(tmp_path)]) == 1
    assert "lacks column(s) macs" in capsys.readouterr().err
    _trials(tmp_path / "trials.csv", [(1.2, "", "", "failed")], fields=("alpha", "macs", "top1", "status"))
    assert main(["plot", "run", str(tmp_path)]) == 1
    assert "none with both top1 and macs" in capsys.readouterr().err
    (tmp_path / "trials.csv").unlink()
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss\n")
    assert main(["plot", "run", str(tmp_path)]) == 1
    assert "no finished epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", "family"])                                     # --out is required
    assert "--out" in capsys.readouterr().err
