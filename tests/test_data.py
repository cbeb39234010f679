import json

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.data import ImageDecodeError, eval_transform, load_image, resize_shorter_side
from effnet.registry import PreprocessConfig, get_config


def reference_preprocess(t: dict) -> PreprocessConfig:
    """The PreprocessConfig equivalent to a references.json eval_transform description."""
    if "crop_pct" in t:                                   # timm
        return PreprocessConfig(t["input_size"][-1], t["crop_pct"], t["interpolation"], tuple(t["mean"]), tuple(t["std"]))
    if "resize_size" in t:                                # torchvision
        crop, resize = t["crop_size"][0], t["resize_size"][0]
        interp = t["interpolation"].split(".")[-1].lower()
    else:                                                 # EfficientNet-PyTorch
        crop, resize, interp = t["crop"], t["resize"], t["interpolation"]
    return PreprocessConfig(crop, crop / resize, interp, tuple(t["mean"]), tuple(t["std"]))


def test_eval_transform_reproduces_reference_inputs_exactly(data):
    refs = json.loads((data / "reference" / "references.json").read_text())
    assert len(refs) == 4
    for key, ref in refs.items():
        pre = reference_preprocess(ref["eval_transform"])
        transform = eval_transform(pre)
        x = torch.stack([transform(load_image(data / "imagenet-samples" / "images" / f)) for f in ref["images"]])
        expected = np.load(data / "reference" / ref["inputs"])
        assert x.shape == expected.shape == (8, 3, 224, 224)
        # All three sources resize with Pillow: the same pixels, bit for bit.
        assert np.abs(x.numpy() - expected).max() == 0.0, key


def test_registry_preprocessing_follows_official_crop():
    assert get_config("efficientnet_b0").preprocess.resize_size == 256          # 224 + 32
    assert get_config("tf_efficientnet_b7").preprocess.resize_size == 632       # 600 + 32
    assert get_config("efficientnet_lite0").preprocess.mean == (127 / 255,) * 3


def test_resize_keeps_aspect_like_torchvision():
    img = Image.new("RGB", (500, 375))
    assert resize_shorter_side(img, 256).size == (341, 256)      # int(256 * 500 / 375)
    assert resize_shorter_side(Image.new("RGB", (1, 1)), 256).size == (256, 256)


def test_grayscale_and_palette_images_become_rgb(data):
    gray = next(f for f in sorted((data / "imagenet-samples" / "images").iterdir())
                if Image.open(f).mode == "L")
    img = load_image(gray)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all()
    pal = load_image(next(f for f in sorted((data / "finetune" / "hymenoptera_data" / "train" / "ants").iterdir())
                          if Image.open(f).mode == "P"))
    assert pal.mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6          # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_bad_images_give_clear_errors(tmp_path, data):
    (tmp_path / "notes.jpg").write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    src = (data / "imagenet-samples" / "images" / "n01443537_goldfish.JPEG").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(src[: len(src) // 3])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "tiny.png")
    x = eval_transform(get_config("efficientnet_b0"))(load_image(tmp_path / "tiny.png"))
    assert x.shape == (3, 224, 224)


def test_cmyk_and_alpha_images_become_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (8, 6), (10, 200, 30, 128))
    rgba.save(tmp_path / "alpha.png")
    la = Image.new("LA", (8, 6), (90, 255))
    la.save(tmp_path / "la.png")
    for name in ("cmyk.jpg", "alpha.png", "la.png"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (8, 6)
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((4, 3))
    assert r > 200 and g < 60 and b < 60          # CMYK (0, 255, 255, 0) is red
    # Half-transparent pixels are composited on white, as a viewer shows them:
    # round((c * 128 + 255 * 127) / 255) for c = 10, 200, 30.
    assert load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (132, 227, 142)
