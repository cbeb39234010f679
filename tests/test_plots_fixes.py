"""Reviewed defects of the figures, the step-1 grid and the search/sweep/cam/plot commands:
constant CAMs, the grid's size cap, the tolerance hint, --grid/--dims parsing, cam's output
names and figure file extensions."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.cli import main
from effnet.plots import plot_trials, upsample_cam
from effnet.scaling import MAX_GRID_POINTS, candidate_grid

# ---- upsample_cam: a constant map is zeros, not stretched float noise ------------------------------


def test_upsample_cam_constant_maps_give_zeros():
    one = upsample_cam(torch.full((1, 1, 1), 3.7), 224)            # a 32 px model's 1x1 map
    assert one.shape == (1, 224, 224) and torch.equal(one, torch.zeros(1, 224, 224))
    # constant 7x7 maps (B0's last stage at 224 px) drawn at other sizes: bilinear weights that
    # do not sum to exactly 1 in float32 leave ~1e-7 of noise, which must not become 0..1
    flat = torch.stack([torch.full((7, 7), 0.1), torch.full((7, 7), 3.7), torch.full((7, 7), -123.456)])
    for size in (240, 260, (300, 200)):
        up = upsample_cam(flat, size)
        assert torch.equal(up, torch.zeros_like(up)), size
    # real maps are still stretched to 0..1, on a large offset or at a tiny scale
    g = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.randn(7, 7, generator=g) + 50.0, torch.randn(7, 7, generator=g) * 1e-8])
    up = upsample_cam(maps, 224)
    for m in up:
        assert m.min() == 0 and m.max() == 1


# ---- the step-1 grid: size cap and the tolerance hint ---------------------------------------------

def test_candidate_grid_refuses_too_many_points_before_building():
    # 101 values per axis: 1,030,301 points, just over the cap (was built and searched)
    with pytest.raises(ValueError, match=r"101 x 101 x 101 = 1,030,301 points, more than 1,000,000; use larger "
                                         r"steps or narrower ranges \(max_trials"):
        candidate_grid(alpha=(1.0, 2.0, 0.01), beta=(1.0, 2.0, 0.01), gamma=(1.0, 2.0, 0.01), max_trials=5)
    assert MAX_GRID_POINTS == 1_000_000
    # the reviewer's grid (1.25e11 points, was a MemoryError) is refused at once
    with pytest.raises(ValueError, match=r"5,001 x 5,001 x 5,001 = 125,075,015,001 points"):
        candidate_grid(alpha=(1.0, 2.0, 0.0002), beta=(1.0, 2.0, 0.0002), gamma=(1.0, 2.0, 0.0002))
    # exactly at the cap is still searched
    grid = candidate_grid(alpha=(1.0, 1.99, 0.01), beta=(1.0, 1.99, 0.01), gamma=(1.0, 1.99, 0.01), max_trials=3)
    assert len(grid) == 3


def test_cli_search_refuses_a_huge_grid(data, tmp_path, capsys):
    out = tmp_path / "study"
    fine = "alpha=1:2:0.0002,beta=1:2:0.0002,gamma=1:2:0.0002"
    assert main(["search", "--model", "efficientnet_b0", "--data", str(data / "proxy" / "flowers12"),
                 "--out", str(out), "--runner", "local", "--grid", fine]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the alpha x beta x gamma grid has 5,001 x 5,001 x 5,001") and "\n" not in err
    assert "--max-trials" in err and not out.exists()


def _suggested(**kw) -> str:
    with pytest.raises(ValueError, match="use a tolerance of at least") as e:
        candidate_grid(**kw)
    return re.search(r"at least (\S+)$", str(e.value)).group(1)


@pytest.mark.parametrize("target,tolerance,expected", [
    (1.3334, 0.1, "0.124"),         # off by 0.1234: 0.123 (rounded down) was refused
    (1.21 + 3e-7, 0.0, "0.0000003"),  # off by 3e-7: "at least 0.000" was no tolerance at all
    (1.2109, 0.0, "0.0009"),
])
def test_suggested_tolerance_is_accepted(target, tolerance, expected):
    one = dict(alpha=(1.0, 1.0, 1.0), beta=(1.0, 1.0, 1.0), gamma=(1.1, 1.1, 1.0), target=target)
    hint = _suggested(tolerance=tolerance, **one)
    assert hint == expected
    assert candidate_grid(tolerance=float(hint), **one) == [(1.0, 1.0, 1.1)]


# ---- effnet search --grid / effnet sweep --dims ----------------------------------------------------

def test_cli_search_refuses_a_name_given_twice_in_grid(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", "efficientnet_b0", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
              "--grid", "alpha=1.0:1.4:0.05,alpha=1.2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --grid: alpha is given twice" in err and "at most once" in err


@pytest.mark.parametrize("dims", [",", " , ,", ""])
def test_cli_sweep_empty_dims_says_none_given(tmp_path, capsys, dims):
    assert main(["sweep", "--model", "efficientnet_b0", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o"), "--dims", dims]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --dims {dims!r} names no dimension; give a comma list of any of "
                          f"width,depth,resolution,compound") and "\n" not in err
    assert not (tmp_path / "o").exists()


# ---- effnet cam: every written file has its own name -----------------------------------------------

def _photo(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _size(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_cli_cam_names_never_collide(tmp_path, capsys):
    photos = tmp_path / "photos"
    _photo(photos / "cam_grid.jpg", 0)                 # a photo named like the grid figure
    _photo(photos / "a" / "x.jpg", 1)                  # one stem in two folders
    _photo(photos / "b" / "x.png", 2)
    out = tmp_path / "out"
    assert main(["cam", str(photos), "--model", "efficientnet_b0", "--out", str(out), "--topk", "2"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cam_grid.png", "cam_grid_2.png", "x.png", "x_2.png"]
    listed = re.search(r"wrote 4 PNGs \(0 images skipped\): (.*)", err).group(1).split(", ")
    assert len(set(listed)) == 4 and set(listed) == {str(p) for p in out.iterdir()}
    w, h = _size(out / "cam_grid.png")                 # the grid: 3 image rows, 2 columns
    assert h > w
    w, h = _size(out / "cam_grid_2.png")               # cam_grid.jpg's own figure: one model row
    assert w > h


def test_cli_cam_never_overwrites_an_input(tmp_path, capsys):
    photo = _photo(tmp_path / "p.png", 3)
    before = photo.read_bytes()
    assert main(["cam", str(photo), "--model", "efficientnet_b0", "--out", str(tmp_path)]) == 0
    assert photo.read_bytes() == before and _size(tmp_path / "p_2.png")[0] > 400
    assert str(tmp_path / "p_2.png") in capsys.readouterr().err
    # a grid named like the input folder's cam_grid.png moves aside too
    grid_photo = _photo(tmp_path / "in" / "cam_grid.png", 4)
    other = _photo(tmp_path / "in" / "q.png", 5)
    before = grid_photo.read_bytes()
    assert main(["cam", str(grid_photo), str(other), "--model", "efficientnet_b0", "--out", str(tmp_path / "in")]) == 0
    assert grid_photo.read_bytes() == before
    assert {p.name for p in (tmp_path / "in").iterdir()} == {"cam_grid.png", "q.png", "cam_grid_2.png",
                                                              "cam_grid_3.png", "q_2.png"}
    with pytest.raises(SystemExit) as e:
        main(["cam", str(photo), "--model", "efficientnet_b0", "--out", str(tmp_path / "o"), "--figure", str(photo)])
    assert "is one of the input images" in str(e.value.code)


# ---- figures are PNG: other extensions are refused, before any work ------------------------------

def test_cli_cam_refuses_a_figure_that_is_not_png(tmp_path):
    photo = _photo(tmp_path / "p.png", 6)
    with pytest.raises(SystemExit) as e:
        main(["cam", str(photo), "--model", "efficientnet_b0", "--out", str(tmp_path / "o"),
              "--figure", str(tmp_path / "fig.jpg")])
    assert str(e.value.code).startswith("error: --figure: figure file") and "must end in .png" in str(e.value.code)
    assert not (tmp_path / "o").exists() and not (tmp_path / "fig.jpg").exists()


def _trials_csv(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trials.csv").write_text("alpha,beta,gamma,macs,top1,status\n1.2,1.1,1.15,7e8,41.5,done\n"
                                       "1.4,1.0,1.1,6.7e8,38.0,done\n")
    return folder


@pytest.mark.parametrize("name", ["x.jpg", "x.pdf", "x"])
def test_plot_refuses_names_that_are_not_png(tmp_path, capsys, name):
    run = _trials_csv(tmp_path / "run")
    assert main(["plot", "run", str(run), "--out", str(tmp_path / name)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: figure file {tmp_path / name} must end in .png (figures are written as PNG); give a " \
                  f"name like x.png"
    assert not (tmp_path / name).exists()
    assert main(["plot", "family", "--out", str(tmp_path / name)]) == 1
    assert "must end in .png" in capsys.readouterr().err and not (tmp_path / name).exists()
    with pytest.raises(ValueError, match="must end in .png"):
        plot_trials(run / "trials.csv", tmp_path / name)
    # .png in any case is a PNG
    assert main(["plot", "run", str(run), "--out", str(tmp_path / "S.PNG")]) == 0
    assert (tmp_path / "S.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
