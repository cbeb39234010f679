import json

import pytest

from effnet.cli import main


def test_models_table(capsys):
    assert main(["models", "*_b0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["name", "params"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["efficientnet_b0"][1:5] == ["5.29", "0.386", "224", "yes"]
    assert set(rows) == {"efficientnet_b0", "tf_efficientnet_b0"}


def test_info_lists_scaled_stages(capsys):
    assert main(["info", "efficientnet_b4"]) == 0
    out = capsys.readouterr().out
    assert "resolution 380 px" in out and "dropout 0.4" in out and "params 19,341,616" in out
    stage_rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    # stage, block, kernel, stride, expand, in, out, repeats, SE
    assert stage_rows[0] == ["1", "MBConv1", "3", "1", "1", "48", "24", "2", "12"]
    assert [r[6] for r in stage_rows] == ["24", "32", "56", "112", "160", "272", "448"]
    assert [r[7] for r in stage_rows] == ["2", "4", "4", "6", "6", "8", "2"]
    assert "resize shorter side to 412 px" in out


def test_unknown_model_suggests(capsys):
    assert main(["info", "efficientnet_b10"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_predict_reports_and_skips_bad_files(tmp_path, data, capsys):
    images = data / "imagenet-samples" / "images"
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    argv = ["predict", str(images / "n01443537_goldfish.JPEG"), str(images / "n01484850_great_white_shark.JPEG"),
            str(tmp_path / "broken.jpg"), "--model", "efficientnet_lite0", "--topk", "3", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == ["n01443537_goldfish.JPEG",
                                                               "n01484850_great_white_shark.JPEG"]
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "skipped: cannot decode image" in captured.err and "broken.jpg" in captured.err
    assert "2 images (1 skipped)" in captured.err
