"""Every bad input to the weights code gets a clear error, and nothing bad is kept.

Each case builds its bad input on the fly: a 127.0.0.1 HTTP server (stopped by its own
handle) for downloads, files cut or edited in tmp_path, and bad arguments.
"""

import errno
import gzip
import http.server
import io
import json
import os
import struct
import tarfile
import threading
import time
import warnings

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet import PreprocessConfig
from effnet.weights import (ConfigError, DownloadError, HashMismatchError, WeightFileError, cache_path, fetch,
                            load_weights, read_weight_file)
from effnet.weights import formats, hub


# ---- a local server whose routes each test sets -------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict          # path -> (body bytes, content type, send Content-Length, bytes to send or None)
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path not in self.routes:
            self.send_error(404, "Not Found")
            return
        body, ctype, with_length, cut = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if with_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])     # HTTP/1.0: the connection closes after


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"routes": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.routes, handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EFFNET_OFFLINE", raising=False)
    return tmp_path / "home" / "weights"


def files_in(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def small_safetensors(seed=0, n=20000):
    """A small valid safetensors file's bytes (80 kB of float32)."""
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    from safetensors.torch import save
    buf.write(save({"w": torch.randn(n, generator=g), "b": torch.zeros(4)}))
    return buf.getvalue()


def small_pth():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(100)}, buf)
    return buf.getvalue()


# ---- 1. the download cache ----------------------------------------------------------------------

def test_body_cut_short_without_content_length_is_not_cached(server, cache):
    url, routes, _ = server
    body = small_safetensors()
    routes["/a/model.safetensors"] = (body, "application/octet-stream", False, len(body) // 2)
    with pytest.raises(DownloadError) as e:
        fetch(f"{url}/a/model.safetensors", progress=False)
    msg = str(e.value)
    assert "truncated" in msg and "model.safetensors" in msg and "nothing was cached" in msg
    assert files_in(cache) == []


def test_html_content_type_is_refused(server, cache):
    url, routes, _ = server
    routes["/a/model.pth"] = (b"<html><body>Sign in</body></html>", "text/html; charset=utf-8", True, None)
    with pytest.raises(DownloadError, match=r"model\.pth: .*HTML page \(Content-Type text/html\)"):
        fetch(f"{url}/a/model.pth", progress=False)
    assert files_in(cache) == []


def test_html_body_under_another_content_type_is_refused(server, cache):
    url, routes, _ = server
    routes["/a/model.pth"] = (b"\n<!DOCTYPE html><html>Not found</html>", "application/octet-stream", True, None)
    with pytest.raises(DownloadError, match="is an HTML page, not a weight file"):
        fetch(f"{url}/a/model.pth", progress=False)
    assert files_in(cache) == []


def test_random_bytes_are_not_cached(server, cache):
    url, routes, _ = server
    routes["/a/model.bin"] = (bytes(range(256)) * 16, "application/octet-stream", True, None)
    with pytest.raises(DownloadError, match="not a recognised weight file"):
        fetch(f"{url}/a/model.bin", progress=False)
    assert files_in(cache) == []


def test_same_basename_from_two_urls_never_collides(server, cache):
    url, routes, _ = server
    one, two = small_safetensors(1), small_pth()
    routes["/one/weights.bin"] = (one, "application/octet-stream", True, None)
    routes["/two/weights.bin"] = (two, "application/octet-stream", True, None)
    p1 = fetch(f"{url}/one/weights.bin", progress=False)
    p2 = fetch(f"{url}/two/weights.bin", progress=False)
    assert p1 != p2 and p1.name == p2.name == "weights.bin"
    assert p1.read_bytes() == one and p2.read_bytes() == two
    assert p1 == cache_path(f"{url}/one/weights.bin") and p1.parent.parent == cache


def test_valid_file_is_cached_and_reused_without_a_second_request(server, cache):
    url, routes, requests = server
    body = small_safetensors()
    routes["/a/model.safetensors"] = (body, "application/octet-stream", False, None)   # no Content-Length, complete
    path = fetch(f"{url}/a/model.safetensors", progress=False)
    assert path.read_bytes() == body and len(requests) == 1
    assert fetch(f"{url}/a/model.safetensors", progress=False) == path
    assert len(requests) == 1
    assert files_in(cache) == [f"{path.parent.name}/model.safetensors"]


def test_full_hash_mismatch_is_refused(server, cache):
    url, routes, _ = server
    routes["/a/model.safetensors"] = (small_safetensors(), "application/octet-stream", True, None)
    with pytest.raises(HashMismatchError, match="does not match the published " + "a" * 64):
        fetch(f"{url}/a/model.safetensors", sha256="a" * 64, progress=False)
    assert files_in(cache) == []


def test_hash_prefix_mismatch_is_refused(server, cache):
    url, routes, _ = server
    routes["/a/model-deadbeef.safetensors"] = (small_safetensors(), "application/octet-stream", True, None)
    with pytest.raises(HashMismatchError, match="does not start with deadbeef"):
        fetch(f"{url}/a/model-deadbeef.safetensors", progress=False)
    assert files_in(cache) == []


def test_corrupt_cached_file_is_removed_on_read(server, cache, monkeypatch):
    url, _, _ = server
    target = cache_path(f"{url}/a/model.safetensors")
    target.parent.mkdir(parents=True)
    target.write_bytes(small_safetensors()[:5000])
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    with pytest.raises(WeightFileError) as e:
        effnet.create_model("efficientnet_b0", weights=f"{url}/a/model.safetensors")
    assert "truncated" in str(e.value) and f"removed {target}" in str(e.value)
    assert not target.exists()


def test_cached_file_failing_its_hash_is_removed_and_downloaded_again(server, cache):
    url, routes, requests = server
    body = small_safetensors()
    import hashlib
    digest = hashlib.sha256(body).hexdigest()
    routes["/a/model.safetensors"] = (body, "application/octet-stream", True, None)
    target = cache_path(f"{url}/a/model.safetensors")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale")
    assert fetch(f"{url}/a/model.safetensors", sha256=digest, progress=False).read_bytes() == body
    assert len(requests) == 1


def test_offline_message_names_file_url_and_path(server, cache, monkeypatch):
    url, _, _ = server
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        fetch(f"{url}/a/model.safetensors", progress=False)
    msg = str(e.value)
    assert "EFFNET_OFFLINE" in msg and "model.safetensors" in msg and f"{url}/a/model.safetensors" in msg
    assert str(cache_path(f"{url}/a/model.safetensors")) in msg


def test_stale_part_files_are_cleaned_at_the_next_fetch(server, cache):
    url, routes, _ = server
    routes["/a/model.safetensors"] = (small_safetensors(), "application/octet-stream", True, None)
    key = cache / "0123456789abcdef"
    key.mkdir(parents=True)
    old, young = key / ".model.pth.x1.part", key / ".model.pth.x2.part"
    old.write_bytes(b"killed download")
    young.write_bytes(b"download in progress elsewhere")
    past = time.time() - hub.STALE_PART_SECONDS - 60
    os.utime(old, (past, past))
    fetch(f"{url}/a/model.safetensors", progress=False)
    assert not old.exists() and young.exists()


def test_zip_check_for_non_weight_downloads(server, cache):
    from effnet.demo import _check_zip

    url, routes, _ = server
    buf = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "x" * 1000)
    routes["/a/data.zip"] = (buf.getvalue(), "application/zip", False, None)
    routes["/a/cut.zip"] = (buf.getvalue(), "application/zip", False, 100)
    assert fetch(f"{url}/a/data.zip", progress=False, check=_check_zip).is_file()
    with pytest.raises(DownloadError, match="cut.zip .*not usable"):
        fetch(f"{url}/a/cut.zip", progress=False, check=_check_zip)
    assert files_in(cache) == [f"{cache_path(url + '/a/data.zip').parent.name}/data.zip"]


# ---- 2. archives, truncated files, sizes against the file ---------------------------------------

def _tar_gz(path, members):
    """members: (name, declared size, data bytes or None for header only)."""
    raw = io.BytesIO()
    for name, size, data in members:
        info = tarfile.TarInfo(name)
        info.size = size
        raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
        if data is not None:
            raw.write(data + b"\0" * (-len(data) % 512))
    if all(d is not None and len(d) == s for _, s, d in members):
        raw.write(b"\0" * 1024)
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    return path


def test_archive_member_declared_over_the_cap_is_refused_unread(tmp_path):
    # The header declares 1 GiB and no data follows: reading it would fail as truncated,
    # so the cap message proves the size was checked from the header first.
    path = _tar_gz(tmp_path / "bomb.tar.gz", [("efficientnet-lite0/efficientnet-lite0-fp32.tflite", 1 << 30, None)])
    assert path.stat().st_size < 1000
    with pytest.raises(WeightFileError, match=r"declares 1073741824 bytes, over the 134217728-byte cap") as e:
        read_weight_file(path)
    assert "bomb.tar.gz" in str(e.value) and "without reading it" in str(e.value)


def test_archive_bomb_of_zeros_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_ARCHIVE_MEMBER_BYTES", 1 << 20)
    path = _tar_gz(tmp_path / "zeros.tar.gz", [("m-fp32.tflite", 8 << 20, bytes(8 << 20))])
    assert path.stat().st_size < 100_000                     # 8 MiB of zeros, gzip ~1000x
    with pytest.raises(WeightFileError, match="over the 1048576-byte cap"):
        read_weight_file(path)


def test_archive_member_shorter_than_declared_is_truncated(tmp_path, data):
    buf = (data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite").read_bytes()
    path = _tar_gz(tmp_path / "short.tar.gz", [("m.tflite", len(buf), buf[:100_000])])
    with pytest.raises(WeightFileError, match=r"short\.tar\.gz is truncated"):
        read_weight_file(path)


def test_cut_gzip_stream_is_truncated(tmp_path, data):
    buf = (data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite").read_bytes()
    whole = _tar_gz(tmp_path / "whole.tar.gz", [("m.tflite", len(buf), buf)]).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightFileError, match=r"cut\.tar\.gz is truncated"):
        read_weight_file(tmp_path / "cut.tar.gz")


def test_archive_without_tflite_is_refused(tmp_path):
    path = _tar_gz(tmp_path / "empty.tar.gz", [("readme.txt", 5, b"hello")])
    with pytest.raises(WeightFileError, match=r"holds no \.tflite file .*readme\.txt"):
        read_weight_file(path)


def test_truncated_tflite_says_truncated_and_names_the_file(tmp_path, data):
    buf = (data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite").read_bytes()
    for frac in (0.3, 0.9):
        path = tmp_path / f"cut{frac}.tflite"
        path.write_bytes(buf[: int(len(buf) * frac)])
        with pytest.raises(WeightFileError, match="truncated") as e:
            read_weight_file(path)
        assert str(path) in str(e.value)


def test_tflite_buffer_pointing_past_the_end_is_refused(tmp_path, data):
    import tflite

    buf = bytearray((data / "weights" / "efficientnet-lite0_int8_modelmaker_3class.tflite").read_bytes())
    model = tflite.Model.GetRootAsModel(bytes(buf), 0)
    b = next(model.Buffers(i) for i in range(model.BuffersLength()) if model.Buffers(i).DataLength() > 0)
    start = b._tab.Vector(b._tab.Offset(4))
    struct.pack_into("<I", buf, start - 4, len(buf))          # the length field of its data vector
    path = tmp_path / "bad.tflite"
    path.write_bytes(bytes(buf))
    with pytest.raises(WeightFileError, match=r"bad\.tflite is truncated: TFLite buffer \d+ ends at byte"):
        read_weight_file(path)


def test_truncated_safetensors_says_truncated_and_names_the_file(tmp_path, data):
    model = effnet.create_model("efficientnet_b0", num_classes=3)
    model.save_pretrained(tmp_path / "run")
    blob = (tmp_path / "run" / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(WeightFileError, match=r"cut\.safetensors is truncated: tensor '.*' ends at data byte"):
        read_weight_file(cut)


def test_safetensors_header_length_past_the_file(tmp_path):
    path = tmp_path / "head.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"w": {}}')
    with pytest.raises(WeightFileError, match=r"head\.safetensors is truncated: its safetensors header claims 10000"):
        read_weight_file(path)


def test_safetensors_header_length_over_the_limit(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{" + b" " * 100)
    with pytest.raises(WeightFileError, match="exceeds the 100000000-byte limit"):
        read_weight_file(path)


def test_html_page_on_disk_is_named(tmp_path):
    path = tmp_path / "efficientnet_b0.pth"
    path.write_bytes(b"<!doctype html><title>404</title>")
    with pytest.raises(WeightFileError, match=r"efficientnet_b0\.pth .*is an HTML page"):
        read_weight_file(path)


# ---- 3. silent wrong models ---------------------------------------------------------------------

@pytest.fixture()
def folder(tmp_path):
    model = effnet.create_model("efficientnet_b0", num_classes=3)
    model.save_pretrained(tmp_path / "run", class_names=["a", "b", "c"])
    return tmp_path / "run"


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def test_folder_num_classes_disagreeing_with_weights(folder):
    _edit_config(folder, num_classes=5, class_names=[])
    with pytest.raises(ConfigError) as e:
        effnet.from_pretrained(folder)
    msg = str(e.value)
    assert str(folder) in msg and "num_classes=5" in msg and "has 3 rows" in msg and "\n" not in msg


def test_folder_in_chans_disagreeing_with_weights(folder):
    _edit_config(folder, in_chans=1)
    with pytest.raises(ConfigError, match=r"says in_chans=1 but .*takes 3 channels"):
        effnet.create_model("efficientnet_b0", weights=folder)


def test_folder_config_missing_a_key(folder):
    _edit_config(folder, num_classes=None)
    with pytest.raises(ConfigError) as e:
        effnet.from_pretrained(folder)
    assert str(folder / "config.json") in str(e.value) and "missing key 'num_classes'" in str(e.value)
    assert "\n" not in str(e.value)


def test_folder_config_missing_a_preprocess_key(folder):
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["preprocess"]["crop_pct"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: missing key 'preprocess\.crop_pct'"):
        effnet.create_model("efficientnet_b0", weights=folder)


def test_folder_config_not_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightFileError, match=r"config\.json: cannot read JSON"):
        effnet.from_pretrained(folder)


def test_folder_config_with_bad_override(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["overrides"]["norm_momentum"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: norm_momentum must be a finite number in \(0, 1\], got 5"):
        effnet.from_pretrained(folder)


def test_folder_config_with_unknown_model(folder):
    _edit_config(folder, model="efficientnet_b99")
    with pytest.raises(ConfigError, match="unknown model 'efficientnet_b99'"):
        effnet.from_pretrained(folder)


def test_folder_loads_strictly_into_a_model_of_another_size(folder):
    model = effnet.create_model("efficientnet_b0")                  # 1000 classes
    with pytest.raises(ConfigError, match=r"the model has num_classes=1000 but the folder's config\.json says "
                                          r"num_classes=3"):
        load_weights(model, folder)


def test_folder_without_num_classes_gives_the_folders_head(folder):
    model = effnet.create_model("efficientnet_b0", weights=folder)  # not a random 1000-class head
    saved = effnet.from_pretrained(folder)
    assert model.num_classes == 3 and torch.equal(model.classifier.weight, saved.classifier.weight)
    reheaded = effnet.create_model("efficientnet_b0", weights=folder, num_classes=5)   # asked for: allowed
    assert reheaded.num_classes == 5


def test_nan_tensor_in_a_folder_is_refused_by_name(folder):
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    sd["stages.2.0.depthwise.bn.running_var"][3] = float("nan")
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(WeightFileError) as e:
        effnet.from_pretrained(folder)
    msg = str(e.value)
    assert "'stages.2.0.depthwise.bn.running_var'" in msg and "1 NaN" in msg and "model.safetensors" in msg


def test_inf_tensor_in_a_timm_file_is_refused_by_its_key(tmp_path, data):
    from safetensors.torch import load_file

    sd = load_file(str(data / "reference" / "timm_efficientnet_b0.safetensors"))
    sd["blocks.1.0.conv_pw.weight"][0, 0, 0, 0] = float("inf")
    save_file(sd, str(tmp_path / "inf.safetensors"))
    with pytest.raises(WeightFileError, match=r"inf\.safetensors: tensor 'blocks\.1\.0\.conv_pw\.weight' holds 0 NaN "
                                              r"and 1 Inf"):
        effnet.create_model("efficientnet_b0", weights=tmp_path / "inf.safetensors")


def test_tf_trained_lukemelas_file_in_symmetric_model_warns(data):
    path = data / "reference" / "lukemelas_efficientnet-b0.pth"
    with pytest.warns(UserWarning, match=r"TF-trained .*Use 'tf_efficientnet_b0'"):
        effnet.create_model("efficientnet_b0", weights=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effnet.create_model("tf_efficientnet_b0", weights=path)


def test_timm_tf_port_named_tf_warns(tmp_path, data):
    named = tmp_path / "tf_efficientnet_b0_aa-827b6e33.safetensors"
    named.write_bytes((data / "reference" / "timm_efficientnet_b0.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="tf_efficientnet_b0"):
        effnet.create_model("efficientnet_b0", weights=named)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # PyTorch-trained timm file: silent
        effnet.create_model("efficientnet_b0", weights=data / "reference" / "timm_efficientnet_b0.safetensors")


# ---- 4. arguments at the public boundary --------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(norm_momentum=5), ValueError, r"norm_momentum must be a finite number in \(0, 1\], got 5"),
    (dict(norm_momentum=0.0), ValueError, r"norm_momentum .*\(0, 1\], got 0\.0"),
    (dict(num_classes=-1), ValueError, r"num_classes must be an int >= 0, got -1"),
    (dict(num_classes=True), TypeError, r"num_classes must be an int >= 0 or None, got bool True"),
    (dict(num_classes=2.5), TypeError, r"num_classes must be an int .*got float 2\.5"),
    (dict(in_chans=0), ValueError, r"in_chans must be an int >= 1, got 0"),
    (dict(in_chans="3"), TypeError, r"in_chans must be an int >= 1, got str '3'"),
    (dict(padding="foo"), ValueError, r"padding must be one of \['symmetric', 'same'\], got 'foo'"),
    (dict(padding=1), TypeError, r"padding must be a str"),
    (dict(drop_rate=1.5), ValueError, r"drop_rate must be a finite number in \[0, 1\), got 1\.5"),
    (dict(drop_rate=-0.1), ValueError, r"drop_rate .*got -0\.1"),
    (dict(drop_path_rate=1.0), ValueError, r"drop_path_rate must be a finite number in \[0, 1\), got 1\.0"),
    (dict(drop_rate="0.2"), TypeError, r"drop_rate must be a number"),
    (dict(norm_eps=float("nan")), ValueError, r"norm_eps must be a finite number in \(0, inf\), got nan"),
    (dict(norm_eps=0), ValueError, r"norm_eps .*got 0"),
    (dict(norm_eps=float("inf")), ValueError, r"norm_eps .*got inf"),
    (dict(pretrained=1), TypeError, r"pretrained must be a bool or a weight tag"),
    (dict(weights=3), TypeError, r"weights must be a path or URL"),
    (dict(momentum=0.1), TypeError, r"unknown override\(s\) \['momentum'\]"),
])
def test_create_model_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        effnet.create_model("efficientnet_b0", **kwargs)


def test_create_model_name_must_be_a_string():
    with pytest.raises(TypeError, match="name must be a model name"):
        effnet.create_model(3)


def test_boundary_values_are_accepted():
    model = effnet.create_model("efficientnet_b0", num_classes=0, in_chans=1, norm_momentum=1.0, drop_rate=0.0,
                                padding="same", norm_eps=1e-3)
    assert model.config.norm_momentum == 1.0 and model.num_classes == 0 and model.in_chans == 1


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(crop_pct=0), ValueError, r"crop_pct must be a finite number in \(0, 1\], got 0"),
    (dict(crop_pct=1.5), ValueError, r"crop_pct .*got 1\.5"),
    (dict(interpolation="x"), ValueError, r"interpolation must be one of .*'bicubic'.*got 'x'"),
    (dict(interpolation=3), TypeError, r"interpolation must be a str"),
    (dict(std=(0.2, 0.0, 0.2)), ValueError, r"std must be 3 finite numbers > 0, got \(0\.2, 0\.0, 0\.2\)"),
    (dict(std=(0.2, float("nan"), 0.2)), ValueError, r"std must be 3 finite numbers > 0"),
    (dict(mean=(0.5, 0.5)), TypeError, r"mean must be 3 numbers \(R, G, B\), got \(0\.5, 0\.5\)"),
    (dict(mean=(0.5, float("inf"), 0.5)), ValueError, r"mean must be 3 finite numbers"),
    (dict(input_size=0), ValueError, r"input_size must be an int >= 1, got 0"),
    (dict(input_size=True), TypeError, r"input_size must be an int >= 1, got bool True"),
    (dict(input_size=224.0), TypeError, r"input_size must be an int >= 1, got float 224\.0"),
])
def test_preprocess_config_bad_arguments(kwargs, exc, pattern):
    args = dict(input_size=224)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        PreprocessConfig(**args)


def test_preprocess_config_stores_float_tuples():
    pre = PreprocessConfig(224, 1, "bilinear", [0, 0, 0], [1, 1, 1])
    assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0) and pre.crop_pct == 1


# ---- 5. registered sources without a hash are verified by format --------------------------------

def test_lite_archives_have_no_invented_hash():
    for v in ("lite0", "lite4"):
        src = effnet.registry.get_weight_source(f"tf_efficientnet_{v}", "tflite")
        assert src.sha256 is None and src.tf_trained and hub.hash_prefix_from_name(src.url) is None


# ---- writes of the weights layer: full disk, permissions, folders (review findings) ------------

def test_save_pretrained_on_a_full_disk_is_one_oserror(tiny_fs):
    model = effnet.create_model("efficientnet_b0", num_classes=3)          # 16 MB of safetensors
    with pytest.raises(OSError, match=r"no space left on device while writing .*model\.safetensors") as e:
        model.save_pretrained(tiny_fs / "best")
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert [p.name for p in (tiny_fs / "best").iterdir()] == []            # no temporary left


def test_download_onto_a_full_disk_names_the_destination(server, tiny_fs, monkeypatch):
    url, routes, _ = server
    routes["/big/model.safetensors"] = (small_safetensors(n=200_000), "application/octet-stream", True, None)
    monkeypatch.setenv("EFFNET_HOME", str(tiny_fs / "home"))
    with pytest.raises(OSError, match=r"no space left on device while writing .*model\.safetensors") as e:
        fetch(f"{url}/big/model.safetensors", progress=False)
    assert e.value.errno == errno.ENOSPC
    assert not [p for p in (tiny_fs / "home").rglob("*") if p.is_file()]    # nothing half-written kept


def test_downloads_get_the_usual_permissions(server, cache):
    url, routes, _ = server
    routes["/p/model.safetensors"] = (small_safetensors(), "application/octet-stream", True, None)
    old = os.umask(0o022)
    try:
        path = fetch(f"{url}/p/model.safetensors", progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_pretrained_onto_a_file_or_under_one(tmp_path):
    (tmp_path / "afile").write_text("x")
    model = effnet.create_model("efficientnet_lite0", num_classes=2)
    for target, needle in ((tmp_path / "afile", "afile: it is a file, not a folder"),
                           (tmp_path / "afile" / "sub", "afile is a file, not a folder")):
        with pytest.raises(OSError, match=needle) as e:
            model.save_pretrained(target)
        assert "Errno" not in str(e.value)


def test_a_weight_file_keeps_its_head_unless_asked_otherwise(tmp_path):
    trained = effnet.create_model("efficientnet_lite0", num_classes=5)
    torch.save(trained.state_dict(), tmp_path / "five.pth")
    model = effnet.create_model("efficientnet_lite0", weights=tmp_path / "five.pth")
    assert model.num_classes == 5 and torch.equal(model.classifier.weight, trained.classifier.weight)
    assert effnet.create_model("efficientnet_lite0", weights=tmp_path / "five.pth", num_classes=10).num_classes == 10


def test_model_constructor_refuses_what_create_model_refuses():
    from effnet.model import EfficientNet

    net = effnet.get_config("efficientnet_b0").network
    for kwargs, needle in ((dict(norm_momentum=5), r"norm_momentum must be in \(0, 1\]"),
                           (dict(norm_eps=0.0), r"norm_eps must be in \(0, inf\)"),
                           (dict(num_classes=2.5), "num_classes must be an integer")):
        with pytest.raises((TypeError, ValueError), match=needle):
            EfficientNet(net, **kwargs)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        effnet.create_model("efficientnet_b0").reset_classifier(2.5)
    with pytest.raises(ValueError, match=r"stages \[99\] are not stage indices"):
        effnet.create_model("efficientnet_b0").set_grad_checkpointing(True, stages=[99])


def test_a_published_md5_is_checked_on_download_and_reuse(server, cache):
    import hashlib

    url, routes, requests = server
    body = small_safetensors()
    routes["/m/model.safetensors"] = (body, "application/octet-stream", True, None)
    with pytest.raises(HashMismatchError, match=r"md5 [0-9a-f]{32} does not match the published 0{32}"):
        fetch(f"{url}/m/model.safetensors", progress=False, md5="0" * 32)
    assert files_in(cache) == []
    good = hashlib.md5(body).hexdigest()
    path = fetch(f"{url}/m/model.safetensors", progress=False, md5=good)
    path.write_bytes(body[:-1] + b"x")                                  # altered in the cache
    fetch(f"{url}/m/model.safetensors", progress=False, md5=good)        # removed and fetched again
    assert path.read_bytes() == body and len(requests) == 3


def test_official_lite_archives_carry_their_published_md5():
    for v in ("lite0", "lite1", "lite2", "lite3", "lite4"):
        source = effnet.registry.get_weight_source(f"tf_efficientnet_{v}", "tflite")
        assert source.url.endswith(f"efficientnet-{v}.tar.gz") and len(source.md5) == 32
