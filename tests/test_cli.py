import json

import pytest

from effnet.cli import main


def test_models_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))                 # an empty cache
    assert main(["models", "*_b0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "family", "EfficientNet", "params"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert rows["efficientnet_b0"].split()[1:6] == ["EfficientNet", "yes", "5.29", "0.386", "224"]
    assert rows["efficientnet_b0"].endswith("timm: downloadable, torchvision: downloadable")
    assert set(rows) == {"efficientnet_b0", "tf_efficientnet_b0", "efficientnetv2_b0", "tf_efficientnetv2_b0"}
    assert rows["tf_efficientnetv2_b0"].split()[1:6] == ["EfficientNetV2", "yes", "7.14", "0.718", "224"]
    assert rows["tf_efficientnetv2_b0"].endswith("timm: downloadable")


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
    err = capsys.readouterr().err
    assert "Did you mean" in err and "`effnet models`" in err


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


def test_evaluate_on_labels_csv_with_reference_weights(data, capsys):
    weights = data / "reference" / "torchvision_efficientnet_b0.pth"
    argv = ["evaluate", "--model", "efficientnet_b0", "--weights", str(weights),
            "--data", str(data / "imagenet-samples" / "labels.csv"), "--json", "--workers", "0"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 304 and r["skipped"] == 0 and r["images_per_s"] > 0
    # The reference weights are untrained (SOURCES.md): accuracy is at chance, top-5 >= top-1.
    assert 0 <= r["top1"] <= r["top5"] <= 5.0


def test_evaluate_on_folder_counts_unreadable_images(tmp_path, data, capsys):
    for cls in ("ants", "bees"):
        (tmp_path / cls).mkdir()
        for f in sorted((data / "finetune" / "hymenoptera_data" / "val" / cls).iterdir())[:3]:
            (tmp_path / cls / f.name).write_bytes(f.read_bytes())
    (tmp_path / "bees" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    tflite = data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite"
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        assert main(["evaluate", "--model", "efficientnet_lite0", "--weights", str(tflite),
                     "--data", str(tmp_path), "--json", "--workers", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 6 and r["skipped"] == 1


def test_predict_with_weights_and_saved_folder(tmp_path, data, capsys):
    import effnet

    weights = data / "reference" / "lukemelas_efficientnet-b0.pth"
    image = data / "imagenet-samples" / "images" / "n01443537_goldfish.JPEG"
    assert main(["predict", str(image), "--model", "tf_efficientnet_b0", "--weights", str(weights), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(first) == 5 and isinstance(first[0]["name"], str)
    model = effnet.create_model("efficientnet_lite0", num_classes=None,
                                weights=data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite")
    model.save_pretrained(tmp_path / "best", class_names=["AD", "CN", "MCI"])
    assert main(["predict", str(image), "--weights", str(tmp_path / "best"), "--topk", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert sorted(t["name"] for t in top) == ["AD", "CN", "MCI"]
    assert abs(sum(t["prob"] for t in top) - 1.0) < 1e-4


def test_bad_weight_file_is_an_error_not_a_traceback(tmp_path, data, capsys):
    (tmp_path / "empty.pth").write_bytes(b"")
    image = data / "imagenet-samples" / "images" / "n01443537_goldfish.JPEG"
    assert main(["predict", str(image), "--model", "efficientnet_b0", "--weights", str(tmp_path / "empty.pth")]) == 1
    assert "is empty" in capsys.readouterr().err


def test_predict_engines_agree_with_eager(tmp_path, data, capsys):
    tflite = data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite"
    images = sorted((data / "finetune" / "hymenoptera_data" / "val" / "bees").iterdir())[:3]
    results = {}
    for engine in ("eager", "onnx", "openvino"):
        argv = ["predict", *map(str, images), "--model", "efficientnet_lite0", "--weights", str(tflite),
                "--engine", engine, "--topk", "3", "--json"]
        assert main(argv) == 0
        captured = capsys.readouterr()
        results[engine] = json.loads(captured.out)
        assert f"{engine}, batch 32" in captured.err
    for engine in ("onnx", "openvino"):
        for a, b in zip(results["eager"], results[engine]):
            assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
            assert max(abs(s["prob"] - t["prob"]) for s, t in zip(a["top"], b["top"])) < 1e-4


def test_predict_unknown_engine_is_an_error(data, capsys):
    image = data / "imagenet-samples" / "images" / "n01443537_goldfish.JPEG"
    assert main(["predict", str(image), "--model", "efficientnet_lite0", "--engine", "tensorrt"]) == 1
    assert "unknown engine 'tensorrt'" in capsys.readouterr().err


def test_models_lists_the_baselines_as_not_efficientnets(capsys):
    assert main(["models", "[mr]*"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    # name, family, EfficientNet?, params (M), MACs (G) at 224, input
    assert rows["resnet50"][1:6] == ["ResNet", "no", "25.56", "4.089", "224"]
    assert rows["mobilenetv2_100"][1:6] == ["MobileNetV2", "no", "3.50", "0.301", "224"]
    assert rows["mobilenetv1_100"][1:6] == ["MobileNetV1", "no", "4.23", "0.569", "224"]
    assert set(rows) == {"resnet50", "mobilenetv2_100", "mobilenetv1_100"}
    assert main(["models", "efficientnet_lite0"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1:3] == ["EfficientNet-Lite", "yes"]


def test_info_scales_a_baseline_by_phi(capsys):
    # Paper Table 3: ResNet-50 compound-scaled at phi = 2 (d 1.44, w 1.21, 296 px): 16.7B FLOPs.
    assert main(["info", "resnet50", "--phi", "2"]) == 0
    out = capsys.readouterr().out
    assert "width 1.21, depth 1.44, resolution 296 px" in out
    assert "params 55,662,904" in out and "MACs 16.335 G at 296x296" in out
    assert "MACs x3.995 over the baseline (4.089 G)" in out
    stage_rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    # Inner widths round_filters(64..512 * 1.21), outputs exactly 4x; repeats ceil(1.44 * [3, 4, 6, 3]).
    assert [r[1] for r in stage_rows] == ["Bottleneck80", "Bottleneck152", "Bottleneck312", "Bottleneck616"]
    assert [r[6] for r in stage_rows] == ["320", "608", "1248", "2464"]
    assert [r[7] for r in stage_rows] == ["5", "6", "9", "5"]


def test_info_scales_by_width_depth_and_pixels(capsys):
    assert main(["info", "mobilenetv2_100", "--width", "1.2", "--depth", "1.4", "--resolution", "288"]) == 0
    out = capsys.readouterr().out
    assert "resolution 288 px" in out and "MACs 1.284 G at 288x288" in out     # Table 3: 1.3B
    assert "head   Conv1x1             1      1      -   384  1536" in out
    assert main(["info", "mobilenetv2_100", "--resolution", "1.3"]) == 0       # a multiplier: 291.2 -> 288
    assert "resolution 288 px" in capsys.readouterr().out


@pytest.mark.parametrize("argv, code, needle", [
    (["info", "resnet50", "--resolution", "16"], 1, "below the network's total stride 32"),
    (["info", "resnet50", "--alpha", "1.3"], 1, "--alpha needs --phi"),
    (["info", "resnet50", "--phi", "1", "--width", "2"], 1, "not both"),
    (["info", "resnt50"], 2, "Did you mean: resnet50"),
    (["info", "resnet50", "--phi", "40"], 1, "no machine holds that network"),
])
def test_info_bad_scaling_is_one_clear_error(argv, code, needle, capsys):
    assert main(argv) == code
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["info", "resnet50", "--width", "0"], ["info", "resnet50", "--depth", "nan"],
                                  ["info", "resnet50", "--resolution", "abc"], ["info", "resnet50", "--phi", "inf"]])
def test_info_refuses_non_finite_or_non_positive_coefficients(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_pretrained_followed_by_photos_is_the_flag_not_a_tag(data, capsys):
    from effnet.cli import _pretrained_before_a_path

    images = data / "imagenet-samples" / "images"
    fish, shark = str(images / "n01443537_goldfish.JPEG"), str(images / "n01484850_great_white_shark.JPEG")
    assert main(["predict", "--model", "tf_efficientnet_lite0", "--pretrained", fish, shark, "--topk", "1",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [fish, shark]                 # both photos, in order
    assert results[0]["top"][0]["name"].startswith("goldfish")
    # a tag stays a tag; a path-looking token is never one
    assert _pretrained_before_a_path(["predict", "--pretrained", "timm", "a.jpg"]) == \
        ["predict", "--pretrained", "timm", "a.jpg"]
    assert _pretrained_before_a_path(["predict", "--pretrained", "photos/", "--topk", "1"]) == \
        ["predict", "photos/", "--topk", "1", "--pretrained"]
    assert _pretrained_before_a_path(["predict-batch", "--pretrained", "list.txt"]) == \
        ["predict-batch", "list.txt", "--pretrained"]
