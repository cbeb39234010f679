"""`effnet predict-batch`: real ImageNet weights over real photos, on Ray Data and in-process."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from effnet.cli import main
from effnet.serve.batch import ModelSpec, list_sources, predict_batch, read_results, summarize

MODEL = ["--model", "tf_efficientnet_lite0", "--pretrained"]
SPEC = ModelSpec("tf_efficientnet_lite0", pretrained=True, threads=1)


def labelled(data, n: int) -> list:
    """The first ``n`` shared ImageNet photos as (path, class_index)."""
    root = (data / "imagenet-samples").resolve()
    with open(root / "labels.csv") as f:
        return [(root / r["file"], int(r["class_index"])) for r in list(csv.DictReader(f))[:n]]


@pytest.fixture()
def folder(data, tmp_path):
    """6 real photos in two subfolders, a truncated JPEG, a 16-bit grayscale PNG and a text file named .jpg."""
    d = tmp_path / "photos"
    photos = labelled(data, 6)
    for i, (p, _) in enumerate(photos):
        (d / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / f"part{i % 2}" / p.name)
    (d / "corrupt.jpg").write_bytes(photos[0][0].read_bytes()[:3000])
    (d / "notes.jpg").write_text("not an image")
    gray = np.asarray(Image.open(photos[1][0]).convert("L"), dtype=np.uint16)
    Image.fromarray(gray * 257).save(d / "deep16.png")                 # 16-bit: every 8-bit value v -> 257 v
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / "gray8.png")
    assert Image.open(d / "deep16.png").mode == "I;16"
    return d


def test_rows_errors_and_resume(folder, data, tmp_path, capsys):
    out = tmp_path / "results.parquet"
    assert main(["predict-batch", str(folder), "--out", str(out), *MODEL, "--runner", "local", "--json", "-q",
                 "--topk", "5", "--workers", "1"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["images"], run["errors"], run["skipped"]) == (9, 2, 0)
    rows = read_results(out).to_pydict()
    by_path = {p: i for i, p in enumerate(rows["path"])}
    assert len(by_path) == 9
    errors = {p.rsplit("/", 1)[-1]: e for p, e in zip(rows["path"], rows["error"]) if e is not None}
    assert set(errors) == {"corrupt.jpg", "notes.jpg"}
    assert "truncated" in errors["corrupt.jpg"] and "not an image" in errors["notes.jpg"]
    assert rows["top_indices"][by_path[str(folder / "corrupt.jpg")]] == []
    # every good photo: the same top-5 as `effnet predict`
    good = sorted(p for p in by_path if not p.endswith(("corrupt.jpg", "notes.jpg", "deep16.png")))
    assert main(["predict", *MODEL, "--topk", "5", "--json", *good]) == 0
    for r in json.loads(capsys.readouterr().out):
        i = by_path[r["file"]]
        assert rows["top_indices"][i] == [t["index"] for t in r["top"]]
        assert rows["top_labels"][i] == [t["name"] for t in r["top"]]
        np.testing.assert_allclose(rows["top_probs"][i], [t["prob"] for t in r["top"]], atol=2e-6)
    # the 16-bit PNG is decoded (not an error): the same picture as its 8-bit version
    assert main(["predict", *MODEL, "--topk", "5", "--json", str(tmp_path / "gray8.png")]) == 0
    want = json.loads(capsys.readouterr().out)[0]["top"]
    assert rows["top_indices"][by_path[str(folder / "deep16.png")]] == [t["index"] for t in want]
    # a second run with the same --out does nothing; a new photo is the only work of a third
    parts = sorted(out.iterdir())
    assert main(["predict-batch", str(folder), "--out", str(out), *MODEL, "--runner", "local", "--json", "-q"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["images"], again["skipped"]) == (0, 9) and sorted(out.iterdir()) == parts
    extra = labelled(data, 7)[6][0]
    shutil.copy(extra, folder / extra.name)
    assert main(["predict-batch", str(folder), "--out", str(out), *MODEL, "--runner", "local", "--json", "-q"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["images"], third["skipped"]) == (1, 9) and len(read_results(out)) == 10


def test_ray_and_in_process_write_the_same_parquet(folder, tmp_path):
    pytest.importorskip("ray.data", reason="the Ray path needs ray[data] (in the test extra)")
    ray_run = predict_batch(folder, tmp_path / "ray.parquet", SPEC, runner="ray", progress=False)
    local_run = predict_batch(folder, tmp_path / "local.parquet", SPEC, runner="local", workers=0, progress=False)
    assert ray_run["runner"] == "ray" and local_run["runner"] == "local"
    assert ray_run["images"] == local_run["images"] == 9 and ray_run["errors"] == local_run["errors"] == 2
    a, b = read_results(tmp_path / "ray.parquet"), read_results(tmp_path / "local.parquet")
    assert a.schema == b.schema and a.num_rows == 9
    # one thread and one batch in both: bit-identical contents
    assert a.equals(b), (a.to_pydict(), b.to_pydict())


def test_top1_from_parquet_equals_evaluate(data, tmp_path, capsys):
    photos = labelled(data, 24)
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p, _ in photos) + "\n")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("file,class_index\n" + "".join(f"{p},{c}\n" for p, c in photos))
    assert main(["predict-batch", str(listing), "--out", str(tmp_path / "r.parquet"), *MODEL, "--runner", "local",
                 "-q", "--engine", "onnx"]) == 0
    assert main(["evaluate", *MODEL, "--data", str(labels_csv), "--json", "--workers", "0"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    got = summarize(tmp_path / "r.parquet", {str(p): c for p, c in photos})
    assert got["rows"] == got["scored"] == evaluated["images"] == 24 and got["errors"] == 0
    assert got["top1"] == pytest.approx(evaluated["top1"], abs=1e-9)


def test_sources_caps_and_bad_arguments(folder, tmp_path):
    n = len(list_sources(folder))
    assert n == 9
    assert len(list_sources(str(folder / "**" / "*.JPEG"))) == 6
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\nphotos/corrupt.jpg\n\n" + str(folder / "notes.jpg") + "\n")
    assert [p.rsplit("/", 1)[-1] for p in list_sources(listing)] == ["corrupt.jpg", "notes.jpg"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list_sources(str(tmp_path / "*.nothing"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_sources(tmp_path / "missing")
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        predict_batch(folder, tmp_path / "file.parquet", SPEC, runner="local", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        predict_batch(folder, tmp_path / "o", SPEC, batch_size=0, progress=False)
    # a file over --max-file-mb is an error row (read no further than the cap)
    r = predict_batch(folder, tmp_path / "capped.parquet", SPEC, runner="local", workers=0, max_file_mb=0.05,
                      progress=False)
    rows = read_results(tmp_path / "capped.parquet").to_pydict()
    big = [e for e in rows["error"] if e and "--max-file-mb" in e]
    assert r["images"] == 9 and len(big) >= 6


def test_another_model_or_topk_into_the_same_out_is_refused(folder, tmp_path):
    out = tmp_path / "r.parquet"
    first = predict_batch(folder / "part0", out, SPEC, topk=5, runner="local", workers=0, progress=False)
    assert first["images"] == 3
    parts = sorted(out.iterdir())
    lite1 = ModelSpec("tf_efficientnet_lite1", pretrained=True, threads=1)
    with pytest.raises(ValueError, match="model tf_efficientnet_lite0 there, tf_efficientnet_lite1 here"):
        predict_batch(folder, out, lite1, topk=5, runner="local", workers=0, progress=False)
    with pytest.raises(ValueError, match="topk 5 there, 3 here"):
        predict_batch(folder, out, SPEC, topk=3, runner="local", workers=0, progress=False)
    assert sorted(out.iterdir()) == parts                                       # nothing written by the refusals
    # another engine is the same function: the run resumes on it
    onnx = ModelSpec("tf_efficientnet_lite0", pretrained=True, engine="onnx", threads=1)
    again = predict_batch(folder, out, onnx, topk=5, runner="local", workers=0, progress=False)
    assert (again["images"], again["skipped"]) == (6, 3)


def test_empty_sources_symlinks_and_a_runner_without_ray(folder, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no image"):
        list_sources(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(FileNotFoundError, match="names no path"):
        list_sources(tmp_path / "blank.txt")
    # rows name the files as listed: two links to one photo are two rows, a dangling link an error row
    links = tmp_path / "links"
    links.mkdir()
    target = sorted((folder / "part0").iterdir())[0]
    (links / "a.jpg").symlink_to(target)
    (links / "b.jpg").symlink_to(target)
    (links / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert list_sources(links) == [str(links / "a.jpg"), str(links / "b.jpg"), str(links / "gone.jpg")]
    r = predict_batch(links, tmp_path / "l.parquet", SPEC, runner="local", workers=0, progress=False)
    rows = read_results(tmp_path / "l.parquet").to_pydict()
    assert rows["path"] == [str(links / "a.jpg"), str(links / "b.jpg"), str(links / "gone.jpg")]
    assert rows["top_indices"][0] == rows["top_indices"][1] != [] and r["errors"] == 1
    assert "gone.jpg" in rows["error"][2]
    with pytest.raises(ValueError, match="--runner ray"):
        predict_batch(folder, tmp_path / "x.parquet", SPEC, runner="local", address="ray://nowhere:10001",
                      progress=False)
    assert not (tmp_path / "x.parquet").exists()
