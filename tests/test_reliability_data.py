"""Every image input either decodes to the picture a person sees or fails with one clear error.

Each case builds its bad or unusual input in ``tmp_path`` (from a shared photo where the
picture matters) and checks the exact outcome of :func:`effnet.data.load_image`, the
bounded-memory resize, the dataset skip contract, INT8 calibration and CSV labels.
"""

from __future__ import annotations

import struct
import time
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from effnet import data as D
from effnet.data import (MAX_IMAGE_PIXELS, ImageDataset, ImageDecodeError, center_crop, collate_skip, eval_transform,
                         load_image, load_transformed, resize_center_crop, resize_shorter_side)
from effnet.registry import get_config

PHOTO = "n01443537_goldfish.JPEG"          # a 376 x 263 RGB JPEG in $EFFNET_DATA/imagenet-samples/images


def photo(data: Path, name: str = PHOTO) -> Image.Image:
    """A shared ImageNet sample photo decoded to RGB (uint8, (W, H) as stored on disk)."""
    return load_image(data / "imagenet-samples" / "images" / name)


def rgb(img: Image.Image) -> np.ndarray:
    """An image as an int32 array (H, W, C), so differences do not wrap around."""
    return np.asarray(img).astype(np.int32)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a valid-looking 8-bit RGB PNG that declares ``width`` x ``height`` but holds ~nothing.

    Chunks (PNG spec, ISO/IEC 15948): the 8-byte signature, IHDR (width, height as
    big-endian uint32, bit depth 8, colour type 2 = RGB, compression 0, filter 0, interlace
    0), one IDAT with a zlib stream of 16 zero bytes, IEND; each chunk is length, type,
    data, CRC-32 of type + data. The file is ~80 bytes, whatever it declares.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def record_image_sizes(monkeypatch) -> list:
    """Record the pixel count (width * height) of every image Pillow creates from Python.

    Pillow operations (resize, crop, convert, transpose...) return ``Image._new(core)`` and
    ``Image.new`` builds blank images; both are wrapped. Decoding itself allocates the file's
    declared size, which the caller bounds separately. Returns the list the counts go to.
    """
    sizes: list = []
    orig_new, orig_image_new = Image.Image._new, Image.new

    def _new(self, im):
        sizes.append(im.size[0] * im.size[1])
        return orig_new(self, im)

    def new(mode, size, *args, **kwargs):
        sizes.append(size[0] * size[1])
        return orig_image_new(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "_new", _new)
    monkeypatch.setattr(Image, "new", new)
    return sizes


# ---- every mode decodes to the picture a person sees --------------------------------------------

def test_16bit_png_is_rescaled_not_white(tmp_path, data):
    gray = np.asarray(photo(data).convert("L"))
    noise = np.random.default_rng(0).integers(0, 257, gray.shape)          # the extra 8 bits of a real sensor
    Image.fromarray((gray.astype(np.uint32) * 257 + noise).astype(np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = rgb(load_image(tmp_path / "g16.png"))
    assert out.shape == gray.shape + (3,)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0] - gray).max() <= 1              # round(v / 257): the 8-bit value or one above
    assert out.mean() < 200 and (out < 250).mean() > 0.5      # not the all-white picture of a plain convert


def test_16bit_big_endian_and_32bit_modes(tmp_path, data):
    gray = np.asarray(photo(data).convert("L")).astype(np.int64)
    h, w = gray.shape
    Image.frombytes("I;16B", (w, h), (gray * 257).astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.fromarray((gray * 257).astype(np.int32), "I").save(tmp_path / "i16range.tif")
    Image.fromarray((gray << 23).astype(np.int32), "I").save(tmp_path / "i32range.tif")
    Image.fromarray((gray / 255.0).astype(np.float32), "F").save(tmp_path / "f01.tif")
    Image.fromarray(gray.astype(np.float32), "F").save(tmp_path / "f255.tif")
    expected_modes = {"be.tif": "I;16B", "i16range.tif": "I", "i32range.tif": "I", "f01.tif": "F", "f255.tif": "F"}
    for name, mode in expected_modes.items():
        assert Image.open(tmp_path / name).mode == mode
        out = rgb(load_image(tmp_path / name))
        assert out.shape == (h, w, 3)
        # 32-bit: white is 2**31 - 1, so v << 23 maps to v * 255 / 255.99 (at most 1 level off)
        assert np.abs(out[..., 0] - gray).max() <= 1, name


def test_deep_images_without_a_display_range_are_refused(tmp_path):
    Image.fromarray(np.array([[-5, 100]], dtype=np.int32), "I").save(tmp_path / "neg.tif")
    Image.fromarray(np.array([[0.0, 1e6]], dtype=np.float32), "F").save(tmp_path / "big.tif")
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), "F").save(tmp_path / "nan.tif")
    for name, what in (("neg.tif", "negative values"), ("big.tif", "above any standard display range"),
                       ("nan.tif", "NaN")):
        with pytest.raises(ImageDecodeError, match=what) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_1bit_and_grayscale(tmp_path, data):
    bits = np.zeros((6, 8), dtype=bool)
    bits[::2, ::2] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert (rgb(load_image(tmp_path / "b.png"))[..., 1] == np.where(bits, 255, 0)).all()
    gray = photo(data).convert("L")
    gray.save(tmp_path / "l.png")
    out = rgb(load_image(tmp_path / "l.png"))
    assert all((out[..., c] == np.asarray(gray)).all() for c in range(3))


def test_transparency_is_composited_on_white(tmp_path, data):
    pic = photo(data).resize((40, 30))
    rgba = pic.convert("RGBA")
    alpha = np.full((30, 40), 255, np.uint8)
    alpha[:, :20] = 0                                            # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    out = rgb(load_image(tmp_path / "rgba.png"))
    assert (out[:, :20] == 255).all()
    assert (out[:, 20:] == rgb(pic)[:, 20:]).all()               # opaque part untouched

    la = Image.merge("LA", (pic.convert("L"), Image.fromarray(alpha)))
    la.save(tmp_path / "la.png")
    out = rgb(load_image(tmp_path / "la.png"))
    assert (out[:, :20] == 255).all() and (out[:, 20:, 0] == np.asarray(pic.convert("L"))[:, 20:]).all()

    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    for name in ("p.png", "p.gif"):
        pal.save(tmp_path / name, transparency=0)                    # palette index 0 transparent (tRNS)
        out = rgb(load_image(tmp_path / name))
        assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 10, 10], name


def test_cmyk_jpeg_and_exif_rotation(tmp_path, data):
    pic = photo(data)
    pic.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(rgb(load_image(tmp_path / "cmyk.jpg")) - rgb(pic)).mean() < 3

    exif = Image.Exif()
    exif[0x0112] = 6                                             # stored 90 degrees counter-clockwise
    pic.save(tmp_path / "plain.jpg", quality=90)
    pic.save(tmp_path / "rot.jpg", quality=90, exif=exif)
    shown = load_image(tmp_path / "rot.jpg")
    assert shown.size == pic.size[::-1]
    assert (rgb(shown) == rgb(load_image(tmp_path / "plain.jpg").transpose(Image.Transpose.ROTATE_270))).all()


# ---- size caps: refuse from the header, resize in bounded memory --------------------------------

def test_bomb_png_is_refused_from_its_header(tmp_path, monkeypatch):
    decoded = []
    orig_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or orig_load(self))
    png_header_only(tmp_path / "bomb.png", 50000, 50000)             # 2.5 G pixels: Pillow's own limit too
    png_header_only(tmp_path / "big.png", 10000, 10000)              # 100 M: over our cap, under Pillow's error
    for name, what in (("bomb.png", "too large"), ("big.png", "declares 10000x10000 = 100,000,000 pixels")):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")                           # no DecompressionBombWarning either
            with pytest.raises(ImageDecodeError) as e:
                load_image(tmp_path / name)
        assert time.perf_counter() - t0 < 0.5
        msg = str(e.value)
        assert name in msg and what in msg and f"{MAX_IMAGE_PIXELS:,}" in msg and "\n" not in msg
        assert not isinstance(e.value, Image.DecompressionBombError)
    assert decoded == []                                             # no pixel data was decoded
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    with pytest.raises(ImageDecodeError, match="declares 100x100 = 10,000 pixels, more than the cap of 5,000"):
        load_image(tmp_path / "small.png", max_pixels=5000)


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (1, 100000)])
def test_extreme_aspect_ratio_resizes_in_bounded_memory(tmp_path, monkeypatch, size):
    Image.new("RGB", size, (10, 120, 240)).save(tmp_path / "strip.png")
    cfg = get_config("efficientnet_b0")
    t = eval_transform(cfg)
    sizes = record_image_sizes(monkeypatch)
    x = load_transformed(tmp_path / "strip.png", t)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # The old resize-then-crop built 256 x (256 * 20000) = 1.3 G pixels here.
    assert max(sizes) <= 256 * 256
    pre = cfg.preprocess
    want = (torch.tensor([10, 120, 240]) / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(x, want.view(3, 1, 1).expand(3, 224, 224), atol=1e-6)   # a flat colour stays flat


def test_train_decode_is_bounded_too(tmp_path, monkeypatch):
    from effnet.train import train_decode

    Image.new("RGB", (30000, 2), (7, 8, 9)).save(tmp_path / "wide.png")
    decode = train_decode(224)
    sizes = record_image_sizes(monkeypatch)
    ds = ImageDataset([(tmp_path / "wide.png", 0)], decode)
    x, label, _ = ds[0]
    assert x.shape == (3, 256, 256) and x.dtype == torch.uint8 and label == 0
    assert (x[:, 128, 128] == torch.tensor([7, 8, 9], dtype=torch.uint8)).all()
    assert max(sizes) <= 256 * 256


def test_ordinary_photos_keep_the_exact_path_and_the_box_path_is_close(data, monkeypatch):
    names = sorted(p.name for p in (data / "imagenet-samples" / "images").iterdir())[:6]
    for name in names:
        img = photo(data, name)
        exact = center_crop(resize_shorter_side(img, 256, "bicubic"), 224)
        assert (rgb(resize_center_crop(img, 256, 224)) == rgb(exact)).all(), name
        monkeypatch.setattr(D, "MAX_RESIZE_PIXELS", 0)                # force the source-box path
        boxed = rgb(resize_center_crop(img, 256, 224))
        monkeypatch.undo()
        d = np.abs(boxed - rgb(exact))
        assert d.mean() < 1.0 and d.max() <= 32, name               # same geometry, other pass order


def test_split_pass_resize_is_bit_identical_on_every_shared_photo(data):
    """The two resampling passes run apart (rows the crop reads, columns it keeps), alone or
    split over a second thread, give Pillow's resize-then-crop pixels on all 304 photos."""
    from concurrent.futures import ThreadPoolExecutor

    files = sorted((data / "imagenet-samples" / "images").iterdir())
    assert len(files) == 304
    with ThreadPoolExecutor(1) as pool:
        for i, path in enumerate(files):
            img = load_image(path)
            exact = rgb(center_crop(resize_shorter_side(img, 256, "bicubic"), 224))
            assert (rgb(resize_center_crop(img, 256, 224)) == exact).all(), path.name
            assert (rgb(resize_center_crop(img, 256, 224, executor=pool)) == exact).all(), path.name
            if i < 20 and img.mode == Image.open(path).mode:     # lazily opened: decoded once, not by both threads
                assert (rgb(resize_center_crop(Image.open(path), 256, 224, executor=pool)) == exact).all(), path.name


@pytest.mark.parametrize("interpolation", sorted(D._FILTER_SUPPORT))
def test_split_pass_resize_matches_pillow_for_every_filter_size_and_mode(interpolation):
    """Noise (every edge sharp) through each two-pass filter, L and RGB, down- and upscaling,
    portrait, landscape, a side already at the resize size, odd crops: bit-identical."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    sizes = [(500, 375), (375, 500), (100, 80), (256, 300), (257, 256), (300, 1200), (2000, 301), (231, 229)]
    assert D._pillow_pass_order() in ("pillow13", "horizontal")     # else the split path would not be taken
    if D._pillow_pass_order() == "pillow13":                        # both of Pillow 13's pass orders are covered
        assert not D._horizontal_first(300, 1200, 256, 1024) and D._horizontal_first(500, 375, 341, 256)
    with ThreadPoolExecutor(1) as pool:
        for (w, h) in sizes:
            for mode, channels in (("RGB", 3), ("L", 1)):
                pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
                img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
                for resize, crop in ((256, 224), (241, 239), (256, 256), (3, 2), (1, 1)):
                    exact = rgb(center_crop(resize_shorter_side(img, resize, interpolation), crop))
                    for executor in (None, pool):
                        got = rgb(resize_center_crop(img, resize, crop, interpolation, executor))
                        assert got.shape == exact.shape and (got == exact).all(), (w, h, mode, resize, crop, executor)


def test_to_tensor_is_torchvision_arithmetic_bit_for_bit():
    """The lookup table gives ToTensor + Normalize's float32 bits for every value of every channel."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (61, 67, 3), dtype=np.uint8)
    pixels[0, :, 0] = np.arange(67, dtype=np.uint8)                 # a run of consecutive values
    for name in ("efficientnet_b0", "tf_efficientnet_lite0"):
        pre = get_config(name).preprocess
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)
        want = (x - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)
        got = D.to_tensor(Image.fromarray(pixels), pre.mean, pre.std)
        assert got.dtype == torch.float32 and got.shape == (3, 61, 67) and torch.equal(got, want), name
    with pytest.raises(ValueError, match="convert it to RGB"):
        D.to_tensor(Image.fromarray(pixels[..., 0]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_big_jpeg_is_drafted_only_when_asked(tmp_path, data):
    big = photo(data).resize((2048, 1536), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    assert load_image(tmp_path / "big.jpg").size == (2048, 1536)
    assert load_image(tmp_path / "big.jpg", min_size=256).size == (1024, 768)   # 1/2: 768 >= 2 * 256; 1/4 is not
    assert load_image(tmp_path / "big.jpg", min_size=1000).size == (2048, 1536)
    t = eval_transform(get_config("efficientnet_b0"))
    full, drafted = t(load_image(tmp_path / "big.jpg")), load_transformed(tmp_path / "big.jpg", t)
    assert (full - drafted).abs().mean() < 0.02                      # ~1 grey level / 255 / std


# ---- bad files: one clear error each, skipped and counted by datasets ---------------------------

def bad_files(tmp_path: Path, data: Path) -> dict:
    """Bad inputs by name -> the phrase their ImageDecodeError must contain."""
    src = (data / "imagenet-samples" / "images" / PHOTO).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(src[: len(src) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    (tmp_path / "x.jpg").mkdir()
    png_header_only(tmp_path / "bomb.png", 50000, 50000)
    (tmp_path / "doc.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return {"cut.jpg": "truncated", "empty.jpg": "empty (0 bytes)", "notes.jpg": "not an image in a format",
            "doc.png": "not an image in a format",                 # EPS is refused, Ghostscript never runs
            "x.jpg": "directory", "bomb.png": "too large"}


def test_bad_files_raise_one_line_errors(tmp_path, data):
    for name, what in bad_files(tmp_path, data).items():
        with pytest.raises(ImageDecodeError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"cannot decode image {tmp_path / name}: ") and what in msg, msg
        assert "\n" not in msg and msg.count(";") >= 1               # what is wrong; how to fix
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


def test_dataset_skips_and_counts_bad_images(tmp_path, data):
    root = tmp_path / "ds"
    (root / "ok").mkdir(parents=True)
    bad = bad_files(root / "ok", data)
    good = sorted((data / "imagenet-samples" / "images").iterdir())[:2]
    for f in good:
        (root / "ok" / f.name).write_bytes(f.read_bytes())
    ds = ImageDataset.from_folder(root, eval_transform(get_config("efficientnet_b0")))
    assert len(ds) == len(bad) + 2                                   # the x.jpg folder is listed, then skipped
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=collate_skip)
    x, y, skipped = next(iter(loader))
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 0]
    assert len(skipped) == len(bad)                                   # one reason per file, naming it
    for name in bad:
        assert sum(f"{root / 'ok' / name}" in reason for reason in skipped) == 1
    assert all(reason.startswith(("cannot decode image", "image file not found")) for reason in skipped)


def calib_model():
    """A stand-in for a model: calibration_batches reads only ``model.config.preprocess``."""
    return types.SimpleNamespace(config=get_config("efficientnet_b0"))


def test_calibration_skips_bad_files_with_a_warning(tmp_path, data):
    from effnet.deploy import calibration_batches

    (tmp_path / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for f in sorted((data / "imagenet-samples" / "images").iterdir())[:3]:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.warns(UserWarning, match="skipped 1 unreadable calibration image.*a_broken.jpg"):
        batches = calibration_batches(calib_model(), tmp_path, n=2, batch=16)
    assert [b.shape for b in batches] == [(2, 3, 224, 224)]          # the next file took the bad one's place
    assert batches[0].dtype == np.float32


def test_calibration_without_any_readable_image_errors(tmp_path):
    from effnet.deploy import calibration_batches

    (tmp_path / "a.jpg").write_text("no")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 2 calibration images .* could be decoded"):
        calibration_batches(calib_model(), tmp_path)
    with pytest.raises(ValueError, match="no calibration images"):
        calibration_batches(calib_model(), tmp_path / "nowhere")


# ---- CSV labels --------------------------------------------------------------------------------

def test_csv_labels_must_be_non_negative_integers(tmp_path):
    t = eval_transform(get_config("efficientnet_b0"))
    (tmp_path / "labels.csv").write_text("file,class_index\na.jpg,0\nb.jpg,1\nc.jpg,cat\n")
    with pytest.raises(ValueError, match=r"labels.csv row 4: class_index 'cat' is not an integer"):
        ImageDataset.from_csv(tmp_path / "labels.csv", t)
    (tmp_path / "labels.csv").write_text("file,class_index\na.jpg,-1\n")
    with pytest.raises(ValueError, match=r"labels.csv row 2: class_index -1 is negative"):
        ImageDataset.from_csv(tmp_path / "labels.csv", t)
    (tmp_path / "labels.csv").write_text("file,class_index\na.jpg,\n")
    with pytest.raises(ValueError, match=r"labels.csv row 2: class_index '' is not an integer"):
        ImageDataset.from_csv(tmp_path / "labels.csv", t)
    (tmp_path / "labels.csv").write_text("\ufefffile,class_index\na.jpg,2\nb.jpg, 3\n")
    ds = ImageDataset.from_csv(tmp_path / "labels.csv", t)
    assert [(p.name, y) for p, y in ds.samples] == [("a.jpg", 2), ("b.jpg", 3)]
