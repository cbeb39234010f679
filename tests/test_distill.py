"""Knowledge distillation and Noisy Student: the loss against its definition, the teacher's
isolation, exact resume, and every file checked against the teacher and data it belongs to."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import copy_subset, kill_after_first_checkpoint

import effnet
from effnet.train import (Distillation, DistillError, LogitCache, PseudoLabels, Teacher, Unlabeled, fit, kd_loss,
                          pseudo_label, write_logit_cache)
from effnet.train.distill import _balance, class_index, teacher_fingerprint

EFFNET = [sys.executable, "-m", "effnet.cli"]
CLASS_MAP = {"ants": "ant", "bees": "bee"}        # ImageNet's "ant, emmet, pismire" (310) and "bee" (309)


@pytest.fixture()
def photos(tmp_path, data):
    """8 train / 4 val ants and bees photos, and the other val photos as an unlabeled folder."""
    src = data / "finetune" / "hymenoptera_data"
    copy_subset(src, tmp_path / "set", ("ants", "bees"), {"train": 8, "val": 4})
    unl = tmp_path / "unlabeled"
    unl.mkdir()
    for cls in ("ants", "bees"):
        for f in sorted((src / "val" / cls).iterdir())[4:10]:
            (unl / f"{cls}_{f.name}").write_bytes(f.read_bytes())
    return tmp_path / "set"


def _student_like_teacher(classes=("ants", "bees")):
    """A small teacher over the data's classes (random weights, BatchNorm doing real work)."""
    from conftest import randomize_bn

    torch.manual_seed(11)
    t = randomize_bn(effnet.create_model("efficientnet_lite0", num_classes=len(classes)))
    with torch.no_grad():
        t.classifier.weight.mul_(0.02)                 # probabilities spread out, not all 1.0
    t.class_names = list(classes)
    return t.eval()


def test_kd_loss_equals_the_hand_computed_value():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    t = torch.tensor([[1.0, 1.5, 0.0], [-2.0, 0.5, 2.5]])
    y = torch.tensor([0, 1])
    T, alpha = 4.0, 0.3

    def softmax(v, temp=1.0):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    ce = sum(-math.log(softmax(s[i].tolist())[y[i]]) for i in range(2)) / 2
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(t[i].tolist(), T), softmax(s[i].tolist(), T)))
             for i in range(2)) / 2                                   # batchmean: sum over classes, mean over rows
    expected = (1 - alpha) * ce + alpha * T * T * kl
    assert kd_loss(s, t, y, temperature=T, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)
    # hard: CE on the teacher's argmax (classes 1 and 2), T unused
    hard = sum(-math.log(softmax(s[i].tolist())[k]) for i, k in ((0, 1), (1, 2))) / 2
    assert kd_loss(s, t, y, temperature=T, alpha=alpha, kind="hard").item() == pytest.approx(
        (1 - alpha) * ce + alpha * hard, rel=1e-6)
    assert kd_loss(s, t, y, alpha=0.0).item() == F.cross_entropy(s, y).item()
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y).backward()
    assert t.grad is None                                            # the teacher's logits are detached


def test_teacher_reads_the_students_batch_in_its_own_preprocessing():
    teacher = _student_like_teacher()
    wrapped = Teacher(teacher, student_mean=(0.485, 0.456, 0.406), student_std=(0.229, 0.224, 0.225))
    pre = teacher.config.preprocess
    u = torch.rand(2, 3, 64, 64)                                     # an image in [0, 1] at the student's size
    student_in = (u - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    resized = F.interpolate(u, size=(pre.input_size,) * 2, mode=pre.interpolation, antialias=True,
                            align_corners=False)
    expected = (resized - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.allclose(wrapped.preprocess(student_in), expected, atol=1e-5)
    wrapped.train()
    assert not wrapped.training and not teacher.training
    assert not any(p.requires_grad for p in wrapped.parameters())


@pytest.mark.filterwarnings("ignore:.*TF 'SAME' padding")
def test_alpha_zero_is_plain_training_bitwise_and_the_teacher_is_untouched(photos):
    kw = dict(epochs=1, batch_size=4, image_size=64, recipe=effnet.train.RECIPES["finetune"].replace(
        head_only_epochs=0), workers=0, progress=False, seed=5)
    plain = fit("efficientnet_lite0", photos, **kw).model.state_dict()
    teacher = _student_like_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    zero = fit("efficientnet_lite0", photos, distill=Distillation(teacher=teacher, alpha=0.0), **kw).model.state_dict()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    half = fit("efficientnet_lite0", photos, distill=Distillation(teacher=teacher, alpha=0.5), **kw).model.state_dict()
    assert not all(torch.equal(plain[k], half[k]) for k in plain)    # the teacher does change training
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())   # BN statistics too


def test_class_lists_must_match_or_be_mapped(photos, tmp_path):
    imagenet_teacher = effnet.create_model("efficientnet_lite0").eval()       # 1000 ImageNet classes
    with pytest.raises(DistillError, match=r"teacher's 1000 classes differ from the data's 2 \(only the data has "
                                           r"\['ants', 'bees'\]"):
        fit("efficientnet_lite0", photos, epochs=1, batch_size=4, image_size=64, workers=0, progress=False,
            distill=Distillation(teacher=imagenet_teacher))
    names = effnet.data.imagenet_class_names()
    assert class_index(names, ["ants", "bees"], CLASS_MAP).tolist() == [310, 309]
    assert class_index(names, ["ants", "bees"], {"ants": 310, "bees": "bee"}).tolist() == [310, 309]
    with pytest.raises(DistillError, match="no teacher class for data class"):
        class_index(names, ["ants", "bees"], {"ants": "ant"})
    with pytest.raises(DistillError, match="'wasp'.*matches 0 teacher classes"):
        class_index(names, ["ants", "bees"], {"ants": "ant", "bees": "wasp"})
    (tmp_path / "map.json").write_text("{not json")
    with pytest.raises(DistillError, match="not JSON"):
        fit("efficientnet_lite0", photos, epochs=1, batch_size=4, image_size=64, workers=0, progress=False,
            distill=Distillation(teacher=imagenet_teacher, class_map=str(tmp_path / "map.json")))


def test_logit_cache_holds_the_teachers_eval_logits_and_refuses_what_it_does_not_match(photos, tmp_path):
    teacher = _student_like_teacher()
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder, class_names=["ants", "bees"])
    r = write_logit_cache(folder, photos, tmp_path / "cache.safetensors", workers=0, progress=False)
    assert r["images"] == 16 and r["fingerprint"] == teacher_fingerprint(effnet.from_pretrained(folder))
    cache = LogitCache(tmp_path / "cache.safetensors")
    one = photos / "train" / "bees" / sorted(os.listdir(photos / "train" / "bees"))[0]
    x = effnet.data.load_transformed(one, effnet.data.eval_transform(teacher.config))
    with torch.no_grad():
        direct = effnet.from_pretrained(folder)(x[None])[0]
    row, _ = cache.lookup[f"bees/{one.name}"]
    assert torch.allclose(cache.logits[row], direct, atol=1e-5)

    other = _student_like_teacher()
    torch.nn.init.normal_(other.classifier.weight)
    with pytest.raises(DistillError, match=r"written by teacher .*teacher \(weights [0-9a-f]{16}\), not by "
                                           r"EfficientNet \(weights [0-9a-f]{16}\)"):
        fit("efficientnet_lite0", photos, epochs=1, batch_size=4, image_size=64, workers=0, progress=False,
            distill=Distillation(teacher=other, cache=tmp_path / "cache.safetensors"))
    (photos / "train" / "ants" / "new.jpg").write_bytes(one.read_bytes())
    with pytest.raises(DistillError, match=r"1 training photo\(s\) are not in it \(first: ants/new.jpg\)"):
        fit("efficientnet_lite0", photos, epochs=1, batch_size=4, image_size=64, workers=0, progress=False,
            distill=Distillation(cache=tmp_path / "cache.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(DistillError, match="unreadable"):
        LogitCache(tmp_path / "junk.safetensors")


def test_pseudo_labels_are_the_teachers_soft_labels_thresholded_and_balanced(photos, tmp_path):
    folder = tmp_path / "teacher"
    _student_like_teacher().save_pretrained(folder, class_names=["ants", "bees"])
    out = tmp_path / "labels.parquet"
    r = pseudo_label(folder, tmp_path / "unlabeled", out, workers=0, progress=False, balance=False)
    labels = PseudoLabels(out)
    assert r["images"] == r["kept"] == len(labels.paths) == 12 and labels.classes == ["ants", "bees"]
    assert torch.allclose(labels.probs.sum(1), torch.ones(12), atol=1e-5)
    first = Path(labels.paths[0])
    x = effnet.data.load_transformed(first, effnet.data.eval_transform(effnet.from_pretrained(folder).config))
    with torch.no_grad():
        expected = effnet.from_pretrained(folder)(x[None]).softmax(1)[0]
    assert torch.allclose(labels.probs[0], expected, atol=1e-5)
    # balancing: each class is filled up to the largest by duplicating its most confident photos
    rows, copies = _balance(torch.tensor([0, 0, 0, 1, 1, 0]), torch.tensor([.9, .8, .7, .6, .95, .5]), 2)
    assert rows == [0, 1, 2, 5, 4, 3, 4, 3] and copies == [0, 0, 0, 0, 0, 0, 1, 1]
    confidence = labels.probs.max(1).values
    threshold = float(confidence.median())
    r = pseudo_label(folder, tmp_path / "unlabeled", out, workers=0, progress=False, threshold=threshold)
    kept = PseudoLabels(out)
    assert r["kept"] == int((confidence >= threshold).sum()) < 12
    assert (kept.probs.max(1).values >= threshold).all()
    per_class = torch.bincount(kept.probs.argmax(1), minlength=2)
    if min(r["per_class"].values()) > 0:                   # balanced: both classes as large as the largest
        assert per_class[0] == per_class[1] == max(r["per_class"].values()) and len(kept.paths) == r["rows"]
    with pytest.raises(DistillError, match="holds no images"):
        (tmp_path / "empty").mkdir()
        pseudo_label(folder, tmp_path / "empty", tmp_path / "x.parquet", workers=0, progress=False)
    (tmp_path / "junk.parquet").write_bytes(os.urandom(2048))
    with pytest.raises(DistillError, match="not readable Parquet"):
        PseudoLabels(tmp_path / "junk.parquet")


def test_pseudo_labels_of_another_teacher_are_refused_naming_both(photos, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _student_like_teacher().save_pretrained(a, class_names=["ants", "bees"])
    other = _student_like_teacher()
    torch.nn.init.normal_(other.classifier.weight)
    other.save_pretrained(b, class_names=["ants", "bees"])
    pseudo_label(a, tmp_path / "unlabeled", tmp_path / "l.parquet", workers=0, progress=False)
    fa, fb = (teacher_fingerprint(effnet.from_pretrained(f)) for f in (a, b))
    run = subprocess.run(EFFNET + ["train", "--model", "efficientnet_lite0", "--data", str(photos), "--epochs", "1",
                                   "--image-size", "64", "--workers", "0", "--unlabeled", str(tmp_path / "l.parquet"),
                                   "--teacher", str(b)], capture_output=True, text=True)
    assert run.returncode == 1                                       # one line, exit 1: a bad file
    assert f"made by teacher {a} (weights {fa}), not by {b} (weights {fb})" in run.stderr
    with pytest.raises(DistillError, match=r"labels classes \['ants', 'bees'\], the data has \['ants', 'bees', 'wasps'\]"):
        copy_subset(photos, tmp_path / "three", ("ants", "bees"), {"train": 2, "val": 1})
        (tmp_path / "three" / "train" / "wasps").mkdir()
        (tmp_path / "three" / "val" / "wasps").mkdir()
        for split in ("train", "val"):
            src = next((tmp_path / "three" / split / "ants").iterdir())
            (tmp_path / "three" / split / "wasps" / "w.jpg").write_bytes(src.read_bytes())
        fit("efficientnet_lite0", tmp_path / "three", epochs=1, batch_size=2, image_size=64, workers=0,
            progress=False, unlabeled=Unlabeled(tmp_path / "l.parquet"))


def _cmd(photos, out, extra):
    return EFFNET + ["train", "--model", "efficientnet_lite0", "--data", str(photos), "--epochs", "3",
                     "--batch-size", "4", "--image-size", "64", "--workers", "1", "--recipe", "finetune",
                     "--out", str(out), "--seed", "2"] + extra


@pytest.mark.parametrize("mode", ["distill", "noisy-student"])
def test_killed_distillation_and_noisy_student_runs_resume_identically(photos, tmp_path, mode):
    """The real ImageNet Lite0 teaches through a class map; killed runs resume to the same weights."""
    (tmp_path / "map.json").write_text(json.dumps(CLASS_MAP))
    teacher = ["--teacher", "tf_efficientnet_lite0"]
    if mode == "distill":
        extra = teacher + ["--kd-class-map", str(tmp_path / "map.json"), "--kd-temperature", "2"]
    else:
        made = subprocess.run(EFFNET + ["pseudo-label", str(tmp_path / "unlabeled"), "--teacher", "tf_efficientnet_lite0",
                                        "--data", str(photos), "--class-map", str(tmp_path / "map.json"), "--out",
                                        str(tmp_path / "l.parquet"), "--workers", "0"], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr[-2000:]
        assert "12 of 12 photos labeled by tf_efficientnet_lite0" in made.stdout
        extra = ["--unlabeled", str(tmp_path / "l.parquet"), "--unlabeled-ratio", "0.5", "--recipe", "noisy-student"]
    env = dict(os.environ, OMP_NUM_THREADS="1", EFFNET_OFFLINE="1")
    full = subprocess.run(_cmd(photos, tmp_path / "full", extra), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    ckpt = tmp_path / "killed" / "last.pt"
    assert kill_after_first_checkpoint(_cmd(photos, tmp_path / "killed", extra), ckpt, env) == -signal.SIGKILL
    assert torch.load(ckpt, weights_only=True)["epoch"] < 2
    resumed = subprocess.run(_cmd(photos, tmp_path / "killed", extra) + ["--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a[mode.split("-")[0] if mode == "distill" else "unlabeled"] is not None
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    # resuming with other settings is refused
    other = subprocess.run(_cmd(photos, tmp_path / "killed", extra + (["--kd-alpha", "0.9"] if mode == "distill" else
                                                                      ["--unlabeled-ratio", "2"])) + ["--resume"],
                           env=env, capture_output=True, text=True)
    assert other.returncode == 1 and "cannot resume" in other.stderr


def test_torchrun_distills_and_self_trains_with_a_teacher_per_process(photos, tmp_path):
    folder = tmp_path / "teacher"
    _student_like_teacher().save_pretrained(folder, class_names=["ants", "bees"])
    pseudo_label(folder, tmp_path / "unlabeled", tmp_path / "l.parquet", workers=0, progress=False, balance=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "effnet.cli", "train", "--model",
           "efficientnet_lite0", "--data", str(photos), "--epochs", "2", "--batch-size", "4", "--image-size", "64",
           "--workers", "0", "--recipe", "finetune", "--teacher", str(folder), "--unlabeled",
           str(tmp_path / "l.parquet"), "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2
    assert ckpt["distill"]["teacher"] == teacher_fingerprint(effnet.from_pretrained(folder))
    assert ckpt["unlabeled"]["labels"] == PseudoLabels(tmp_path / "l.parquet").sha256
    assert all(math.isfinite(h["train_loss"]) for h in ckpt["history"])


def test_noisy_student_recipe_carries_the_papers_noise():
    from effnet.train import RECIPES, TrainAugment

    r = RECIPES["noisy-student"]
    # Xie et al. 2020 Sec. 3: dropout 0.5, stochastic depth survival 0.8, RandAugment N=2, M=27
    assert (r.dropout, r.drop_path_rate, r.magnitude, r.augment) == (0.5, 0.2, 27.0, "randaugment")
    assert r.freeze_bn == RECIPES["finetune"].freeze_bn and r.train_size_scale == RECIPES["finetune"].train_size_scale
    aug = TrainAugment(64, (0.5,) * 3, (0.5,) * 3, "randaugment", magnitude=r.magnitude)
    assert aug.policy.__class__.__name__ == "RandAugment"
    with pytest.raises(ValueError, match="magnitude must be in"):
        r.replace(magnitude=31.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        r.replace(dropout=1.0)


@pytest.mark.parametrize("argv, needle", [
    (["--kd-class-map", "m.json"], "--kd-class-map needs --teacher"),
    (["--unlabeled-ratio", "2"], "--unlabeled-ratio needs --unlabeled"),
    (["--magnitude", "9"], "magnitude is RandAugment's; this recipe augments with 'autoaugment'"),
])
def test_distillation_flags_that_cannot_work_are_refused(argv, needle, photos, capsys):
    from effnet.cli import main

    try:
        code = main(["train", "--model", "efficientnet_lite0", "--data", str(photos), "--epochs", "1"] + argv)
    except SystemExit as e:
        code = e.code
    assert code not in (0, None) and needle in (str(code) + capsys.readouterr().err)
