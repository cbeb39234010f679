"""The alpha/beta/gamma grid search and the sweeps: the grid against Eq. 3, and tiny real
searches on flowers12 photos, in process and on Ray Tune, killed and continued."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image
from conftest import copy_subset, csv_rows

from effnet import search as S
from effnet.scaling import candidate_grid, flops_factor, grid_values

EFFNET = [sys.executable, "-m", "effnet.cli"]
TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0"]


@pytest.fixture()
def proxy(tmp_path, data):
    """2 flower species from flowers12, 4 train and 2 val photos each."""
    return copy_subset(data / "proxy" / "flowers12", tmp_path / "proxy", ("daisy", "sunflower"),
                       {"train": 4, "val": 2})


def test_grid_values_are_exact_and_inclusive():
    assert grid_values(1.0, 1.4, 0.05) == (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4)
    assert grid_values(1.2, 1.2, 1.0) == (1.2,)
    with pytest.raises(ValueError, match="below its start"):
        grid_values(1.4, 1.0, 0.05)


def test_candidate_grid_keeps_eq3_products_within_tolerance():
    grid = candidate_grid()                                     # the default grid, target 2, tolerance 0.1
    assert (1.2, 1.1, 1.15) in grid                             # the paper's winner is a candidate
    assert all(abs(flops_factor(*c) - 2) <= 0.1 + 1e-12 for c in grid)
    everything = [(a, b, g) for a in grid_values(1.0, 1.4, 0.05) for b in grid_values(1.0, 1.3, 0.05)
                  for g in grid_values(1.0, 1.3, 0.05)]
    assert len(grid) == sum(abs(flops_factor(*c) - 2) <= 0.1 + 1e-12 for c in everything)
    spread = candidate_grid(max_trials=6)
    assert len(spread) == 6 and set(spread) <= set(grid) and (1.2, 1.1, 1.15) in spread
    # spread over the grid: the six span the alpha and beta ranges of the candidates
    assert {min(c[0] for c in spread), max(c[0] for c in spread)} == {min(c[0] for c in grid), max(c[0] for c in grid)}


def test_grid_without_candidates_names_the_closest_product():
    with pytest.raises(ValueError, match=r"closest is alpha=1, beta=1, gamma=1.1 with 1.2100"):
        candidate_grid(alpha=(1.0, 1.0, 0.1), beta=(1.0, 1.0, 0.1), gamma=(1.0, 1.1, 0.05))


def test_paper_reward_scores():
    rows = [{"status": "done", "top1": 80.0, "macs": 100, "latency_ms": 2.0},
            {"status": "done", "top1": 80.0, "macs": 400, "latency_ms": 8.0},
            {"status": "done", "top1": 80.0, "macs": 200, "latency_ms": 4.0},
            {"status": "failed: x", "top1": None, "macs": 50, "latency_ms": None}]
    top1 = S.objective_scores(rows, "top1")
    macs = S.objective_scores(rows, "macs")                       # T = median MACs = 200
    assert top1 == [80.0, 80.0, 80.0, None]
    assert macs[2] == pytest.approx(80.0) and macs[0] == pytest.approx(80.0 * 0.5 ** -0.07)
    assert macs[1] == pytest.approx(80.0 * 2 ** -0.07) and macs[3] is None
    assert S.objective_scores(rows, "latency")[:3] == pytest.approx(macs[:3])
    with pytest.raises(ValueError, match="objective"):
        S.objective_scores(rows, "speed")


def test_sweep_trials_follow_fig3_and_share_the_baseline():
    trials = S.sweep_trials("efficientnet_b0", 64, max_macs=1e8, num_classes=2)
    dims = {t.dim for t in trials}
    assert dims == {"width", "depth", "resolution", "compound"}
    baseline = [t for t in trials if (t.width, t.depth, t.resolution) == (1.0, 1.0, 64)]
    assert len(baseline) == 4 and len({t.name for t in baseline}) == 1      # one network, trained once
    assert all(S.trial_macs("efficientnet_b0", t, 2) <= 1e8 for t in trials)
    with pytest.raises(ValueError, match="cheapest"):
        S.sweep_trials("efficientnet_b0", 64, max_macs=1e3)
    with pytest.raises(ValueError, match="unknown sweep dimension"):
        S.sweep_trials("efficientnet_b0", 64, dims=("height",))


def _check_study(out, image, kind):
    rows = csv_rows(out / "trials.csv")
    assert list(rows[0]) == S.TRIAL_COLUMNS + (["score"] if kind == "search" else [])
    assert all(r["status"] == "done" for r in rows)
    for r in rows:
        assert 0 <= float(r["top1"]) <= 100 and int(r["params"]) > 0 and int(r["macs"]) > 0
        assert float(r["latency_ms"]) > 0 and float(r["seconds"]) > 0
    with Image.open(out / image) as im:
        assert im.format == "PNG" and im.size[0] > 100
    return rows


def _counted_macs(net, size: int) -> int:
    """MACs of one (1, 3, size, size) image by torch.utils.flop_counter (FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def test_search_in_process_writes_trials_and_plot(proxy, tmp_path):
    out = tmp_path / "search"
    cmd = EFFNET + ["search", "--model", "efficientnet_b0", "--data", str(proxy), "--out", str(out), "--runner",
                    "local", "--max-trials", "2"] + TINY
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _check_study(out, "search.png", "search")
    assert len(rows) == 2
    for row in rows:
        assert abs(float(row["alpha"]) * float(row["beta"]) ** 2 * float(row["gamma"]) ** 2 - 2) <= 0.1
        assert float(row["flops_factor"]) == pytest.approx(flops_factor(float(row["alpha"]), float(row["beta"]),
                                                                        float(row["gamma"])))
        assert int(row["resolution"]) % 8 == 0
        # the trained network's real cost over the baseline, counted by torch's FLOP counter
        base = S.create_model("efficientnet_b0", num_classes=2).eval()
        net = S.create_model("efficientnet_b0", num_classes=2, scaling=S.Trial(**{
            "name": row["trial"], "dim": "search", "width": float(row["width"]), "depth": float(row["depth"]),
            "resolution": int(row["resolution"])}).scaling).eval()
        assert float(row["macs_factor"]) == pytest.approx(
            _counted_macs(net, int(row["resolution"])) / _counted_macs(base, 32), abs=1e-4)
    assert "note: Eq. 3's alpha * beta^2 * gamma^2 = 2 +/- 0.1 is nominal" in r.stdout
    assert [float(x["score"]) for x in rows] == sorted((float(x["score"]) for x in rows), reverse=True)
    assert "winner: alpha=" in r.stdout and "the paper's (1.2, 1.1, 1.15) ranks" in r.stdout
    # a second run trains nothing and gives the same table
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "2 of 2 networks already trained; training 0" in again.stdout
    assert csv_rows(out / "trials.csv") == rows


def test_killed_search_trains_only_the_rest(proxy, tmp_path):
    out = tmp_path / "search"
    cmd = EFFNET + ["search", "--model", "efficientnet_b0", "--data", str(proxy), "--out", str(out), "--runner",
                    "local", "--max-trials", "3", "--epochs", "2", "--image-size", "32", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    first = second = None
    while proc.poll() is None and time.time() < deadline:            # kill once the first trial is done
        done = sorted(out.glob("trials/*/result.json"))                 # and the next has its first epoch
        if done:
            first = done[0]
            started = [p for p in out.glob("trials/*/last.pt") if p.parent != first.parent]
            if started:
                second = started[0].parent
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first is not None and second is not None, "the search did not reach its second trial"
    assert not (second / "result.json").exists()
    partial = {r["trial"]: r["status"] for r in csv_rows(out / "trials.csv")}     # the table so far survives
    assert len(partial) == 3 and partial[first.parent.name] == "done" and partial[second.name] == "not run"
    before = first.read_bytes(), first.stat().st_mtime_ns, (first.parent / "metrics.csv").read_bytes()

    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 3 networks already trained; training 2" in r.stdout
    assert "resumed from" in r.stdout                                   # the half-finished trial
    assert (first.read_bytes(), first.stat().st_mtime_ns, (first.parent / "metrics.csv").read_bytes()) == before
    assert [int(x["epoch"]) for x in csv_rows(second / "metrics.csv")] == [1, 2]
    assert len(csv_rows(out / "trials.csv")) == 3


def test_search_on_ray_tune(proxy, tmp_path):
    from effnet.search import ray_available

    assert ray_available(), "ray[tune] is part of the test extras: the Ray path must run here"

    out = tmp_path / "search"
    r = subprocess.run(EFFNET + ["search", "--model", "efficientnet_b0", "--data", str(proxy), "--out", str(out),
                                 "--runner", "ray", "--max-trials", "2", "--cpus-per-trial", "1"] + TINY,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(ray, 1 CPU(s) per trial)" in r.stdout
    rows = _check_study(out, "search.png", "search")
    assert len(rows) == 2
    assert (out / "ray" / "trials").is_dir()                            # Ray Tune's own experiment folder


def test_ray_starts_the_costliest_trials_first(proxy, tmp_path, monkeypatch):
    """Longest-processing-time first: Ray gets the pending trials in decreasing MACs, and the
    rows still come back in the order asked."""
    seen = []
    monkeypatch.setattr(S, "_run_ray", lambda trials, *a, **k: seen.extend(trials) or {})
    trials = S.sweep_trials("efficientnet_b0", 32, dims=("width", "resolution"),
                            values={"width": [1.0, 1.8], "resolution": [1.0, 2.0]})
    settings = S.TrialSettings(model="efficientnet_b0", data=str(proxy), epochs=1, image_size=32)
    rows, trained = S.run_trials(trials, settings, tmp_path / "s", runner="ray", log=lambda s: None)
    macs = [S.trial_macs("efficientnet_b0", t, 2) for t in seen]
    assert len(seen) == 3 and macs == sorted(macs, reverse=True) and len(set(macs)) == 3
    assert [r["trial"] for r in rows] == [t.name for t in trials]
    assert trained == 0 and {r["status"] for r in rows} == {"not run"}     # the stand-in trained nothing


def test_sweep_two_points(proxy, tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run(EFFNET + ["sweep", "--model", "efficientnet_b0", "--data", str(proxy), "--out", str(out),
                                 "--runner", "local", "--dims", "width", "--width", "1,1.4"] + TINY,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _check_study(out, "sweep.png", "sweep")
    assert [(r["dim"], float(r["width"]), int(r["resolution"])) for r in rows] == [("width", 1.0, 32),
                                                                                   ("width", 1.4, 32)]
    assert int(rows[1]["macs"]) > int(rows[0]["macs"])


def _fail(args, proxy, tmp_path):
    r = subprocess.run(EFFNET + args, capture_output=True, text=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stderr


def test_bad_searches_are_refused(proxy, tmp_path):
    base = ["search", "--model", "efficientnet_b0", "--runner", "local"] + TINY
    err = _fail(base + ["--data", str(proxy), "--out", str(tmp_path / "a"), "--grid",
                        "alpha=1.0:1.05:0.05,beta=1.0:1.0:0.1,gamma=1.0:1.0:0.1"], proxy, tmp_path)
    assert "closest is alpha=1.05, beta=1, gamma=1 with 1.0500" in err

    one = tmp_path / "one"
    shutil.copytree(proxy / "train" / "daisy", one / "daisy")
    err = _fail(base + ["--data", str(one), "--out", str(tmp_path / "b")], proxy, tmp_path)
    assert "at least 2 classes" in err

    err = _fail(base + ["--data", str(proxy), "--out", str(tmp_path / "c"), "--budget-minutes", "0.00001"],
                proxy, tmp_path)
    assert "cannot finish one epoch" in err and not list((tmp_path / "c").glob("trials/*/last.pt"))
    assert not (tmp_path / "c" / "study.json").exists()          # a refused run records no study

    err = _fail(base + ["--data", str(proxy), "--out", str(tmp_path / "e"), "--image-size", "16"], proxy, tmp_path)
    assert "below efficientnet_b0's total stride of 32 px" in err and not (tmp_path / "e").exists()

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "study.json").write_text("[]")
    err = _fail(base + ["--data", str(proxy), "--out", str(tmp_path / "f")], proxy, tmp_path)
    assert "is not an effnet study" in err

    out = tmp_path / "d"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({**json.loads(json.dumps({"kind": "search"})),
                                                "grid": {"alpha": [1.0, 1.2, 0.1], "beta": [1.0, 1.3, 0.05],
                                                         "gamma": [1.0, 1.3, 0.05]}}))
    err = _fail(base + ["--data", str(proxy), "--out", str(out)], proxy, tmp_path)
    assert "holds another search's results" in err and "grid:" in err and "[1.0, 1.2, 0.1]" in err


def test_failed_trials_are_rows_not_the_end_of_the_search(proxy, tmp_path, monkeypatch):
    from effnet.train.loop import NonFiniteLossError

    trials = S.search_trials(32, max_trials=2)
    settings = S.TrialSettings(model="efficientnet_b0", data=str(proxy), epochs=1, image_size=32, batch_size=4)
    real_fit = S.fit

    def first_diverges(net, *args, **kwargs):          # what fit raises when a trial's loss turns NaN
        if kwargs["out"].name == trials[0].name:
            raise NonFiniteLossError("training stopped: the loss is nan at step 1")
        return real_fit(net, *args, **kwargs)

    monkeypatch.setattr(S, "fit", first_diverges)
    rows, trained = S.run_trials(trials, settings, tmp_path / "s", runner="local", cpus_per_trial=1,
                                 log=lambda s: None)
    assert trained == 1 and [r["trial"] for r in rows] == [t.name for t in trials]
    assert rows[0]["status"] == "failed: NonFiniteLossError: training stopped: the loss is nan at step 1"
    assert rows[1]["status"] == "done" and rows[1]["top1"] is not None
    assert [p.parent.name for p in (tmp_path / "s").glob("trials/*/result.json")] == [trials[1].name]
    monkeypatch.setattr(S, "fit", real_fit)
    # a local Ray instance cannot grow: asking for more than the machine has is refused, not waited on
    with pytest.raises(ValueError, match="Ray would wait for ever"):
        S.run_trials(trials, settings, tmp_path / "r", runner="ray", cpus_per_trial=(os.cpu_count() or 1) + 1)
    with pytest.raises(ValueError, match="GPU"):
        S.run_trials(trials, settings, tmp_path / "r", runner="ray", cpus_per_trial=1, gpus_per_trial=64)
    with pytest.raises(ValueError, match="--gpus-per-trial 1, --trials-per-node 2 set"):
        S.run_trials(trials, settings, tmp_path / "r", runner="local", gpus_per_trial=1, trials_per_node=2)
    # a damaged result file is named, not a traceback
    bad = tmp_path / "s" / "trials" / trials[0].name / "result.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    for text in ("garbage", "{}"):
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"{bad}.*delete its trial folder"):
            S.run_trials(trials, settings, tmp_path / "s", runner="local", cpus_per_trial=1, log=lambda s: None)
