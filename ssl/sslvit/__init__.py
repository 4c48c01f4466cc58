"""sslvit: self-supervised Vision Transformers (MAE, BEiT, CPC) on one shared timm-compatible backbone."""

from sslvit.backbone import VisionTransformer, ViTConfig

__version__ = "0.1.0"
__all__ = ["ViTConfig", "VisionTransformer", "__version__"]
