"""Weights: fetching (cache, hash, format check, offline), reading (format from content), converting."""

from .convert import FORMATS, convert_state_dict, detect_format
from .formats import WeightFileError, check_weight_file, read_weight_file, unwrap_state_dict
from .hub import (DownloadError, HashMismatchError, NotInstalledError, PackageFile, cache_dir, cache_path, fetch,
                  package_file, package_file_status)
from .load import (CONFIG_NAME, WEIGHTS_NAME, ConfigError, WeightMismatchError, adapt_input_conv, check_finite,
                   load_state_dict, load_weights, read_folder_config, resolve_source_path, save_pretrained)

__all__ = [
    "FORMATS", "convert_state_dict", "detect_format", "WeightFileError", "check_weight_file", "read_weight_file",
    "unwrap_state_dict", "DownloadError", "HashMismatchError", "NotInstalledError", "PackageFile", "package_file",
    "package_file_status", "cache_dir", "cache_path", "fetch", "CONFIG_NAME",
    "WEIGHTS_NAME", "ConfigError", "WeightMismatchError", "adapt_input_conv", "check_finite", "load_state_dict",
    "load_weights", "read_folder_config", "save_pretrained", "resolve_source_path",
]
