"""sslvit: self-supervised Vision Transformers (MAE, BEiT, CPC) on one shared timm-compatible backbone.

The tree is the architecture: ``nn`` (model parts every method shares), ``methods`` (one LightningModule
per method, with what only it uses), ``data``, ``checkpoints`` (safe loading, outside weights, export),
``eval`` (frozen-feature evaluation), ``viz`` (figures) and ``cli`` (the ``sslvit`` command and the tools'
arguments). Lower layers never import higher ones.
"""

from sslvit.nn.backbone import VisionTransformer, ViTConfig

__version__ = "0.1.0"
__all__ = ["ViTConfig", "VisionTransformer", "__version__"]
