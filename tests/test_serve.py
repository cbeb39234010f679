"""`effnet serve`: the real server in a subprocess on 127.0.0.1, real ImageNet weights, real photos."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

import effnet
from conftest import ServerProcess, prometheus_sum as metric
from effnet.cli import main

MODEL = ["--model", "tf_efficientnet_lite0", "--pretrained"]
PHOTOS = ("n01440764_tench.JPEG", "n01443537_goldfish.JPEG")


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["serve", *MODEL, "--engine", "onnx", "--max-batch", "8", "--batch-timeout-ms", "20",
                        "--max-upload-mb", "2", "--max-image-mpixels", "1"]) as url:
        yield url


def photo(data, name: str = PHOTOS[0]):
    return data / "imagenet-samples" / "images" / name


def test_predict_matches_effnet_predict(server, data, capsys):
    f = photo(data)
    assert main(["predict", *MODEL, "--topk", "5", "--json", str(f)]) == 0
    want = json.loads(capsys.readouterr().out)[0]["top"]
    multipart = httpx.post(f"{server}/predict", params={"topk": 5},
                           files={"file": (f.name, f.read_bytes(), "image/jpeg")}, timeout=60)
    raw = httpx.post(f"{server}/predict?topk=5", content=f.read_bytes(), headers={"content-type": "image/jpeg"},
                     timeout=60)
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tf_efficientnet_lite0" and body["engine"] == "onnx" and body["ms"] > 0
        got = body["topk"]
        assert [t["class_index"] for t in got] == [t["index"] for t in want]
        assert [t["label"] for t in got] == [t["name"] for t in want]
        # onnxruntime (BN folded) against eager PyTorch: the same function within float rounding
        np.testing.assert_allclose([t["probability"] for t in got], [t["prob"] for t in want], atol=2e-4)
    assert got[0]["label"].startswith("tench")


def test_concurrent_requests_all_succeed_and_are_batched(server, data):
    before = httpx.get(f"{server}/metrics").text
    files = [photo(data, PHOTOS[i % 2]) for i in range(20)]
    barrier, results = threading.Barrier(20), [None] * 20

    def send(i: int) -> None:
        barrier.wait()
        results[i] = httpx.post(f"{server}/predict", params={"topk": 1}, timeout=120,
                                files={"file": (files[i].name, files[i].read_bytes(), "image/jpeg")})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    assert [r.json()["topk"][0]["label"].split(",")[0] for r in results[:2]] == ["tench", "goldfish"]
    assert {r.json()["topk"][0]["class_index"] for r in results[0::2]} == {0}
    after = httpx.get(f"{server}/metrics").text
    images = metric(after, "effnet_batch_size_sum") - metric(before, "effnet_batch_size_sum")
    calls = metric(after, "effnet_batch_size_count") - metric(before, "effnet_batch_size_count")
    assert images == 20
    assert calls < 20, f"20 concurrent requests ran in {calls:g} engine calls: no batching"
    assert metric(after, "effnet_images_total") - metric(before, "effnet_images_total") == 20


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels and holds one row: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * 16))) + \
        chunk(b"IEND", b"")


def _multipart(parts: list, boundary: str = "effnet-test-boundary") -> tuple:
    """(body, content type) of a multipart form; ``parts``: (field, filename, bytes, content type or None).
    A part without a type is what Python requests sends for ``files={"file": open(path, "rb")}``."""
    body = b""
    for field, filename, content, ctype in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                 + (f"Content-Type: {ctype}\r\n" if ctype else "") + "\r\n").encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_file_part_without_a_content_type_is_decoded(server, data):
    f = photo(data)
    body, ctype = _multipart([("file", f.name, f.read_bytes(), None)])
    r = httpx.post(f"{server}/predict", content=body, headers={"content-type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["topk"][0]["class_index"] == 0
    body, ctype = _multipart([("file", "notes.txt", b"not an image", None)])   # untyped junk: the decoder's 422
    r = httpx.post(f"{server}/predict", content=body, headers={"content-type": ctype}, timeout=60)
    assert r.status_code == 422 and "not an image" in r.json()["error"]


def test_bad_uploads_get_their_4xx_and_the_server_keeps_serving(server, data):
    good = photo(data).read_bytes()
    big_form, big_type = _multipart([("file", "big.jpg", b"\xff" * (3 << 20), "image/jpeg")])
    before = httpx.get(f"{server}/metrics").text

    def post(content=None, files=None, ctype="image/jpeg", params=None):
        headers = {"content-type": ctype} if content is not None else None
        return httpx.post(f"{server}/predict", content=content, files=files, headers=headers, params=params,
                          timeout=60)

    cases = {
        "text, not an image": (post(b"this is not an image at all"), 422, "not an image"),
        "truncated JPEG": (post(good[:len(good) // 3]), 422, "truncated"),
        "decompression bomb": (post(_png_header_only(40000, 40000), ctype="image/png"), 422, "pixels"),
        "over --max-image-mpixels 1": (post(_png_header_only(2000, 1000), ctype="image/png"), 422,
                                       "2000x1000 = 2,000,000 pixels, more than the cap of 1,000,000"),
        "empty body": (post(b""), 422, "empty"),
        "over --max-upload-mb 2": (post(b"\xff" * (3 << 20)), 413, "limit of 2 MiB"),
        "over the cap, multipart": (post(files={"file": ("big.jpg", b"\xff" * (3 << 20), "image/jpeg")}), 413,
                                    "limit"),
        "over the cap, chunked multipart (no length)": (post(iter([big_form[i:i + 65536] for i in range(
            0, len(big_form), 65536)]), ctype=big_type), 413, "limit of 2 MiB"),
        "wrong content type": (post(good, ctype="text/plain"), 415, "not an image"),
        "wrong part type": (post(files={"file": ("a.txt", good, "text/plain")}), 415, "not an image"),
        "form without a file": (post(files={"note": (None, b"1")}), 400, "no file"),
        "a form, not an image": (post(b"x=1", ctype="application/x-www-form-urlencoded"), 415, "not an image"),
        "topk 0": (post(good, params={"topk": 0}), 400, "topk"),
        "topk not a number": (post(good, params={"topk": "five"}), 400, "topk"),
    }
    for what, (r, status, words) in cases.items():
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        body = r.json()
        assert body["status"] == status and words in body["error"], f"{what}: {body}"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    ok = post(good)
    assert ok.status_code == 200 and ok.json()["topk"][0]["class_index"] == 0
    after = httpx.get(f"{server}/metrics").text
    assert metric(after, "effnet_errors_total") - metric(before, "effnet_errors_total") == len(cases)


def test_batch_endpoint_reports_bad_images_in_line(server, data):
    good = photo(data, PHOTOS[1]).read_bytes()
    r = httpx.post(f"{server}/predict/batch", params={"topk": 2}, timeout=60, files=[
        ("files", ("goldfish.jpg", good, "image/jpeg")),
        ("files", ("broken.jpg", good[:500], "image/jpeg")),
        ("files", ("tench.jpg", photo(data).read_bytes(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["goldfish.jpg", "broken.jpg", "tench.jpg"]
    assert results[0]["topk"][0]["class_index"] == 1 and len(results[0]["topk"]) == 2
    assert "truncated" in results[1]["error"] and "topk" not in results[1]
    assert results[2]["topk"][0]["class_index"] == 0
    # a part of the wrong type is refused in line too, not the whole request
    before = httpx.get(f"{server}/metrics").text
    r = httpx.post(f"{server}/predict/batch", params={"topk": 1}, timeout=60, files=[
        ("files", ("notes.txt", b"hello", "text/plain")), ("files", ("goldfish.jpg", good, "image/jpeg"))])
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert "content type 'text/plain'" in first["error"] and second["topk"][0]["class_index"] == 1
    after = httpx.get(f"{server}/metrics").text
    assert metric(after, "effnet_image_errors_total") - metric(before, "effnet_image_errors_total") == 1


def test_health_metadata_and_metrics(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": "tf_efficientnet_lite0",
                                                      "engine": "onnx"}
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["num_classes"] == 1000 and len(meta["classes"]) == 1000 and meta["classes"][0].startswith("tench")
    pre = effnet.create_model("tf_efficientnet_lite0", pretrained=True).config.preprocess   # the weights' own
    assert meta["preprocessing"] == {"resize_size": pre.resize_size, "input_size": 224, "crop_pct": pre.crop_pct,
                                     "interpolation": pre.interpolation, "crop_mode": pre.crop_mode,
                                     "mean": list(pre.mean), "std": list(pre.std)}
    assert meta["max_batch"] == 8 and meta["max_upload_mb"] == 2 and meta["max_image_mpixels"] == 1
    text = httpx.get(f"{server}/metrics").text
    for name in ("effnet_requests_total", "effnet_errors_total", "effnet_request_latency_seconds_bucket",
                 "effnet_batch_size_bucket"):
        assert name in text
    assert httpx.get(f"{server}/nothing-here").status_code == 404
    assert httpx.head(f"{server}/health").status_code == 200       # load balancers' probes


def test_serve_arguments_are_checked():
    with pytest.raises(SystemExit) as e:
        main(["serve", *MODEL, "--port", "70000"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["serve", *MODEL, "--max-upload-mb", "0"])
    assert e.value.code == 2
    from effnet.serve.server import MAX_BATCH, ServeConfig

    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(max_batch=MAX_BATCH + 1)


def test_a_taken_port_or_a_bad_host_fails_before_the_model_loads(monkeypatch, capsys):
    import socket

    import effnet.cli

    def no_model(_args):
        raise AssertionError("the model was loaded before the address was checked")

    monkeypatch.setattr(effnet.cli, "_build_model", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", *MODEL, "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"127.0.0.1:{port}" in err and "another --port" in err and "serving" not in err
    assert main(["serve", *MODEL, "--host", "999.1.1.1"]) == 1
    assert "does not resolve" in capsys.readouterr().err


def test_app_page_and_explain(data):
    f = photo(data, PHOTOS[1])
    with ServerProcess(["app", *MODEL]) as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and 'id="top1"' in page.text and 'type="file"' in page.text
        r = httpx.post(url + "/explain", files={"file": (f.name, f.read_bytes(), "image/jpeg")}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["topk"][0]["label"].startswith("goldfish") and len(body["topk"]) == 5
        png = Image.open(io.BytesIO(base64.b64decode(body["cam_png"].split(",", 1)[1])))
        assert png.size == (224, 224) and png.mode == "RGB"
        bad = httpx.post(url + "/explain", files={"file": ("x.jpg", b"nope", "image/jpeg")}, timeout=60)
        assert bad.status_code == 422 and "not an image" in bad.json()["error"]


def test_decode_image_is_load_image_for_bytes(data, tmp_path):
    from effnet.data import ImageDecodeError, decode_image, load_image

    f = photo(data)
    assert np.array_equal(np.asarray(decode_image(f.read_bytes(), "x", min_size=256)),
                          np.asarray(load_image(f, min_size=256)))
    for payload, words in ((b"", "empty"), (b"GIF89a-not-really", "not an image in a format"),
                           (_png_header_only(40000, 40000), "refuses more than")):
        with pytest.raises(ImageDecodeError, match=words) as e:
            decode_image(payload, "upload.png")
        assert "upload.png" in str(e.value)


def test_a_lone_request_is_resized_on_two_threads_to_the_same_pixels(data):
    """``split=True`` (what the server does for a request alone on an idle engine) gives the
    tensor of the one-thread path and of ``effnet predict``'s file path, bit for bit."""
    import asyncio

    import torch

    from effnet.data import load_transformed
    from effnet.serve.classifier import Classifier
    from effnet.serve.server import DynamicBatcher

    classifier = Classifier(effnet.create_model("tf_efficientnet_lite0").eval(), "eager")
    for name in PHOTOS:
        f = photo(data, name)
        want = load_transformed(f, classifier.transform)
        assert want.shape == (3, 224, 224)
        assert torch.equal(classifier.preprocess(f.read_bytes(), name, split=True), want)
        assert torch.equal(classifier.preprocess(f.read_bytes(), name), want)

    async def alone_states():
        batcher = DynamicBatcher(lambda x: x, 4, 0.005)
        batcher.expect()
        states = [batcher.alone()]
        batcher.expect()                               # a second request arrives: no second core to lend
        states.append(batcher.alone())
        batcher.cancel()
        states.append(batcher.alone())
        return states

    assert asyncio.run(alone_states()) == [True, False, True]


def test_batcher_lone_path_never_overtakes_a_batch_or_a_running_job():
    """A request is not "alone" while a batch waits for stragglers (it joins the batch), nor
    while the engine thread still runs a job whose request was cancelled."""
    import asyncio
    import threading

    import torch

    from effnet.serve.server import DynamicBatcher

    async def scenario():
        calls = []
        batcher = DynamicBatcher(lambda x: (calls.append(len(x)), np.zeros((len(x), 3)))[1], 4, 0.5)
        batcher.start()
        batcher.expect()
        batcher.expect()
        first = asyncio.ensure_future(batcher.submit(torch.zeros(3, 2, 2)))
        await asyncio.sleep(0.02)                      # the batch holds the first image, waits for the second
        assembling = batcher.alone()
        second = asyncio.ensure_future(batcher.submit(torch.zeros(3, 2, 2)))
        await asyncio.gather(first, second)
        await asyncio.sleep(0.01)
        batcher.expect()
        idle = batcher.alone()
        release = threading.Event()
        lone = asyncio.ensure_future(batcher.run_alone(lambda: (release.wait(5), torch.zeros(3, 2, 2))[1]))
        await asyncio.sleep(0.02)
        lone.cancel()                                  # the request goes away; its job is still on the thread
        await asyncio.sleep(0.02)
        batcher.expect()
        while_running = batcher.alone()
        release.set()
        await asyncio.sleep(0.05)
        after = batcher.alone()
        batcher.cancel()
        await batcher.stop()
        return assembling, calls, idle, while_running, after

    assembling, calls, idle, while_running, after = asyncio.run(scenario())
    assert assembling is False and calls[0] == 2           # one engine call for both, nobody jumped in
    assert idle is True and while_running is False and after is True
