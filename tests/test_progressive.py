"""Progressive learning (EfficientNetV2 paper Sec. 4.2, Algorithm 1, Table 6; google/automl
efficientnetv2/main.py for the ``automl`` variant): the schedules, the batched mixup/CutMix,
and a real (tiny) run that records its schedule and resumes exactly."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from effnet.train import RECIPES, MixBatch, Progressive, fit, progressive_preset

from conftest import copy_subset, csv_rows, kill_after_first_checkpoint

EFFNET = [sys.executable, "-m", "effnet.cli"]


def test_paper_schedule_is_algorithm_1_with_table_6_endpoints():
    s = progressive_preset("efficientnetv2_s")
    assert (s.min_size, s.max_size, s.min_magnitude, s.max_magnitude, s.min_dropout, s.max_dropout) == \
           (128, 300, 5, 15, 0.1, 0.3)                    # Table 6, EfficientNetV2-S
    vals = [s.values(i) for i in range(4)]
    assert [v.image_size for v in vals] == [128, 185, 243, 300]        # 128 + 172 * i / 3
    assert [round(v.magnitude, 2) for v in vals] == [5.0, 8.33, 11.67, 15.0]
    assert [round(v.dropout, 4) for v in vals] == [0.1, 0.1667, 0.2333, 0.3]
    m, l = progressive_preset("tf_efficientnetv2_m"), progressive_preset("efficientnetv2_l")
    assert (m.max_size, m.max_magnitude, m.max_mixup, m.max_dropout) == (380, 20, 0.2, 0.4)
    assert (l.max_size, l.max_magnitude, l.max_mixup, l.max_dropout) == (380, 25, 0.4, 0.5)


def test_automl_schedule_is_the_released_code():
    # main.py: image_size = int(ibase + (size - ibase) * (i + 1) / stages), ram and mixup
    # on linspace, cutmix = mixup, dropout left at its maximum.
    s = progressive_preset("efficientnetv2_m", "automl")
    vals = [s.values(i) for i in range(4)]
    assert [v.image_size for v in vals] == [191, 254, 317, 380]
    assert [round(v.mixup, 4) for v in vals] == [0.0, 0.0667, 0.1333, 0.2]
    assert [v.cutmix for v in vals] == [v.mixup for v in vals]
    assert {v.dropout for v in vals} == {0.4}
    assert [progressive_preset("efficientnetv2_s", "automl").values(i).image_size for i in range(4)] == \
           [171, 214, 257, 300]


def test_stages_split_the_epochs_evenly():
    s = Progressive(stages=4)
    assert [s.stage_of(e, 10) for e in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [s.stage_of(e, 4) for e in range(4)] == [0, 1, 2, 3]


def test_preset_ends_at_the_runs_size_keeping_the_ratio():
    s = progressive_preset("efficientnetv2_b0", max_size=96)
    assert (s.min_size, s.max_size) == (40, 96)           # 96 * 128 / 300 = 41 -> multiple of 8
    assert progressive_preset("efficientnetv2_b0", max_size=96, min_size=32).min_size == 32


def test_bad_schedules_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="needs at least 4 epochs, the run has 3"):
        Progressive(stages=4).check_epochs(3)
    with pytest.raises(ValueError, match="min_size 300 is above max_size 128"):
        Progressive(min_size=300, max_size=128)
    with pytest.raises(ValueError, match="min_dropout 0.5 is above max_dropout 0.3"):
        Progressive(min_dropout=0.5)
    with pytest.raises(ValueError, match="max_magnitude must be a number in"):
        Progressive(max_magnitude=40)
    with pytest.raises(ValueError, match="stages must be an int >= 1"):
        Progressive(stages=0)
    with pytest.raises(ValueError, match="'paper' or 'automl'"):
        Progressive(variant="fast")


def test_mixup_mixes_by_beta_lambdas_and_the_loss_follows():
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    out, (a, b, lam) = MixBatch(mixup=0.2, cutmix=0.0)(x, y)
    assert torch.equal(a, y)
    for i in range(6):
        j = int(b[i])
        torch.testing.assert_close(out[i], (1 - lam[i]) * x[i] + lam[i] * x[j])
    # Beta(0.2, 0.2) piles its mass near 0 and 1; uniform would not.
    lams = torch.cat([MixBatch(0.2, 0.0)(x, y)[1][2] for _ in range(200)])
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.5
    logits = torch.randn(6, 6)
    manual = ((1 - lam) * torch.nn.functional.cross_entropy(logits, a, reduction="none")
              + lam * torch.nn.functional.cross_entropy(logits, b, reduction="none")).mean()
    torch.testing.assert_close(MixBatch.loss(logits, (a, b, lam)), manual)


def test_cutmix_lambda_is_the_pasted_area():
    torch.manual_seed(1)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    y = torch.arange(4)
    out, (a, b, lam) = MixBatch(mixup=0.0, cutmix=1.0)(x, y)
    for i in range(4):
        pasted = (out[i, 0] == float(b[i])).float().mean() if b[i] != a[i] else lam[i]
        assert abs(float(pasted) - float(lam[i])) < 1e-6


def test_v2_recipe():
    r = RECIPES["v2"]
    assert (r.optimizer, r.lr_per_256, r.warmup_epochs, r.decay_rate, r.decay_epochs) == ("rmsprop_tf", 0.016, 5.0,
                                                                                           0.97, 2.4)
    assert (r.ema_decay, r.drop_path_rate, r.weight_decay, r.label_smoothing) == (0.9999, 0.2, 1e-5, 0.1)
    assert (r.augment, r.progressive) == ("randaugment", "paper")


# ---- real runs -----------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path, data):
    return copy_subset(data / "finetune" / "hymenoptera_data", tmp_path / "set", ("ants", "bees"),
                       {"train": 8, "val": 4})


def test_tiny_progressive_run_writes_its_schedule(photos, tmp_path):
    schedule = Progressive(stages=2, min_size=32, max_size=48, min_magnitude=5, max_magnitude=10,
                           min_mixup=0.0, max_mixup=0.2, min_dropout=0.1, max_dropout=0.3, variant="paper")
    r = fit("efficientnetv2_b0", photos, epochs=2, batch_size=4, recipe="v2", progressive=schedule,
            out=tmp_path / "run", workers=0, progress=False)
    rows = csv_rows(tmp_path / "run" / "metrics.csv")
    assert [(int(r["image_size"]), float(r["magnitude"]), float(r["mixup"]), float(r["dropout"])) for r in rows] == \
           [(32, 5.0, 0.0, 0.1), (48, 10.0, 0.2, 0.3)]
    assert r.model.dropout.p == 0.3 and len(r.history) == 2
    assert all(float(row["train_loss"]) > 0 for row in rows)


def test_progressive_with_too_few_epochs_is_refused_before_training(photos, tmp_path):
    with pytest.raises(ValueError, match="4 stages needs at least 4 epochs, the run has 2"):
        fit("efficientnetv2_b0", photos, epochs=2, batch_size=4, recipe="v2", image_size=48,
            out=tmp_path / "run", workers=0, progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
    bad = subprocess.run(EFFNET + ["train", "--model", "efficientnetv2_b0", "--data", str(photos), "--epochs", "2",
                                   "--progressive", "paper", "--progressive-min-size", "64",
                                   "--progressive-max-size", "32"], capture_output=True, text=True)
    assert bad.returncode != 0 and "min_size 64 is above max_size 32" in bad.stderr


def _cmd(data, out):
    return EFFNET + ["train", "--model", "efficientnetv2_b0", "--data", str(data), "--epochs", "3",
                     "--batch-size", "4", "--workers", "1", "--out", str(out), "--seed", "3", "--recipe", "v2",
                     "--progressive-stages", "2", "--progressive-min-size", "32", "--progressive-max-size", "48",
                     "--progressive-max-mixup", "0.2"]


def test_run_killed_in_stage_2_resumes_identical(photos, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(_cmd(photos, tmp_path / "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    ckpt = tmp_path / "killed" / "last.pt"
    assert kill_after_first_checkpoint(_cmd(photos, tmp_path / "killed"), ckpt, env) == -signal.SIGKILL
    assert torch.load(ckpt, weights_only=False)["epoch"] < 2       # cut short; epochs 2-3 are stage 2
    resumed = subprocess.run(_cmd(photos, tmp_path / "killed") + ["--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    sizes = [int(r["image_size"]) for r in csv_rows(tmp_path / "killed" / "metrics.csv")]
    assert sizes == [32, 48, 48] and [r["mixup"] for r in csv_rows(tmp_path / "killed" / "metrics.csv")][-1] == "0.2"
