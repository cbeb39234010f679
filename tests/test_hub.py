"""Downloading against a local HTTP server on 127.0.0.1 serving ../shared/data/reference."""

import dataclasses
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import effnet
from effnet import registry
from effnet.weights import DownloadError, HashMismatchError, cache_path, fetch
from effnet.weights.hub import hash_prefix_from_name


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        kind, _, name = self.path.lstrip("/").partition("/")
        real = name.split("-")[0] + ".safetensors" if name.startswith("timm_efficientnet_b0-") else name
        f = self.root / real
        if kind not in ("files", "drop") or not f.is_file():
            self.send_error(404, "Not Found")
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "drop":               # the connection dies a third of the way in
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server(data):
    handler = type("Handler", (_Handler,), {"root": data / "reference", "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EFFNET_OFFLINE", raising=False)
    return tmp_path / "home" / "weights"


@pytest.fixture(scope="module")
def reference(data):
    refs = json.loads((data / "reference" / "references.json").read_text())
    return refs["timm.efficientnet_b0"]


def leftovers(cache):
    """Every file under the cache (cache_dir()/<url key>/<name>), by name."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_download_verifies_and_reuses_the_cache(server, cache, reference, data):
    url, requests = server
    name = reference["weights"]
    path = fetch(f"{url}/files/{name}", sha256=reference["weights_sha256"], progress=False)
    assert path == cache_path(f"{url}/files/{name}") and path.parent.parent == cache and path.name == name
    assert path.read_bytes() == (data / "reference" / name).read_bytes()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == reference["weights_sha256"]
    n = len(requests)
    assert fetch(f"{url}/files/{name}", sha256=reference["weights_sha256"], progress=False) == path
    assert len(requests) == n                      # served from the cache
    assert leftovers(cache) == [name]


def test_hash_mismatch_leaves_nothing(server, cache, reference):
    url, _ = server
    with pytest.raises(HashMismatchError, match="does not match the published"):
        fetch(f"{url}/files/{reference['weights']}", sha256="0" * 64, progress=False)
    assert leftovers(cache) == []


def test_hash_prefix_in_the_file_name_is_checked(server, cache, reference):
    url, _ = server
    good = reference["weights_sha256"][:8]
    assert hash_prefix_from_name(f"timm_efficientnet_b0-{good}.safetensors") == good
    with pytest.raises(HashMismatchError, match="does not start with deadbeef"):
        fetch(f"{url}/files/timm_efficientnet_b0-deadbeef.safetensors", progress=False)
    assert leftovers(cache) == []
    path = fetch(f"{url}/files/timm_efficientnet_b0-{good}.safetensors", progress=False)
    assert path.name == f"timm_efficientnet_b0-{good}.safetensors"


def test_404_is_a_clear_error(server, cache):
    url, _ = server
    with pytest.raises(DownloadError, match=r"HTTP 404.*save it as .*missing\.pth"):
        fetch(f"{url}/files/missing.pth", progress=False)
    assert leftovers(cache) == []


def test_connection_dropped_mid_file_leaves_nothing(server, cache, reference):
    url, _ = server
    with pytest.raises(DownloadError, match="timm_efficientnet_b0.safetensors"):
        fetch(f"{url}/drop/{reference['weights']}", progress=False)
    assert leftovers(cache) == []


def test_offline_names_the_file_and_where_to_put_it(server, cache, monkeypatch, reference):
    url, _ = server
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        fetch(f"{url}/files/{reference['weights']}", progress=False)
    target = cache_path(f"{url}/files/{reference['weights']}")
    assert "EFFNET_OFFLINE" in str(e.value) and str(target) in str(e.value) and target.parent.parent == cache
    assert f"{url}/files/{reference['weights']}" in str(e.value)


def test_a_wrong_file_placed_in_the_cache_is_caught(cache, monkeypatch, data):
    monkeypatch.setenv("EFFNET_OFFLINE", "1")
    source = effnet.get_config("efficientnet_b0").weights[1]
    target = cache_path(source.url)
    target.parent.mkdir(parents=True)
    target.write_bytes((data / "reference" / "torchvision_efficientnet_b0.pth").read_bytes())
    with pytest.raises(HashMismatchError, match="removed from the cache"):
        effnet.create_model("efficientnet_b0", pretrained="torchvision")
    assert not target.exists()


def test_pretrained_from_the_registry_end_to_end(server, cache, monkeypatch, reference, data):
    url, _ = server
    cfg = registry._REGISTRY["efficientnet_b0"]
    source = dataclasses.replace(cfg.weights[0], url=f"{url}/files/{reference['weights']}",
                                 sha256=reference["weights_sha256"])
    monkeypatch.setitem(registry._REGISTRY, "efficientnet_b0", dataclasses.replace(cfg, weights=(source,)))
    model = effnet.create_model("efficientnet_b0", pretrained=True).eval()
    x = torch.from_numpy(np.load(data / "reference" / reference["inputs"]))
    with torch.no_grad():
        assert np.abs(model(x).numpy() - np.load(data / "reference" / reference["logits"])).max() < 1e-4
    assert model.config.preprocess.crop_pct == 0.875
    # A URL given directly as weights= goes through the same cache.
    again = effnet.create_model("efficientnet_b0", weights=f"{url}/files/{reference['weights']}")
    assert torch.equal(again.stem.conv.weight, model.stem.conv.weight)
