"""Weights: fetching (cache, hash, offline), reading (format from content), converting."""

from .convert import FORMATS, convert_state_dict, detect_format
from .formats import WeightFileError, read_weight_file, unwrap_state_dict
from .hub import DownloadError, HashMismatchError, cache_dir, fetch
from .load import (CONFIG_NAME, WEIGHTS_NAME, WeightMismatchError, adapt_input_conv, load_state_dict,
                   load_weights, resolve_source_path, save_pretrained)

__all__ = [
    "FORMATS", "convert_state_dict", "detect_format", "WeightFileError", "read_weight_file",
    "unwrap_state_dict", "DownloadError", "HashMismatchError", "cache_dir", "fetch", "CONFIG_NAME",
    "WEIGHTS_NAME", "WeightMismatchError", "adapt_input_conv", "load_state_dict", "load_weights",
    "save_pretrained", "resolve_source_path",
]
