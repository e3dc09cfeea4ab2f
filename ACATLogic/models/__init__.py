"""The neural networks of ACAT: baselines, the ACAT attention classifier and the slice autoencoder.

Importing this package registers every model, so ``create_model(name, **config)`` can build any of
them from the name and config stored next to its weights. Architectures of installed packages join through
the ``acat.models`` entry point group (`ACATLogic.models.registry`).
"""

from . import acat, autoencoder, mtl, resnet  # noqa: F401  (registration happens on import)
from .acat import ACATClassifier
from .autoencoder import SliceAutoencoder
from .baseline import ScanClassifier
from .mtl import BrainMTL, MTLBackbone
from .registry import create_model, list_models, register_model
from .resnet import LungResNet, ResNetBackbone, SliceResNet

__all__ = ["ACATClassifier", "BrainMTL", "LungResNet", "MTLBackbone", "ResNetBackbone", "ScanClassifier",
           "SliceAutoencoder", "SliceResNet", "create_model", "list_models", "register_model"]
