"""Shared encoders (one contract for 2D timm and 3D MONAI backbones).

Every module in this package registers its encoders on import; adding a
backbone family is one new file.
"""

from benchmark.core.plugins import import_submodules
from pretrain.encoders.base import ENCODERS, Encoder, FeatureInfo, create_encoder

import_submodules(__name__)

__all__ = ["ENCODERS", "Encoder", "FeatureInfo", "create_encoder"]
