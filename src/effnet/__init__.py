"""effnet: the EfficientNet family (Tan & Le, ICML 2019) from one baseline table and compound scaling."""

from .model import ConvNet, EfficientNet
from .registry import ModelConfig, PreprocessConfig, WeightSource, create_model, from_pretrained, get_config, list_models
from .weights import load_weights
from .scaling import Scaling, compound, round_filters, round_repeats, scale_network, scale_to_budget
from .specs import EFFICIENTNET_B0, EFFICIENTNET_LITE0, MOBILENET_V1, MOBILENET_V2, RESNET50, NetworkSpec, StageSpec

__version__ = "0.1.0"

__all__ = [
    "ConvNet",
    "EfficientNet",
    "ModelConfig",
    "PreprocessConfig",
    "create_model",
    "from_pretrained",
    "load_weights",
    "WeightSource",
    "get_config",
    "list_models",
    "Scaling",
    "compound",
    "round_filters",
    "round_repeats",
    "scale_network",
    "scale_to_budget",
    "EFFICIENTNET_B0",
    "EFFICIENTNET_LITE0",
    "MOBILENET_V1",
    "MOBILENET_V2",
    "RESNET50",
    "NetworkSpec",
    "StageSpec",
]
