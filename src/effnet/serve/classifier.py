"""A model ready to serve: its engine, eval preprocessing and class names, shared by the
server (:mod:`effnet.serve.server`) and batch inference (:mod:`effnet.serve.batch`)."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from ..data import decode_transformed, eval_transform, model_class_names, to_tensor

__all__ = ["Classifier"]


class Classifier:
    """A model ready to serve: eval preprocessing, an engine, class names.

    Args:
        model: an EfficientNet (any :class:`~effnet.model.ConvNet`) in eval mode; its
            ``config.preprocess`` gives the preprocessing.
        engine: a :data:`effnet.deploy.ENGINES` name (``onnx`` needs onnxruntime).
        name: the model's name in responses (default ``model.config.name``).
        calibration: preprocessed batches for the INT8 engines (:func:`effnet.deploy.calibration_batches`).

    Calling it maps a float32 (N, 3, H, W) batch to (N, classes) float32 probabilities (numpy).

    Raises:
        ValueError: an unknown engine (from :func:`effnet.deploy.build_engine`).
    """

    def __init__(self, model: nn.Module, engine: str = "onnx", name: Optional[str] = None, calibration=None) -> None:
        from ..deploy import build_engine

        self.model = model.eval()
        self.engine = engine
        self.name = name or model.config.name
        self.preprocess_config = model.config.preprocess
        self.transform = eval_transform(model.config)
        self.names = model_class_names(model)
        self._resize_pool = ThreadPoolExecutor(1, thread_name_prefix="effnet-resize")
        # onnxruntime threads sleep between calls: the same cores decode uploads and parse HTTP
        self._run = build_engine(model, engine, self.preprocess_config.input_size, calibration, spinning=False)

    def preprocess(self, data: bytes, filename: str = "<upload>", split: bool = False,
                   max_pixels: Optional[int] = None) -> torch.Tensor:
        """Encoded image bytes -> float32 (3, H, W), the model's eval preprocessing.

        ``split=True`` runs half of the resize on a second thread (the same pixels,
        :func:`effnet.data.resize_center_crop`): for a lone request on an idle server.
        ``max_pixels``: refuse images declaring more pixels (default
        :data:`effnet.data.MAX_IMAGE_PIXELS`).

        Raises:
            ImageDecodeError: the bytes are not a decodable image, or over ``max_pixels``
                (named ``filename``).
        """
        return decode_transformed(data, self.transform, filename, max_pixels, self._resize_pool if split else None)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._run(x).float().softmax(dim=1).numpy()

    def topk(self, probs: np.ndarray, k: int) -> List[dict]:
        """The ``k`` most probable classes of one (classes,) probability row, most probable first."""
        idx = np.argsort(-probs, kind="stable")[:k]
        return [{"class_index": int(i), "label": self.names[i], "probability": float(probs[i])} for i in idx]

    def explain(self, image, k: int) -> dict:
        """Top-``k`` and the class activation map of the top-1 class, for the web page.

        Args:
            image: an RGB Pillow image (decoded upload).

        Returns:
            ``{"topk": [...], "cam_png": "data:image/png;base64,..."}``: the model's center crop
            (input_size x input_size pixels) with the CAM (Zhou et al. 2016, via
            :func:`effnet.analysis.cam`, upsampled and scaled to [0, 1]) blended over it in the
            jet colormap at alpha 0.5. Computed with the eager model.
        """
        from matplotlib import colormaps

        from ..analysis import cam
        from ..data import CROP_FUNCTIONS
        from ..plots import upsample_cam

        pre = self.preprocess_config
        crop = CROP_FUNCTIONS[pre.crop_mode](image, pre.resize_size, pre.input_size, pre.interpolation)
        maps, logits = cam(self.model, to_tensor(crop, pre.mean, pre.std)[None], return_logits=True)
        probs = logits.float().softmax(dim=1)[0].numpy()
        heat = upsample_cam(maps, pre.input_size)[0].numpy()
        colored = colormaps["jet"](heat)[..., :3] * 255.0
        blend = (0.5 * np.asarray(crop, dtype=np.float32) + 0.5 * colored).round().clip(0, 255).astype(np.uint8)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(blend, "RGB").save(buf, format="PNG")
        return {"topk": self.topk(probs, k),
                "cam_png": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}

    def metadata(self) -> dict:
        """Model name, engine, number and names of classes, preprocessing (pixels, mean/std in [0, 1] units)."""
        pre = self.preprocess_config
        return {"model": self.name, "engine": self.engine, "num_classes": len(self.names), "classes": self.names,
                "preprocessing": {"resize_size": pre.resize_size, "input_size": pre.input_size,
                                  "crop_pct": pre.crop_pct, "interpolation": pre.interpolation,
                                  "crop_mode": pre.crop_mode, "mean": list(pre.mean), "std": list(pre.std)}}
